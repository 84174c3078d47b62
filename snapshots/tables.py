"""The store's two Lance tables — the only module that imports Lance.

A store folder is a LanceDB database (`lancedb.connect(path)` opens it): `documents.lance` and
`snapshots.lance`, schemas from schema.py. We write through pylance directly (`write_dataset`,
`merge_insert`, `delete`, `take_blobs`): the fast path measured in docs/snapshots.md, and it
needs no LanceDB client on a GPU box. Lance commits are optimistic; conflicting commits are
retried here with jittered exponential backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import lance
import numpy as np
import pyarrow as pa

from .codec import EncodedRow
from .errors import SchemaMismatchError
from .schema import DATA_STORAGE_VERSION, DOCUMENTS, DOCUMENTS_SCHEMA, SCHEMAS, SNAPSHOTS, SNAPSHOTS_SCHEMA

T = TypeVar("T")

ROWS_PER_GROUP = 16  # snapshot rows per Lance row group (blob bytes live out of line)


def sql_str(value: str) -> str:
    """A SQL string literal for Lance filters (DataFusion SQL)."""
    return "'" + value.replace("'", "''") + "'"


def _is_conflict(e: BaseException) -> bool:
    text = str(e).lower()
    return "conflict" in text or "retryable" in text


class SnapshotView:
    """The snapshots table at one version, so row metadata and the blobs read agree."""

    def __init__(self, ds: lance.LanceDataset):
        self._ds = ds

    def rows(self, where: str, columns: list[str]) -> list[dict]:
        """Rows matching `where` (with their `_rowid`), `columns` only."""
        return self._ds.to_table(columns=columns, filter=where, with_row_id=True).to_pylist()

    def blobs(self, row_ids: list[int]) -> list[tuple[Callable[[], int], Callable[[bytearray], int]]]:
        """Per row id: (stored size of its `data`, read it into a bytearray -> bytes read)."""
        blobs = self._ds.take_blobs("data", ids=row_ids, buffer_size=0)  # no read-ahead: whole rows
        return [(blob.size, partial(_read_into, blob)) for blob in blobs]


def _read_into(blob, buf: bytearray) -> int:
    blob.seek(0)
    return blob.readinto(buf)  # a bytearray takes Lance's copy-free path


class Tables:
    """Create/open the two tables of a store folder and run every read and commit on them."""

    def __init__(self, path: Path, *, commit_retries: int = 10):
        self.path = path
        self.commit_retries = commit_retries
        self.uri = {name: str(path / f"{name}.lance") for name in SCHEMAS}
        path.mkdir(parents=True, exist_ok=True)
        for name in SCHEMAS:
            self._ensure(name)

    def _ensure(self, name: str) -> None:
        schema = SCHEMAS[name]
        try:
            ds = lance.dataset(self.uri[name])
        except ValueError:  # not there yet
            try:
                ds = lance.write_dataset(
                    schema.empty_table(),
                    self.uri[name],
                    schema,
                    mode="create",
                    data_storage_version=DATA_STORAGE_VERSION,
                )
            except OSError as e:  # another process created it first
                if "exists" not in str(e):
                    raise
                ds = lance.dataset(self.uri[name])
        if not ds.schema.equals(schema, check_metadata=True):
            raise SchemaMismatchError(
                f"table {name!r} in {self.path} has schema {ds.schema.metadata} / {ds.schema.names}, this code"
                f" writes {schema.metadata} / {schema.names}: open it with the snapshots version that wrote it"
            )

    def open(self, name: str) -> lance.LanceDataset:
        """The latest version of table `name`."""
        return lance.dataset(self.uri[name])

    def retry(self, fn: Callable[[], T]) -> T:
        """Run a Lance commit, retrying optimistic-concurrency conflicts with jittered backoff."""
        delay = 0.02
        for attempt in range(self.commit_retries + 1):
            try:
                return fn()
            except (OSError, RuntimeError) as e:
                if not _is_conflict(e) or attempt == self.commit_retries:
                    raise
            time.sleep(delay * (1 + random.random()))
            delay = min(2 * delay, 1.0)
        raise AssertionError("unreachable")

    # ---- documents -----------------------------------------------------------------------------
    def doc_rows(self, where: str | None = None, columns: list[str] | None = None) -> list[dict]:
        """Rows of `documents` matching `where` (all if None)."""
        return self.open(DOCUMENTS).to_table(columns=columns, filter=where).to_pylist()

    def commit_doc(self, row: dict, expect: str | None) -> bool:
        """One commit: insert `row` if its doc_id is new (expect=None), or replace the row of
        generation `expect`. False if that precondition did not hold (nothing changed)."""
        table = pa.Table.from_pylist([row], schema=DOCUMENTS_SCHEMA)

        def commit() -> dict:
            builder = self.open(DOCUMENTS).merge_insert("doc_id")
            if expect is None:
                builder = builder.when_not_matched_insert_all()
            else:
                builder = builder.when_matched_update_all(condition=f"target.generation = {sql_str(expect)}")
            return builder.execute(table)

        stats = self.retry(commit)
        return (stats["num_inserted_rows"] if expect is None else stats["num_updated_rows"]) == 1

    def delete_docs(self, where: str) -> None:
        self.retry(lambda: self.open(DOCUMENTS).delete(where))

    # ---- snapshots -----------------------------------------------------------------------------
    def write_rows(
        self, doc_id: str, generation: str, created: datetime, rows: Callable[[], Iterable[EncodedRow]]
    ) -> tuple[int, int]:
        """Append encoded rows (one commit, streamed). `rows` is called again if the commit is retried.

        Returns (rows, payload bytes)."""
        totals = [0, 0]
        failed: list[BaseException] = []  # an error of `rows()` reaches us wrapped by Lance

        def batches() -> Iterator[pa.RecordBatch]:
            totals[:] = [0, 0]
            try:
                for i, row in enumerate(rows()):
                    totals[0] += 1
                    totals[1] += row.nbytes
                    yield _row_batch(doc_id, generation, i, row, created)
            except BaseException as e:
                failed.append(e)
                raise

        def write() -> None:
            failed.clear()
            reader = pa.RecordBatchReader.from_batches(SNAPSHOTS_SCHEMA, batches())
            try:
                lance.write_dataset(
                    reader, self.uri[SNAPSHOTS], SNAPSHOTS_SCHEMA, mode="append", max_rows_per_group=ROWS_PER_GROUP,
                    data_storage_version=DATA_STORAGE_VERSION,
                )  # fmt: skip
            except Exception:
                if failed:
                    raise failed[0] from None  # the caller's error, not Lance's wrapper
                raise

        self.retry(write)
        return totals[0], totals[1]

    def delete_rows(self, where: str) -> None:
        self.retry(lambda: self.open(SNAPSHOTS).delete(where))

    def snapshot_view(self) -> SnapshotView:
        return SnapshotView(self.open(SNAPSHOTS))

    def row_keys(self) -> list[tuple[str, str, int, datetime]]:
        """(doc_id, generation, entry_from, created_at) of every snapshot row (metadata only)."""
        t = self.open(SNAPSHOTS).to_table(columns=["doc_id", "generation", "entry_from", "created_at"])
        return list(zip(*(t.column(k).to_pylist() for k in t.column_names), strict=True))

    def count_rows(self) -> int:
        return self.open(SNAPSHOTS).count_rows()

    # ---- maintenance ---------------------------------------------------------------------------
    def compact_and_clean(self, keep_versions_s: float) -> tuple[dict[str, dict], dict[str, dict]]:
        """Compact both tables (drops deleted rows), then remove versions older than `keep_versions_s`."""
        compaction, cleanup = {}, {}
        for name in SCHEMAS:
            m = self.retry(lambda name=name: self.open(name).optimize.compact_files())
            compaction[name] = {
                k: getattr(m, k) for k in ("fragments_removed", "fragments_added", "files_removed", "files_added")
            }
            s = self.open(name).cleanup_old_versions(older_than=timedelta(seconds=keep_versions_s))
            cleanup[name] = {"old_versions": s.old_versions, "bytes_removed": s.bytes_removed}
        return compaction, cleanup

    def versions(self) -> dict[str, int]:
        return {name: len(self.open(name).versions()) for name in SCHEMAS}

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def _row_batch(doc_id: str, generation: str, index: int, row: EncodedRow, created: datetime) -> pa.RecordBatch:
    """One snapshot row as a record batch; `data` wraps the host bytes without a copy."""
    s = row.slab
    offsets = pa.py_buffer(np.array([0, row.data.nbytes], np.int64))
    data = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(row.data)])
    values = {
        "doc_id": doc_id,
        "generation": generation,
        "row": index,
        "tensor": s.tensor,
        "layer_from": s.layer_from,
        "layer_to": s.layer_to,
        "entry_from": s.entry_from,
        "entry_to": s.entry_to,
        "dtype": row.dtype,
        "shape": list(row.shape),
        "scale": row.scale,
        "nbytes": row.data.nbytes,
        "crc32": row.crc32,
        "created_at": created,
    }
    arrays = [data if f.name == "data" else pa.array([values[f.name]], f.type) for f in SNAPSHOTS_SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=SNAPSHOTS_SCHEMA)
