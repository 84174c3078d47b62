"""Read and check a corpus in the driver, before Ray starts: a folder of text files, JSONL, or Parquet.

    folder   every .txt / .md / .markdown / .rst file below it (nested folders too), one document
             each; doc_id = its path relative to the folder without the extension (`ids="path"`
             keeps the extension; two files that would share an id both keep theirs), title = its
             first "# " heading (else the file name), source_uri = file:// URI.
    JSONL    one JSON object per line: {"id" (or "doc_id"), "text", "title"?, "metadata"?
             (an object), "source_uri"?, "embedding"? (list of floats, for vector search)}.
    Parquet  a file or a folder of .parquet files with the same columns.

Nothing bad stops the rest: every entry that cannot become a document — a line that is not JSON,
a record without a string id or text, an empty, path-like, overlong or repeated id, a file that is
not UTF-8, binary, unreadable, a symlink (not followed unless asked; a file reached twice is read
once), a file that is not text — is a `Skip` naming the file, line and reason; the other entries
are read. Documents whose text is empty or only whitespace are kept apart as `empty` (named, not
condensed). `Scan.documents` are DOCUMENTS rows (beacon_actors.columns) with their text.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from beacon_actors.columns import DOCUMENTS, table
from snapshots.records import text_digest

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
FORMATS = ("auto", "files", "jsonl", "parquet")
ID_STYLES = ("stem", "path")  # folder ids: relative path without / with the file's extension
MAX_ID_CHARS = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Skip:
    """One corpus entry that is not ingested: where it is (file, line or row), its id if known, and why."""

    where: str
    reason: str
    doc_id: str | None = None

    def to_dict(self) -> dict:
        return {"where": self.where, "doc_id": self.doc_id, "reason": self.reason}


@dataclass
class Scan:
    """What reading a corpus found: documents to ingest, empty ones, and skipped entries."""

    source: str
    format: str
    documents: list[dict] = field(default_factory=list)  # DOCUMENTS rows, text included
    empty: list[dict] = field(default_factory=list)  # documents with no text besides whitespace
    skipped: list[Skip] = field(default_factory=list)
    n_items: int = 0  # entries looked at: files, non-blank lines, rows

    def documents_table(self) -> pa.Table:
        return table(self.documents, DOCUMENTS)


@dataclass
class Corpus:
    """A corpus ready to stream: the dataset of DOCUMENTS rows and how many documents it holds."""

    dataset: object  # ray.data.Dataset
    n_documents: int
    format: str
    source: str
    scan: Scan | None = None


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
    if not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(f"corpus folder {str(path)!r} cannot be read (permissions)")
    files = [p for p, _ in _walk(path, follow_symlinks=False)]
    if any(p.suffix in TEXT_SUFFIXES for p in files):
        return "files"
    if any(p.suffix == ".parquet" for p in files):
        return "parquet"
    if any(p.suffix in JSONL_SUFFIXES for p in files):
        return "jsonl"
    raise ValueError(f"corpus folder {str(path)!r} holds no {'/'.join(TEXT_SUFFIXES)}, .jsonl or .parquet files")


def list_text_files(root: Path) -> list[Path]:
    """Text files below `root` (a file: itself), sorted; hidden files and folders and symlinks are left out."""
    if root.is_file():
        return [root]
    return [p for p, kind in _walk(root, follow_symlinks=False) if kind == "file" and p.suffix in TEXT_SUFFIXES]


def scan_corpus(
    source: str | os.PathLike, *, format: str = "auto", ids: str = "stem", follow_symlinks: bool = False
) -> Scan:
    """Read and check every entry of the corpus at `source` (no Ray). Raises ValueError only when
    the corpus as a whole cannot be read (missing path, unknown format); bad entries become Skips."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {FORMATS}")
    if ids not in ID_STYLES:
        raise ValueError(f"ids={ids!r}: choose one of {ID_STYLES}")
    path = Path(source).expanduser().absolute()
    kind = detect_format(path) if format == "auto" else format
    scan = Scan(str(path), kind)
    if kind == "files":
        _scan_files(scan, path, ids=ids, follow_symlinks=follow_symlinks)
    elif kind == "jsonl":
        files = [path] if path.is_file() else _files_of(path, JSONL_SUFFIXES, scan, follow_symlinks)
        for f in files:
            _scan_jsonl(scan, f)
    elif kind == "parquet":
        files = [path] if path.is_file() else _files_of(path, (".parquet",), scan, follow_symlinks)
        for f in files:
            _scan_parquet(scan, f)
    _drop_duplicates(scan)
    return scan


def read_corpus(
    source: str | os.PathLike, *, format: str = "auto", rows_per_block: int = 8, ids: str = "stem",
    follow_symlinks: bool = False,
) -> Corpus:  # fmt: skip
    """The readable documents of the corpus at `source` as a Ray Dataset of DOCUMENTS rows (`scan` says what
    was skipped). `rows_per_block` sets how finely they are spread over blocks (one block per actor call)."""
    scan = scan_corpus(source, format=format, ids=ids, follow_symlinks=follow_symlinks)
    return Corpus(to_dataset(scan.documents, rows_per_block), len(scan.documents), scan.format, scan.source, scan)


def to_dataset(rows: list[dict], rows_per_block: int):
    """DOCUMENTS rows as a Ray Dataset of blocks of about `rows_per_block` rows (at most 1000 blocks)."""
    import ray.data

    n_blocks = max(1, min(1000, math.ceil(len(rows) / max(1, rows_per_block))))
    per = max(1, math.ceil(len(rows) / n_blocks))
    blocks = [table(rows[i : i + per], DOCUMENTS) for i in range(0, len(rows), per)] or [table([], DOCUMENTS)]
    return ray.data.from_arrow(blocks)


# ---- folders of text files -------------------------------------------------------------------------
def _scan_files(scan: Scan, path: Path, *, ids: str, follow_symlinks: bool) -> None:
    if path.is_file():
        entries, root = [(path, "file")], path.parent
    else:
        entries, root = _walk(path, follow_symlinks=follow_symlinks), path
    files = []
    for p, kind in entries:
        scan.n_items += 1
        where = str(p)
        if kind == "symlink":
            scan.skipped.append(Skip(where, "a symlink: not followed (--follow-symlinks reads it)"))
        elif kind == "repeat":
            scan.skipped.append(Skip(where, "the same file as one read already (a symlink to it): read once"))
        elif kind == "special":
            scan.skipped.append(Skip(where, "not a regular file"))
        elif p.suffix not in TEXT_SUFFIXES:
            scan.skipped.append(
                Skip(where, f"not a text file ({p.suffix or 'no suffix'}; read: {'/'.join(TEXT_SUFFIXES)})")
            )
        else:
            files.append(p)
    for p, doc_id in zip(files, _file_ids(files, root, ids), strict=True):
        where = str(p)
        try:
            data = p.read_bytes()
        except OSError as err:
            scan.skipped.append(Skip(where, f"cannot be read ({err.strerror or err}): check its permissions", doc_id))
            continue
        nul = data.find(b"\x00")
        if nul >= 0:
            scan.skipped.append(Skip(where, f"binary (a NUL byte at offset {nul}), not text", doc_id))
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            scan.skipped.append(
                Skip(where, f"not UTF-8 (byte {err.start}): convert it, e.g. iconv -f latin1 -t utf-8", doc_id)
            )
            continue
        text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark is not part of the text
        _keep(scan, {"doc_id": doc_id, "source_uri": p.as_uri(), "title": _title(text, p), "text": text}, where)


def _walk(root: Path, *, follow_symlinks: bool) -> list[tuple[Path, str]]:
    """(path, kind) of every non-hidden entry below `root`, sorted: kind is 'file', 'symlink' (not
    followed), 'repeat' (a followed link to a file or folder seen already) or 'special'."""
    out: list[tuple[Path, str]] = []
    seen: set[str] = set()

    def visit(folder: Path) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            names = sorted(os.listdir(folder))
        except OSError as err:
            out.append((folder, "special"))
            del err
            return
        for name in names:
            if name.startswith("."):
                continue
            p = folder / name
            if p.is_symlink() and not follow_symlinks:
                out.append((p, "symlink"))
            elif p.is_dir():
                if os.path.realpath(p) in seen:
                    out.append((p, "repeat"))
                else:
                    visit(p)
            elif p.is_file():
                real_file = os.path.realpath(p)
                out.append((p, "repeat" if real_file in seen else "file"))
                seen.add(real_file)
            else:
                out.append((p, "special"))

    visit(root)
    return sorted(out, key=lambda e: e[0].as_posix())


def _file_ids(files: list[Path], root: Path, style: str) -> list[str]:
    """Ids of `files`: relative paths, without the extension for style 'stem' unless two files share one."""
    paths = [p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name for p in files]
    if style == "path":
        return paths
    stems = [p[: -len(Path(p).suffix)] if Path(p).suffix else p for p in paths]
    count: dict[str, int] = {}
    for s in stems:
        count[s] = count.get(s, 0) + 1
    taken = set(paths)
    return [s if count[s] == 1 and (s == p or s not in taken) else p for s, p in zip(stems, paths, strict=True)]


def _files_of(folder: Path, suffixes: tuple[str, ...], scan: Scan, follow_symlinks: bool) -> list[Path]:
    files = []
    for p, kind in _walk(folder, follow_symlinks=follow_symlinks):
        if kind == "file" and p.suffix in suffixes:
            files.append(p)
        elif kind == "symlink" and p.suffix in suffixes:
            scan.skipped.append(Skip(str(p), "a symlink: not followed (--follow-symlinks reads it)"))
    return files


# ---- JSONL and Parquet records ---------------------------------------------------------------------
def _scan_jsonl(scan: Scan, path: Path) -> None:
    try:
        f = open(path, "rb")
    except OSError as err:
        scan.skipped.append(Skip(str(path), f"cannot be read ({err.strerror or err})"))
        return
    with f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            scan.n_items += 1
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                scan.skipped.append(Skip(where, f"not UTF-8 (byte {err.start} of the line)"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                scan.skipped.append(Skip(where, f"not JSON ({err.msg} at column {err.colno}): {line.strip()[:60]!r}"))
                continue
            _add_record(scan, record, where, source=str(path))


def _scan_parquet(scan: Scan, path: Path) -> None:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as err:
        scan.n_items += 1
        scan.skipped.append(Skip(str(path), f"not a readable Parquet file ({err})"))
        return
    for n, record in enumerate(records):
        scan.n_items += 1
        _add_record(scan, record, f"{path}:row {n}", source=str(path))


def _add_record(scan: Scan, record, where: str, *, source: str) -> None:
    try:
        row = record_to_document(record, source=source)
    except ValueError as err:
        scan.skipped.append(Skip(where, str(err), _raw_id(record)))
        return
    _keep(scan, row, where)


def record_to_document(record: dict, *, source: str) -> dict:
    """One corpus record (id/doc_id, text, title, metadata, source_uri, embedding) as a DOCUMENTS row
    (without its text hash). ValueError says what is wrong with the record."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    doc_id = record.get("id", record.get("doc_id"))
    if doc_id is None:
        raise ValueError("no 'id' (or 'doc_id'): every document needs one")
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        raise ValueError(f"'id' must be a string, got {type(doc_id).__name__}")
    doc_id = str(doc_id)
    problem = id_problem(doc_id)
    if problem:
        raise ValueError(problem)
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {'nothing' if text is None else type(text).__name__}")
    row = {"doc_id": doc_id, "source_uri": record.get("source_uri") or f"{source}#{doc_id}", "text": text}
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
    try:
        row["embedding"] = None if embedding is None else [float(x) for x in embedding]
    except (TypeError, ValueError) as err:
        raise ValueError(f"'embedding' must be a list of numbers ({err})") from err
    return row


def id_problem(doc_id: str) -> str | None:
    """Why `doc_id` is not a usable document id (None if it is): empty, overlong, or path-like."""
    if not doc_id.strip():
        return "an empty id"
    if len(doc_id) > MAX_ID_CHARS:
        return f"an id of {len(doc_id)} characters (at most {MAX_ID_CHARS}): {doc_id[:40]!r}..."
    if _CONTROL.search(doc_id) or doc_id != doc_id.strip():
        return f"id {doc_id!r} holds control characters or leading/trailing spaces"
    parts = doc_id.split("/")
    if (
        doc_id.startswith("/")
        or "\\" in doc_id
        or any(p in ("", ".", "..") for p in parts)
        or re.match(r"^[A-Za-z]:", doc_id)
    ):
        return f"id {doc_id!r} is path-like (absolute, '..', '.', '//' or '\\'): give a plain relative name"
    return None


# ---- helpers ---------------------------------------------------------------------------------------
def _keep(scan: Scan, row: dict, where: str) -> None:
    """Hash a checked row's text and file it as a document, an empty one, or a skip."""
    try:
        row["text_sha256"] = text_digest(row["text"], row["doc_id"])
    except ValueError as err:
        scan.skipped.append(Skip(where, str(err), row["doc_id"]))
        return
    row["_where"] = where
    (scan.documents if row["text"].strip() else scan.empty).append(row)


def _drop_duplicates(scan: Scan) -> None:
    """The first entry of an id is kept; later ones are skipped, naming where the first one is."""
    first: dict[str, str] = {}
    for kind in ("documents", "empty"):
        kept = []
        for row in getattr(scan, kind):
            where = row.pop("_where")
            if row["doc_id"] in first:
                scan.skipped.append(Skip(where, f"duplicate id (first at {first[row['doc_id']]})", row["doc_id"]))
                continue
            first[row["doc_id"]] = where
            kept.append(row)
        setattr(scan, kind, kept)


def _raw_id(record) -> str | None:
    if isinstance(record, dict):
        value = record.get("id", record.get("doc_id"))
        return None if value is None else str(value)[:MAX_ID_CHARS]
    return None


def _title(text: str, path: Path) -> str:
    """The first Markdown heading of a .md file, else the file name without its suffix."""
    if path.suffix in (".md", ".markdown"):
        for line in text.splitlines()[:50]:
            if line.startswith("# "):
                return line[2:].strip()[:200]
    return path.stem
