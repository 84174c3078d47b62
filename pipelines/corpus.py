"""Read a corpus into a Ray Dataset of DOCUMENTS rows: a folder of text files, JSONL, or Parquet.

    folder   every .txt / .md / .markdown / .rst file below it, one document each;
             doc_id = its path relative to the folder, title = its first "# " heading (else the
             file name), source_uri = file:// URI.
    JSONL    one JSON object per line: {"id" (or "doc_id"), "text", "title"?, "metadata"?
             (an object), "source_uri"?, "embedding"? (list of floats, for vector search)}.
    Parquet  a file or a folder of .parquet files with the same columns.

Text must be UTF-8: a file that is not becomes a row with an `error` (reported, not condensed).
The path must be readable by the Ray workers (one node, or storage they share).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from beacon_actors.columns import DOCUMENTS, table
from snapshots.records import text_digest

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
FORMATS = ("auto", "files", "jsonl", "parquet")


@dataclass
class Corpus:
    """A corpus ready to stream: the dataset of DOCUMENTS rows and how many documents it holds."""

    dataset: object  # ray.data.Dataset
    n_documents: int
    format: str
    source: str


def detect_format(source: str | os.PathLike) -> str:
    """'files', 'jsonl' or 'parquet' for a corpus path (ValueError naming the path if none fits)."""
    path = Path(source)
    if path.is_file():
        if path.suffix in JSONL_SUFFIXES:
            return "jsonl"
        if path.suffix == ".parquet":
            return "parquet"
        if path.suffix in TEXT_SUFFIXES:
            return "files"
        raise ValueError(f"corpus file {str(path)!r}: give a .jsonl or .parquet file, or a folder of text files")
    if not path.is_dir():
        raise ValueError(
            f"corpus {str(path)!r} does not exist: give a folder of .txt/.md files, a .jsonl or a .parquet"
        )
    if list_text_files(path):
        return "files"
    if any(path.rglob("*.parquet")):
        return "parquet"
    if any(p for s in JSONL_SUFFIXES for p in path.rglob(f"*{s}")):
        return "jsonl"
    raise ValueError(f"corpus folder {str(path)!r} holds no {'/'.join(TEXT_SUFFIXES)}, .jsonl or .parquet files")


def list_text_files(root: Path) -> list[Path]:
    """Text files below `root` (a file: itself), sorted; hidden files and folders are skipped."""
    if root.is_file():
        return [root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in TEXT_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def read_corpus(source: str | os.PathLike, *, format: str = "auto", rows_per_block: int = 8) -> Corpus:
    """The corpus at `source` as a Ray Dataset of DOCUMENTS rows (lazy; nothing is read yet).

    `rows_per_block` sets how finely the documents are spread over blocks (each block goes to one
    actor call), so a small corpus still keeps a pool of actors busy.
    """
    import ray.data

    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {FORMATS}")
    path = Path(source).expanduser().resolve()
    kind = detect_format(path) if format == "auto" else format
    if kind == "files":
        files = list_text_files(path)
        if not files:
            raise ValueError(f"no {'/'.join(TEXT_SUFFIXES)} files under {str(path)!r}")
        root = path if path.is_dir() else path.parent
        ds = ray.data.read_binary_files(
            [str(f) for f in files], include_paths=True, override_num_blocks=_blocks(len(files), rows_per_block)
        )
        ds = ds.map_batches(files_to_documents, fn_kwargs={"root": str(root)}, batch_format="pyarrow")
        return Corpus(ds, len(files), kind, str(path))
    if kind == "jsonl":
        files = [path] if path.is_file() else sorted(p for s in JSONL_SUFFIXES for p in path.rglob(f"*{s}"))
        n = sum(_count_lines(f) for f in files)
        ds = ray.data.read_text([str(f) for f in files], override_num_blocks=_blocks(n, rows_per_block))
        ds = ds.map_batches(jsonl_to_documents, fn_kwargs={"source": str(path)}, batch_format="pyarrow")
        return Corpus(ds, n, kind, str(path))
    if kind == "parquet":
        import pyarrow.parquet as pq

        files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
        n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        ds = ray.data.read_parquet([str(f) for f in files], override_num_blocks=_blocks(n, rows_per_block))
        ds = ds.map_batches(records_to_documents, fn_kwargs={"source": str(path)}, batch_format="pyarrow")
        return Corpus(ds, n, kind, str(path))
    raise ValueError(f"format={kind!r}: choose one of {FORMATS}")


# ---- Ray Data task functions (batch_format="pyarrow") ----------------------------------------------
def files_to_documents(batch: pa.Table, *, root: str) -> pa.Table:
    """Columns (bytes, path) of read_binary_files -> DOCUMENTS rows."""
    rows = []
    for data, path in zip(batch.column("bytes").to_pylist(), batch.column("path").to_pylist(), strict=True):
        p = Path(path)
        doc_id = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
        row = {"doc_id": doc_id, "source_uri": p.as_uri()}
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            rows.append(
                row | {"title": p.stem, "error": f"{path} is not UTF-8 (byte {err.start}): convert it to UTF-8"}
            )
            continue
        rows.append(row | {"text": text, "title": _title(text, p), "text_sha256": text_digest(text, doc_id)})
    return table(rows, DOCUMENTS)


def jsonl_to_documents(batch: pa.Table, *, source: str) -> pa.Table:
    """Lines of JSONL files (read_text's `text` column) -> DOCUMENTS rows; blank lines are skipped."""
    rows = []
    for line in batch.column("text").to_pylist():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: a line is not JSON ({err}): {line[:80]!r}") from err
        rows.append(record_to_document(record, source=source))
    return table(rows, DOCUMENTS)


def records_to_documents(batch: pa.Table, *, source: str) -> pa.Table:
    """Parquet rows -> DOCUMENTS rows."""
    return table([record_to_document(r, source=source) for r in batch.to_pylist()], DOCUMENTS)


def record_to_document(record: dict, *, source: str) -> dict:
    """One corpus record (id/doc_id, text, title, metadata, source_uri, embedding) as a DOCUMENTS row."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: each record must be a JSON object, got {str(record)[:80]!r}")
    doc_id = record.get("id", record.get("doc_id"))
    if doc_id is None or str(doc_id) == "":
        raise ValueError(
            f"{source}: a record has no 'id' (or 'doc_id'); every document needs one: {str(record)[:80]!r}"
        )
    doc_id = str(doc_id)
    row = {"doc_id": doc_id, "source_uri": record.get("source_uri") or f"{source}#{doc_id}"}
    title = record.get("title")
    row["title"] = None if title is None else str(title)
    metadata = record.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            metadata = {"metadata": metadata}
    if metadata is not None and not isinstance(metadata, dict):
        metadata = {"metadata": metadata}
    row["metadata_json"] = None if metadata is None else json.dumps(metadata, sort_keys=True, default=str)
    embedding = record.get("embedding")
    row["embedding"] = None if embedding is None else [float(x) for x in embedding]
    text = record.get("text")
    if not isinstance(text, str):
        return row | {"error": f"document {doc_id!r}: 'text' must be a string, got {type(text).__name__}"}
    try:
        return row | {"text": text, "text_sha256": text_digest(text, doc_id)}
    except ValueError as err:
        return row | {"error": str(err)}


# ---- helpers ---------------------------------------------------------------------------------------
def _title(text: str, path: Path) -> str:
    """The first Markdown heading of a .md file, else the file name without its suffix."""
    if path.suffix in (".md", ".markdown"):
        for line in text.splitlines()[:50]:
            if line.startswith("# "):
                return line[2:].strip()[:200]
    return path.stem


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _blocks(n_rows: int, rows_per_block: int) -> int:
    return max(1, min(1000, math.ceil(n_rows / max(1, rows_per_block))))
