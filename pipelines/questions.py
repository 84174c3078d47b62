"""Questions in, answers out: read a JSONL/Parquet of questions, pick their documents, write answers.

A question record: {"question": str, "id"/"question_id"?: str, "doc_ids"?: [str] (or "doc_id": str),
"answer"/"expected"?: str or [str] (reference, for accuracy; a list when
the answer joins facts of several documents: every item must appear), "embedding"?: [float] (vector search)}.
A question without doc ids gets the `top_k` best documents of the search table (snapshots.search),
the best one last (it is read closest to the question). Answers: one row per question (ANSWERS
columns), sorted by position in the questions file, written as .jsonl or .parquet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from beacon_actors.columns import ANSWERS, QUESTIONS, table
from snapshots.errors import DocumentNotFoundError
from snapshots.search import SearchIndex

from .catalog import open_store
from .lookup import resolve_ids

ANSWER_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a .jsonl (one JSON object per line) or .parquet file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"questions file {str(p)!r} does not exist: give a .jsonl or .parquet file")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    records = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{p}:{n}: not JSON ({err}); write one JSON object per line") from err
    return records


def to_question(record: dict, index: int, *, source: str = "questions") -> dict:
    """A QUESTIONS row from one record (doc ids as given; `picked_by` 'caller' or pending search)."""
    if not isinstance(record, dict) or not isinstance(record.get("question"), str) or not record["question"].strip():
        raise ValueError(f"{source}: record {index} has no 'question' text: {str(record)[:100]!r}")
    doc_ids = record.get("doc_ids")
    if doc_ids is None and record.get("doc_id") is not None:
        doc_ids = [record["doc_id"]]
    if isinstance(doc_ids, str):
        doc_ids = [doc_ids]
    expected = record.get("expected", record.get("answer"))
    qid = record.get("question_id", record.get("id"))
    return {
        "index": index,
        "question_id": f"q{index}" if qid is None else str(qid),
        "question": record["question"],
        "doc_ids": [str(d) for d in doc_ids] if doc_ids else None,
        "picked_by": "caller" if doc_ids else "search",
        "expected": _expected(expected, source, index),
    }


def _expected(value, source: str, index: int) -> list[str] | None:
    """The reference answer as a list of items that must all appear (one item for a plain answer)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, (list, dict)) or not str(v).strip() for v in items):
        raise ValueError(
            f"{source}: record {index} has an empty or nested 'answer' {value!r}: give a string or a list of strings"
        )
    return [str(v) for v in items]


def pick_documents(question: dict, search: SearchIndex, *, top_k: int, embedding: list[float] | None = None) -> dict:
    """Fill `doc_ids` of a question that has none from the search table (best match last)."""
    if question["doc_ids"] or question.get("error"):
        return question
    hits = search.search(question["question"], k=top_k, embedding=embedding)
    if not hits:
        return question | {
            "error": "no stored document matches this question (is the store ingested, with its search table?);"
            " give doc_ids"
        }
    return question | {"doc_ids": [d for d, _ in reversed(hits)]}


def read_questions(path: str | os.PathLike, db: str, *, top_k: int) -> list[dict]:
    """QUESTIONS rows of the file at `path`, documents picked for those without doc ids."""
    records = read_records(path)
    search = SearchIndex(db)
    stored = None
    rows = []
    for i, record in enumerate(records):
        q = to_question(record, i, source=str(path))
        if q["doc_ids"]:  # as stored: a stem or a name with its extension finds its document
            stored = set(open_store(db).ids()) if stored is None else stored
            try:
                q["doc_ids"] = resolve_ids(q["doc_ids"], stored, where=db)
            except DocumentNotFoundError as err:
                q["error"] = f"DocumentNotFoundError: {err}"
        rows.append(pick_documents(q, search, top_k=top_k, embedding=record.get("embedding")))
    return rows


def questions_table(rows: list[dict]) -> pa.Table:
    return table(rows, QUESTIONS)


def answer_format(path: str | os.PathLike) -> str:
    """'jsonl' or 'parquet' for an answers file name (ValueError otherwise)."""
    p = Path(path)
    kind = ANSWER_FORMATS.get(p.suffix)
    if kind is None:
        raise ValueError(f"answers file {str(p)!r}: name it *.jsonl or *.parquet")
    if p.exists() and p.is_dir():
        raise ValueError(f"answers file {str(p)!r} is a folder: give a file name")
    return kind


def write_answers(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write ANSWERS rows (sorted by `index`) to a .jsonl or .parquet file; returns its path."""
    p = Path(path)
    kind = answer_format(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["index"])
    if kind == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table(rows, ANSWERS), p)
    else:
        with open(p, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({k: r.get(k) for k in ANSWERS.names}, ensure_ascii=False) + "\n")
    return p
