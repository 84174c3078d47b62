"""The store's search table: pick documents for a question by full text or by vector.

`search.lance` sits next to the store's other tables in the store folder (so `lancedb.connect(db)`
lists it too): one row per ingested document with its title, text, text hash and, if the corpus
gave them, an embedding (schema: schema.search_schema). Ingestion upserts it; `beacon snapshots
delete` removes rows; `optimize` compacts it. Full text: Lance INVERTED indexes on `title` and
`text` (rows added since the last index update are searched too, without it). Vectors: the `vector`
column exists only if the first documents written carried embeddings (exact nearest neighbours;
cosine); a question with an `embedding` then uses it. Filters are quoted and commits retried as for
the other tables (tables.sql_str, tables.retry_commit).
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timezone

import lance
import numpy as np
import pyarrow as pa
from lance.query import MultiMatchQuery

from .location import normalize, table_uri
from .schema import SEARCH, SEARCH_TEXT_COLUMNS, search_schema
from .tables import create_empty_table, open_table, retry_commit, sql_str

SEARCH_TABLE = f"{SEARCH}.lance"
TEXT_COLUMNS = SEARCH_TEXT_COLUMNS


class SearchIndex:
    """The search table of the store at `db` (created on the first write)."""

    def __init__(self, db: str | os.PathLike, *, commit_retries: int = 10):
        self.location = normalize(db)  # a folder or an object-store URI
        self.uri = table_uri(self.location, SEARCH_TABLE)
        self.commit_retries = commit_retries

    def _open(self) -> lance.LanceDataset | None:
        return open_table(self.location, self.uri)  # None: not written yet

    @property
    def vector_dim(self) -> int | None:
        """Length of the stored embeddings, or None if the table has none."""
        ds = self._open()
        if ds is None or "vector" not in ds.schema.names:
            return None
        return ds.schema.field("vector").type.list_size

    def known(self) -> dict[str, str | None]:
        """doc_id -> text_sha256 of every document in the table."""
        ds = self._open()
        if ds is None:
            return {}
        t = ds.to_table(columns=["doc_id", "text_sha256"])
        return dict(zip(t.column("doc_id").to_pylist(), t.column("text_sha256").to_pylist(), strict=True))

    def upsert(self, rows: list[dict]) -> None:
        """Insert or replace rows by doc_id (keys: doc_id, title, text, source_uri, text_sha256, embedding)."""
        if not rows:
            return
        latest = {r["doc_id"]: r for r in rows}  # a doc id twice in one batch: the last one wins
        ds = self._open()
        dim = self.vector_dim if ds is not None else _embedding_dim(list(latest.values()))
        now = datetime.now(timezone.utc)
        data = pa.Table.from_pylist(
            [
                {k: r.get(k) for k in ("doc_id", "title", "text", "source_uri", "text_sha256")}
                | {"updated_at": now}
                | ({} if dim is None else {"vector": _vector(r, dim)})
                for r in latest.values()
            ],
            schema=search_schema(dim),
        )
        if ds is None:  # created empty, rows merged below: a creator racing us must not overwrite them
            ds = create_empty_table(self.location, self.uri, data.schema)
            if ds is not None:
                with contextlib.suppress(OSError):  # best effort: a creator racing us may index it first
                    self._index(ds)
        self._retry(
            lambda d: d.merge_insert("doc_id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        )

    def delete(self, doc_ids: list[str]) -> None:
        """Remove the rows of `doc_ids` (those present)."""
        if doc_ids and self._open() is not None:
            where = f"doc_id IN ({', '.join(sql_str(d) for d in doc_ids)})"
            self._retry(lambda d: d.delete(where))

    def refresh(self) -> None:
        """Bring the full-text indexes up to date with rows added since they were built."""
        ds = self._open()
        if ds is not None:
            self._retry(lambda d: d.optimize.optimize_indices())

    def optimize(self) -> None:
        """Compact the table, refresh its indexes and drop old versions."""
        ds = self._open()
        if ds is None:
            return
        self._retry(lambda d: d.optimize.compact_files())
        self.refresh()
        self._open().cleanup_old_versions()

    def search(self, query: str, *, k: int = 1, embedding: list[float] | None = None) -> list[tuple[str, float]]:
        """Best-first (doc_id, score) of at most `k` documents for `query` (or nearest to `embedding`)."""
        ds = self._open()
        if ds is None or k < 1:
            return []
        if embedding is not None and "vector" in ds.schema.names:
            q = np.asarray(embedding, dtype=np.float32)
            if q.shape != (self.vector_dim,):
                raise ValueError(f"the question's embedding has {q.size} values, the stored ones {self.vector_dim}")
            t = ds.to_table(
                columns=["doc_id", "_distance"], nearest={"column": "vector", "q": q, "k": k, "metric": "cosine"}
            )
            return [
                (d, -float(s))
                for d, s in zip(t.column("doc_id").to_pylist(), t.column("_distance").to_pylist(), strict=True)
            ]
        words = " ".join(w for w in _words(query))
        if not words:
            return []
        t = ds.to_table(
            columns=["doc_id", "_score"], full_text_query=MultiMatchQuery(words, list(TEXT_COLUMNS)), limit=k
        )
        pairs = zip(t.column("doc_id").to_pylist(), t.column("_score").to_pylist(), strict=True)
        return sorted(((d, float(s)) for d, s in pairs), key=lambda p: -p[1])[:k]

    def text_of(self, doc_id: str) -> str | None:
        """The ingested text of `doc_id` (None if the table does not hold it)."""
        ds = self._open()
        if ds is None:
            return None
        t = ds.to_table(columns=["text"], filter=f"doc_id = {sql_str(doc_id)}")
        return t.column("text")[0].as_py() if t.num_rows else None

    # ---- internals -----------------------------------------------------------------------------
    def _index(self, ds: lance.LanceDataset) -> None:
        for column in TEXT_COLUMNS:
            ds.create_scalar_index(column, index_type="INVERTED", replace=True)

    def _retry(self, op) -> None:
        """Run `op(dataset)` on the latest version; a conflicting optimistic commit is tried again."""
        retry_commit(lambda: op(lance.dataset(self.uri)), self.commit_retries, (OSError, RuntimeError, ValueError))


def _words(query: str) -> list[str]:
    """Query terms: letters and digits (punctuation would be query syntax to the parser)."""
    out, word = [], []
    for ch in query:
        if ch.isalnum():
            word.append(ch)
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return out


def _embedding_dim(rows: list[dict]) -> int | None:
    dims = {len(r["embedding"]) for r in rows if r.get("embedding") is not None}
    if len(dims) > 1:
        raise ValueError(f"documents carry embeddings of different lengths {sorted(dims)}: give one length")
    return dims.pop() if dims else None


def _vector(row: dict, dim: int) -> list[float] | None:
    e = row.get("embedding")
    if e is None:
        return None
    if len(e) != dim:
        raise ValueError(f"document {row['doc_id']!r}: embedding of {len(e)} values, the table holds {dim}")
    return [float(x) for x in e]
