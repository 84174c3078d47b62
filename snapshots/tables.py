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
from collections.abc import Callable, Iterable, Iterator, Sequence
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
SMALL_FRAGMENT_BYTES = 8 << 20  # upkeep merges fragments smaller than this (a merge rewrites what it merges)
KEEP_VERSIONS_S = 300.0  # upkeep drops a table version once it has not been the latest for this long


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


@dataclass(frozen=True)
class RowsOf:
    """The snapshot rows of one document's write: `rows()` encodes them (again on each call)."""

    doc_id: str
    generation: str
    rows: Callable[[], Iterable[EncodedRow]]


class _DocumentFailed(Exception):
    """A document's rows could not be encoded: write the others without it."""


class Tables:
    """Create/open the two tables of a store (folder or object-store URI) and run every read and commit on them."""

    def __init__(self, location: Path | str, *, commit_retries: int = 10):
        """`location`: a local folder (a Path; created if missing) or an object-store URI (a str)."""
        self.path = location
        self.commit_retries = commit_retries
        self._commits_since_upkeep = 0
        self._latest_seen: dict[str, list[tuple[float, int]]] = {name: [] for name in SCHEMAS}  # (when, version)
        self._dropped_below = dict.fromkeys(SCHEMAS, 1)  # versions below these were dropped by this object
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
                builder = _update_if(builder, f"target.generation = {sql_str(expect)}")
            return builder.execute(table)

        stats = self.retry(commit)
        self._committed()
        return (stats["num_inserted_rows"] if expect is None else stats["num_updated_rows"]) == 1

    def commit_docs(self, rows: list[dict], expect: list[str | None]) -> list[bool]:
        """One commit for the rows of several documents (distinct doc_ids), each an upsert guarded
        by what its writer read: a row is inserted if its doc_id is not stored, and replaces the
        stored row only if that row's generation is `expect[i]` (None: the writer read nothing, so
        a row stored meanwhile is left alone). Returns, per row, whether it was committed."""
        if not rows:
            return []
        table = pa.Table.from_pylist(rows, schema=DOCUMENTS_SCHEMA)
        replaced = [sql_str(g) for g in expect if g is not None]  # generations are unique: no doc_id needed

        def commit() -> tuple[dict, lance.LanceDataset]:
            ds = self.open(DOCUMENTS)
            builder = ds.merge_insert("doc_id").when_not_matched_insert_all()
            if replaced:
                builder = _update_if(builder, f"target.generation IN ({', '.join(replaced)})")
            return builder.execute(table), ds  # ds is now the version this commit made

        stats, ds = self.retry(commit)
        self._committed()
        if stats["num_inserted_rows"] + stats["num_updated_rows"] == len(rows):  # each row changes one row at most
            return [True] * len(rows)
        ids = ", ".join(sql_str(r["doc_id"]) for r in rows)
        there = ds.to_table(columns=["doc_id", "generation"], filter=f"doc_id IN ({ids})").to_pylist()
        committed = {(r["doc_id"], r["generation"]) for r in there}  # as of our commit: later ones do not count
        return [(r["doc_id"], r["generation"]) in committed for r in rows]

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
        """Keep lookups and commits from slowing down as puts add fragments and versions.

        Each put adds a fragment to both tables and a version to each; a filter scans each
        fragment its index does not cover (`python -m bench.store_lookups`, docs/snapshots.md),
        and each commit writes a manifest listing every fragment. So upkeep
          * merges the fragments smaller than SMALL_FRAGMENT_BYTES of both tables (bigger ones
            are left: rewriting costs their size, each time; `SnapshotStore.optimize` compacts
            everything);
          * merges new fragments into both doc_id indexes (created if missing);
          * drops the versions that stopped being the latest more than KEEP_VERSIONS_S ago (a
            reader still holding one that long ago may lose it; files of in-flight writes are
            never touched: Lance keeps unreferenced files for 7 days).
        Best effort: a commit it loses to another writer is left to the next upkeep; nothing is
        lost either way.
        """
        self._commits_since_upkeep = 0
        for name in SCHEMAS:
            try:
                ds = self.open(name)
                self._latest_seen[name].append((time.time(), ds.version))
                if self._compact_small(ds, name):
                    ds = self.open(name)
                if any(i.name == DOC_ID_INDEX for i in ds.describe_indices()):
                    ds.optimize.optimize_indices(index_names=[DOC_ID_INDEX])
                else:  # a store written before the index existed
                    ds.create_scalar_index("doc_id", "BTREE", name=DOC_ID_INDEX)
                self._drop_old_versions(name, ds)
            except (OSError, RuntimeError, ValueError) as e:
                if not _is_conflict(e):
                    raise

    def _compact_small(self, ds: lance.LanceDataset, name: str) -> bool:
        """Merge the table's fragments smaller than SMALL_FRAGMENT_BYTES; True if it did."""
        fragments = ds.get_fragments()
        big = [f.fragment_id for f in fragments if _fragment_bytes(f) >= SMALL_FRAGMENT_BYTES]
        if len(fragments) - len(big) < 2:
            return False
        options = {} if name == DOCUMENTS else {"max_rows_per_group": ROWS_PER_GROUP}
        ds.optimize.compact_files(excluded_fragment_ids=big, **options)
        return True

    def _drop_old_versions(self, name: str, ds: lance.LanceDataset) -> None:
        """Remove the versions of table `name` older than the one that was the latest
        KEEP_VERSIONS_S ago, as this object saw at an earlier upkeep: none a reader may have
        opened within that time. Lance removes the files only they referenced."""
        seen, cutoff = self._latest_seen[name], time.time() - KEEP_VERSIONS_S
        ripe = [version for at, version in seen if at <= cutoff]
        if not ripe:
            return
        del seen[: len(ripe)]
        below, self._dropped_below[name] = self._dropped_below[name], ripe[-1]
        ds.cleanup_old_versions(versions=list(range(below, ripe[-1])))  # those no longer there are skipped

    # ---- snapshots -----------------------------------------------------------------------------
    def write_rows(self, docs: Sequence[RowsOf], created: datetime) -> list[tuple[int, int] | Exception]:
        """Append the encoded rows of several documents in one commit, streamed, one after the other.

        A document whose `rows()` raises is left out: the write starts again without it, so none
        of its rows is committed, and its error is its result. `rows` is called again if the
        commit is retried. Returns per document (rows, payload bytes) or that error; an error of
        the table itself is raised (then nothing was committed).
        """
        results: list[tuple[int, int] | Exception | None] = [None] * len(docs)
        while True:
            todo = [i for i, r in enumerate(results) if r is None]
            if not todo:
                return results  # type: ignore[return-value]
            totals = {i: [0, 0] for i in todo}
            failed: list[tuple[int, BaseException]] = []  # the document whose `rows()` raised, as Lance aborts

            def batches(todo=todo, totals=totals, failed=failed) -> Iterator[pa.RecordBatch]:
                for i in todo:
                    doc = docs[i]
                    totals[i][:] = [0, 0]
                    try:
                        for k, row in enumerate(doc.rows()):
                            totals[i][0] += 1
                            totals[i][1] += row.nbytes
                            yield _row_batch(doc.doc_id, doc.generation, k, row, created)
                    except BaseException as e:
                        failed.append((i, e))
                        raise

            def write(batches=batches, failed=failed) -> None:
                failed.clear()
                reader = pa.RecordBatchReader.from_batches(SNAPSHOTS_SCHEMA, batches())
                try:
                    lance.write_dataset(
                        reader, self.uri[SNAPSHOTS], SNAPSHOTS_SCHEMA, mode="append",
                        max_rows_per_group=ROWS_PER_GROUP, data_storage_version=DATA_STORAGE_VERSION,
                    )  # fmt: skip
                except Exception:
                    if failed and isinstance(failed[0][1], Exception):
                        raise _DocumentFailed from None  # that document's error, not Lance's wrapper
                    if failed:
                        raise failed[0][1] from None  # KeyboardInterrupt and the like
                    raise

            try:
                self.retry(write)
            except _DocumentFailed:
                i, error = failed[0]
                results[i] = error  # type: ignore[assignment]
                continue
            for i in todo:
                results[i] = (totals[i][0], totals[i][1])

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

    def fragments(self) -> dict[str, int]:
        """Fragments of each table's latest version."""
        return {name: len(self.open(name).get_fragments()) for name in SCHEMAS}

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


def _update_if(builder: lance.MergeInsertBuilder, condition: str) -> lance.MergeInsertBuilder:
    """`builder` also replacing the matched rows that meet `condition`, joined against a scan of
    the (small) documents table rather than through the doc_id index: with the index, Lance 14.0.2
    takes its older merge path, which refuses the table's primary key ("Primary key column and all
    its ancestors must not be nullable") once the index covers every fragment, as right after an
    upkeep. Inserts of new ids keep the index (test_replace_and_append_work_right_after_an_upkeep)."""
    return builder.when_matched_update_all(condition=condition).use_index(False)


def _fragment_bytes(fragment: lance.LanceFragment) -> float:
    """Bytes of a fragment's data files (infinite where the manifest does not say: never thought small)."""
    sizes = [f.file_size_bytes for f in fragment.data_files()]
    return float("inf") if any(n is None for n in sizes) else float(sum(sizes))


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
