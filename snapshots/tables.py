"""The store's two Lance tables — with search.py (the search table) the only modules that import Lance.

A store — a folder, or a prefix on an object store (`s3://bucket/prefix`: snapshots/location.py) —
is a LanceDB database (`lancedb.connect(path)` opens it): `documents.lance` and `snapshots.lance`,
schemas from schema.py. We write through pylance directly (`write_dataset`, `merge_insert`,
`delete`, `take_blobs`): the fast path measured in docs/snapshots.md, and it needs no LanceDB
client on a GPU box. Blob bytes of local stores are read straight from the data
files (SnapshotView); both tables keep a doc_id index up to date (Tables.upkeep). Lance commits
are optimistic; conflicting commits are retried here with jittered exponential backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import lance
import numpy as np
import pyarrow as pa
from lance.commit import CommitConflictError

from .codec import EncodedRow
from .errors import SchemaMismatchError
from .location import is_missing, is_uri, table_uri, unavailable
from .schema import DATA_STORAGE_VERSION, DOCUMENTS, DOCUMENTS_SCHEMA, SCHEMAS, SNAPSHOTS, SNAPSHOTS_SCHEMA

T = TypeVar("T")
logger = logging.getLogger(__name__)

ROWS_PER_GROUP = 16  # snapshot rows per Lance row group (blob bytes live out of line)
DOC_ID_INDEX = "doc_id_idx"  # BTREE on doc_id in both tables: a lookup reads O(log n), not every fragment
UPKEEP_EVERY = 32  # commits by one Tables object between upkeeps (new fragments are scanned until then)


def sql_str(value: str) -> str:
    """A SQL string literal for Lance filters (DataFusion SQL)."""
    return "'" + value.replace("'", "''") + "'"


def retry_commit(fn: Callable[[], T], retries: int, errors: tuple[type[Exception], ...] = (OSError, RuntimeError)) -> T:
    """Run a Lance commit, retrying optimistic-concurrency conflicts (an error of `errors` that
    _is_conflict recognises; up to `retries` times) with jittered exponential backoff; any other
    error, or the last conflict, is raised."""
    delay = 0.02
    for attempt in range(retries + 1):
        try:
            return fn()
        except errors as e:
            if not _is_conflict(e) or attempt == retries:
                raise
        time.sleep(delay * (1 + random.random()))
        delay = min(2 * delay, 1.0)
    raise AssertionError("unreachable")


def _is_conflict(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, CommitConflictError) or any(w in text for w in ("conflict", "retryable", "incompatible"))


class SnapshotView:
    """The snapshots table at one version, so row metadata and the blobs read agree.

    Blob bytes are read straight from the data files (`pread`, any buffer, threads in parallel)
    where Lance describes them as (position, size) in a fragment's one local data file — the
    layout of this pinned file format. Lance's own blob reader barely gains from more threads and
    reads only into a bytearray (`python -m bench.blob_readers`, docs/snapshots.md), so it is the
    fallback for any other layout (object storage, several files per fragment).
    What is read is checked against the row's crc32 either way.
    """

    def __init__(self, ds: lance.LanceDataset):
        self._ds = ds
        self._fds: dict[str, int] = {}

    def __enter__(self) -> SnapshotView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the data files opened for direct reads."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def rows(self, where: str, columns: list[str]) -> list[dict]:
        """Rows matching `where`, `columns` only, with `_rowid`, `_rowaddr` and `_blob` (the data's location)."""
        t = self._ds.to_table(columns=[*columns, "data"], filter=where, with_row_id=True, with_row_address=True)
        t = t.rename_columns([("_blob" if n == "data" else n) for n in t.column_names])
        return t.to_pylist()

    def scales(self, where: str) -> Callable[[int], bytes | None]:
        """Start reading the `scale` column of the rows matching `where` in one scan, on a thread of
        its own; returns row id -> that row's scales (waits for the scan). fp8 scales are ~3% of a
        snapshot's bytes but Lance decodes that column far slower than the blobs' direct reads
        (docs/snapshots.md): read beside the data, they stay off the first row's way."""
        done: Future = Future()

        def scan() -> None:
            try:
                t = self._ds.to_table(columns=["scale"], filter=where, with_row_id=True)
                done.set_result(dict(zip(t.column("_rowid").to_pylist(), t.column("scale").to_pylist(), strict=True)))
            except BaseException as e:  # raised to every reader that asks
                done.set_exception(e)

        threading.Thread(target=scan, name="snapshot-scales", daemon=True).start()
        return lambda row_id: done.result().get(row_id)

    def blobs(self, rows: list[dict]) -> list[BlobReader]:
        """A reader of each row's `data` (rows from `rows`), in order."""
        files = self._direct_files(rows)
        if files is None:
            blobs = self._ds.take_blobs("data", ids=[r["_rowid"] for r in rows], buffer_size=0)  # no read-ahead
            return [BlobReader(blob.size, partial(_lance_read_into, blob), any_buffer=False) for blob in blobs]
        readers = []
        for r, path in zip(rows, files, strict=True):
            if path not in self._fds:
                self._fds[path] = os.open(path, os.O_RDONLY)
            fd, at, size = self._fds[path], r["_blob"]["position"], r["_blob"]["size"]
            with contextlib.suppress(OSError):  # a hint: the kernel starts reading every row at once (cold disks)
                os.posix_fadvise(fd, at, size, os.POSIX_FADV_WILLNEED)
            readers.append(BlobReader(partial(int, size), partial(_pread_into, fd, at, size), any_buffer=True))
        return readers

    def _direct_files(self, rows: list[dict]) -> list[str] | None:
        """Per row, the local data file holding its blob; None where that is not this simple layout."""
        if "://" in self._ds.uri or not hasattr(os, "preadv"):
            return None
        by_fragment: dict[int, str | None] = {}
        files = []
        for r in rows:
            blob = r.get("_blob")
            if not isinstance(blob, dict) or set(blob) != {"position", "size"} or r.get("_rowaddr") is None:
                return None
            fragment = r["_rowaddr"] >> 32  # a row address is (fragment id, offset)
            if fragment not in by_fragment:
                data_files = self._ds.get_fragment(fragment).data_files()
                one = len(data_files) == 1 and getattr(data_files[0], "base_id", None) is None
                by_fragment[fragment] = os.path.join(self._ds.uri, "data", data_files[0].path) if one else None
            if by_fragment[fragment] is None:
                return None
            files.append(by_fragment[fragment])
        return files


@dataclass(frozen=True)
class BlobReader:
    """One row's stored bytes: `size()` as stored, `read_into(buffer)` -> bytes read from its start
    (any writable buffer if `any_buffer`, else a bytearray)."""

    size: Callable[[], int]
    read_into: Callable[[bytearray | memoryview], int]
    any_buffer: bool


def _lance_read_into(blob, buf: bytearray) -> int:
    blob.seek(0)
    return blob.readinto(buf)  # a bytearray takes Lance's copy-free path


def _pread_into(fd: int, at: int, size: int, buf: bytearray | memoryview) -> int:
    view = memoryview(buf).cast("B")[:size]
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], at + done)
        if n == 0:  # end of file: a truncated data file
            break
        done += n
    return done


class Tables:
    """Create/open the two tables of a store (folder or object-store URI) and run every read and commit on them."""

    def __init__(self, location: Path | str, *, commit_retries: int = 10):
        """`location`: a local folder (a Path; created if missing) or an object-store URI (a str)."""
        self.path = location
        self.commit_retries = commit_retries
        self._commits_since_upkeep = 0
        self.uri = {name: table_uri(location, f"{name}.lance") for name in SCHEMAS}
        if not is_uri(location):  # an object store has no folders: a table's first commit makes its prefix
            Path(location).mkdir(parents=True, exist_ok=True)
        for name in SCHEMAS:
            self._ensure(name)

    def _ensure(self, name: str) -> None:
        schema = SCHEMAS[name]
        ds = open_table(self.path, self.uri[name])
        if ds is None:  # not there yet
            ds = create_empty_table(self.path, self.uri[name], schema, data_storage_version=DATA_STORAGE_VERSION)
            if ds is None:  # another process created it first
                ds = self.open(name)
            else:  # best effort: a creator racing us can win this commit; upkeep makes the index then
                with contextlib.suppress(OSError):
                    ds.create_scalar_index("doc_id", "BTREE", name=DOC_ID_INDEX)
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
        return retry_commit(fn, self.commit_retries)

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
        self._committed()
        return (stats["num_inserted_rows"] if expect is None else stats["num_updated_rows"]) == 1

    def delete_docs(self, where: str) -> None:
        self.retry(lambda: self.open(DOCUMENTS).delete(where))
        self._committed()

    # ---- upkeep --------------------------------------------------------------------------------
    def _committed(self) -> None:
        """After a commit: upkeep now and then. Its failure never fails the commit that stood."""
        self._commits_since_upkeep += 1
        if self._commits_since_upkeep >= UPKEEP_EVERY:
            try:
                self.upkeep()
            except Exception as e:  # lookups stay correct, only slower; the next upkeep tries again
                logger.warning("store upkeep failed (%s: %s); lookups by doc_id may slow down", type(e).__name__, e)

    def upkeep(self) -> None:
        """Keep a lookup by doc_id from reading every fragment: each put adds a fragment to both
        tables, and a filter scans each fragment its index does not cover (`python -m
        bench.store_lookups`, docs/snapshots.md).

        Merges new fragments into both doc_id indexes (created if missing) and compacts the small
        documents table (the snapshots table keeps its fragments: rewriting blobs costs their
        size; `SnapshotStore.optimize` compacts it). Best effort: a commit it loses to another
        writer is left to the next upkeep; nothing is lost either way.
        """
        self._commits_since_upkeep = 0
        for name in SCHEMAS:
            try:
                ds = self.open(name)
                if name == DOCUMENTS and len(ds.get_fragments()) > 1:
                    ds.optimize.compact_files()
                    ds = self.open(name)
                if any(i.name == DOC_ID_INDEX for i in ds.describe_indices()):
                    ds.optimize.optimize_indices(index_names=[DOC_ID_INDEX])
                else:  # a store written before the index existed
                    ds.create_scalar_index("doc_id", "BTREE", name=DOC_ID_INDEX)
            except (OSError, RuntimeError, ValueError) as e:
                if not _is_conflict(e):
                    raise

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
        """Bytes of the store folder, all versions included; on an object store (no cheap listing
        through Lance) the data files of the tables' current versions."""
        if not is_uri(self.path):
            return sum(f.stat().st_size for f in Path(self.path).rglob("*") if f.is_file())
        files = [f for name in SCHEMAS for frag in self.open(name).get_fragments() for f in frag.data_files()]
        return sum(f.file_size_bytes or 0 for f in files)


def open_table(location: Path | str, uri: str) -> lance.LanceDataset | None:
    """The latest version of the table at `uri` of the store at `location`; None if it is not there
    yet. An object store that cannot be reached raises StoreUnavailableError (one line, naming
    `location`), any other error as Lance raised it."""
    try:
        return lance.dataset(uri)
    except ValueError as e:
        if is_missing(e):
            return None
        _raise_unavailable(location, e)
        raise


def create_empty_table(location: Path | str, uri: str, schema: pa.Schema, **options) -> lance.LanceDataset | None:
    """Create the empty table `uri` of `schema` (`options`: write_dataset's); None if another writer
    created it first. Never overwrites: Lance commits a create that finds its table made meanwhile
    as an overwrite on top of it, wiping what the other writer has put there since (seen on S3, two
    processes creating one new store), so its commit lock admits version 1 only. Under a commit lock
    Lance checks that version 1 is free, then writes it unconditionally: two creators racing there
    both write an empty version 1 of the same schema, which loses nothing."""
    try:
        lance.write_dataset(schema.empty_table(), uri, schema, mode="create", commit_lock=_version_1_only, **options)
    except OSError as e:  # "already exists", or refused by _version_1_only
        if open_table(location, uri) is not None:
            return None
        _raise_unavailable(location, e)
        raise
    return lance.dataset(uri)  # opened afresh: the dataset write_dataset returns keeps the lock for later commits


def _version_1_only(version: int) -> contextlib.AbstractContextManager:
    """Commit lock of a create (see create_empty_table): admits the table's first version only."""
    if version != 1:
        raise RuntimeError(f"the table was created by another writer meanwhile (this would be version {version})")
    return contextlib.nullcontext()


def _raise_unavailable(location: Path | str, err: BaseException) -> None:
    """Raise StoreUnavailableError instead of `err` if it says the object store cannot be reached."""
    explained = unavailable(location, err)
    if explained is not None:
        raise explained from err


def store_exists(location: Path | str) -> bool:
    """True if a store (its documents table) is at `location`; creates nothing. An object store
    that cannot be reached raises StoreUnavailableError."""
    return open_table(location, table_uri(location, f"{DOCUMENTS}.lance")) is not None


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
