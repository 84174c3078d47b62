"""SnapshotStore: put(_many), get, append, list, show, delete, optimize, stats — the protocol over the tables.

Atomicity (put/append): the memory's rows are written first under a fresh *generation* id; the
documents row that points at that generation is committed last, in one Lance commit, as a
compare-and-swap on the generation it replaces (or on the id being new). Readers use only rows of
generations a ready documents row points at, so a crash at any point leaves the old version (or
nothing) readable, never half a document. Rows nobody points at any more are deleted right after
the commit that orphaned them, or by `optimize` once older than its grace period.
`put_many` does the same for several documents in two commits for all of them (rows, then
documents rows); `put` is `put_many` of one.

Upsert: `put` of a stored id replaces it (the old version stays readable until the new one is
committed); `on_exists="error"` refuses instead. `append` rewrites only the open window: rows of
the condensed part O never change when a memory grows, so the new version points at the old
rows for [0, |O|) and at new rows for the rest (`parts` in the documents row).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial

import numpy as np
import torch

from beacon import BeaconLM, Memory
from beacon.memory import EXPORT_VERSION

from .codec import FP8, Slab, dtype_name, encode, plan_slabs, segments_of, to_dtype
from .errors import (
    ConcurrentUpdateError,
    CorruptSnapshotError,
    DocumentExistsError,
    DocumentNotFoundError,
    SnapshotError,
)
from .fingerprints import check_fingerprint, fingerprint_problem
from .loader import RowRead, load_rows, load_rows_in_background
from .location import normalize
from .records import DocumentInfo, Part, Piece, chosen_ratios, full_kv_bytes, text_digest, tokens_digest
from .reports import DocStats, OptimizeReport, StoreStats
from .schema import SNAPSHOT_META_COLUMNS, STORE_DTYPES
from .tables import RowsOf, SnapshotView, Tables, sql_str
from .tables import store_exists as _tables_exist

logger = logging.getLogger(__name__)

_RAW_COLUMNS = ("doc_id", "generation", "parts", "updated_at")  # what replacing or deleting a document reads
DEFAULT_MAX_ROW_BYTES = 8 << 20  # bound on one snapshot row's data (docs/snapshots.md: why 8 MiB)
ON_EXISTS = ("replace", "error")


def store_exists(location: str | os.PathLike) -> bool:
    """True if a snapshot store is at `location` (a folder or an object-store URI); creates nothing.
    An object store that cannot be reached raises StoreUnavailableError naming `location`."""
    return _tables_exist(normalize(location))


@dataclass(frozen=True)
class NewDocument:
    """One document for `SnapshotStore.put_many`: what `put` takes (its docstring says what each is)."""

    doc_id: str
    memory: Memory
    fingerprint: dict
    text: str | bytes | None = None
    token_ids: torch.Tensor | Sequence[int] | None = None
    source_uri: str | None = None
    title: str | None = None
    metadata: dict | None = None
    store_dtype: str | None = None


class SnapshotStore:
    """Beacon memories of documents, condensed once and loaded many times.

    Args:
        path: the store folder, or an object-store URI such as s3://bucket/prefix (created with both
            tables if missing; safe to race). `self.path` is a Path for a folder, the URI string else.
        max_row_bytes: bound on one snapshot row's data; one entry of one layer is the smallest row.
        read_workers: threads reading and checking rows during `get` (default: min(4, CPUs)).
        commit_retries: how often a conflicting Lance commit is retried (exponential backoff).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
        read_workers: int | None = None,
        commit_retries: int = 10,
    ):
        if max_row_bytes < 1:
            raise ValueError(f"max_row_bytes must be >= 1, got {max_row_bytes}")
        if read_workers is not None and read_workers < 1:
            raise ValueError(f"read_workers must be >= 1, got {read_workers}")
        self.max_row_bytes = max_row_bytes
        self.read_workers = read_workers or min(4, os.cpu_count() or 1)
        self.tables = Tables(normalize(path), commit_retries=commit_retries)
        self.path = self.tables.path

    def __repr__(self) -> str:
        return f"SnapshotStore({str(self.path)!r})"

    # ---- put / get / append --------------------------------------------------------------------
    def put(
        self,
        doc_id: str,
        memory: Memory,
        *,
        fingerprint: dict,
        text: str | bytes | None = None,
        token_ids: torch.Tensor | Sequence[int] | None = None,
        source_uri: str | None = None,
        title: str | None = None,
        metadata: dict | None = None,
        store_dtype: str | None = None,
        on_exists: str = "replace",
    ) -> DocumentInfo:
        """Store `memory` (one document, batch 1) as `doc_id`; atomic: all of it or nothing is readable.

        `fingerprint` is `lm.fingerprint()` of the model that condensed it. `text` (str or UTF-8
        bytes) and `token_ids` are only hashed, never stored. `store_dtype` defaults to the memory's
        dtype (lossless); "float8_e4m3fn" stores 1 byte per value plus a float32 scale per vector
        (lossy). A stored `doc_id` is replaced (upsert), or with on_exists="error" refused with
        DocumentExistsError; a put that fails leaves what was stored as it was.
        """
        doc = NewDocument(doc_id, memory, fingerprint, text=text, token_ids=token_ids, source_uri=source_uri,
                          title=title, metadata=metadata, store_dtype=store_dtype)  # fmt: skip
        (result,) = self.put_many([doc], on_exists=on_exists)
        if isinstance(result, Exception):
            raise result
        return result

    def put_many(
        self, documents: Sequence[NewDocument], *, on_exists: str = "replace"
    ) -> list[DocumentInfo | Exception]:
        """Store several documents, each as `put` would (atomic, upsert or `on_exists`), in two
        commits for all of them: their rows in one, then their documents rows in one.

        Returns per document, in order, its DocumentInfo or what refused it — ValueError (bad
        input, a memory that cannot be encoded, an id given twice), DocumentExistsError,
        ConcurrentUpdateError — while the others are stored all the same. An error of the store
        itself is raised; each document is then stored whole or not at all.
        """
        if on_exists not in ON_EXISTS:
            raise ValueError(f"on_exists={on_exists!r}: choose one of {ON_EXISTS}")
        results: list[DocumentInfo | Exception | None] = [None] * len(documents)
        checked: dict[int, tuple[str, Piece]] = {}
        for i, doc in enumerate(documents):
            try:
                checked[i] = _check_put(doc)
            except ValueError as e:
                results[i] = e
        counts = Counter(documents[i].doc_id for i in checked)
        for i in list(checked):
            if counts[documents[i].doc_id] > 1:
                results[i] = ValueError(f"document {documents[i].doc_id!r} is given more than once: put it once")
                del checked[i]
        old = self._read_raws([documents[i].doc_id for i in checked])  # unchecked: damaged records can be replaced
        if on_exists == "error":
            for i in [i for i in checked if documents[i].doc_id in old]:
                results[i] = DocumentExistsError(
                    f"document {documents[i].doc_id!r} is already stored (on_exists='replace' replaces it)"
                )
                del checked[i]
        now = _now()
        generations = {i: uuid.uuid4().hex for i in checked}
        written = self._write_many([(documents[i], generations[i], checked[i][0]) for i in checked], now)
        infos: dict[int, DocumentInfo] = {}
        for i, w in zip(list(checked), written, strict=True):
            if isinstance(w, Exception):
                results[i] = w
                continue
            doc, (store_dtype, piece), memory = documents[i], checked[i], documents[i].memory
            infos[i] = _describe(
                doc.doc_id, generations[i], memory, doc.fingerprint, store_dtype,
                parts=(Part(generations[i], 0, memory.state.size),), pieces=(piece,), n_rows=w[0], stored_bytes=w[1],
                created_at=now, text_sha256=piece.text_sha256, source_uri=doc.source_uri, title=doc.title,
                metadata=doc.metadata,
            )  # fmt: skip
        replaced = self._commit_many(documents, infos, old, on_exists, results)
        dead = [(documents[i].doc_id, [generations[i]]) for i in infos if results[i] is not infos[i]]
        dead += [(documents[i].doc_id, [p["generation"] for p in r["parts"]] + [r["generation"]]) for i, r in replaced]
        self._drop_dead_rows_of(dead)  # refused writes, replaced versions
        return results  # type: ignore[return-value]

    def _commit_many(self, documents, infos: dict[int, DocumentInfo], old: dict[str, dict], on_exists: str,
                     results: list) -> list[tuple[int, dict]]:  # fmt: skip
        """Commit the documents rows of `infos` in one commit (again for those another writer got to
        first); sets `results`. Returns (index, documents row) of each stored version replaced."""
        pending = dict(infos)
        replaced = []
        try:
            for _ in range(self.tables.commit_retries + 1):
                if not pending:
                    break
                order = list(pending)
                expect = [old[documents[i].doc_id]["generation"] if documents[i].doc_id in old else None for i in order]
                landed = self.tables.commit_docs([pending[i].to_row() for i in order], expect)
                for i, ok in zip(order, landed, strict=True):
                    if ok:
                        results[i] = pending.pop(i)
                        if documents[i].doc_id in old:
                            replaced.append((i, old[documents[i].doc_id]))
                if pending:  # another writer committed these ids meanwhile
                    old = self._read_raws([documents[i].doc_id for i in pending])
                    for i in [i for i in pending if documents[i].doc_id in old and on_exists == "error"]:
                        doc_id = documents[i].doc_id
                        results[i] = DocumentExistsError(f"document {doc_id!r} was stored by another writer meanwhile")
                        del pending[i]
            else:
                for i in pending:
                    doc_id = documents[i].doc_id
                    results[i] = ConcurrentUpdateError(f"document {doc_id!r} kept changing under put; put it again")
        except BaseException:  # the store failed: what is not committed is dead
            self._drop_dead_rows_of([(documents[i].doc_id, [infos[i].generation]) for i in pending])
            raise
        return replaced

    def get(
        self,
        doc_ids: str | Sequence[str],
        *,
        fingerprint: dict,
        device: torch.device | str = "cpu",
        background: bool = False,
    ) -> Memory:
        """Rebuild the memory of one document, or of several as one memory, on `device`.

        `fingerprint` (lm.fingerprint() of the asking model) must match each document's, else
        FingerprintMismatchError naming both. Several ids give Memory.concat in the given order:
        earlier documents become outer memory visible to all that follows, the last keeps its
        open window, so reading continues as right after it. Rows are streamed and checked (size,
        crc32, coverage) before use; towards CUDA through pinned buffers with non-blocking copies.

        background=True (one document): return as soon as the rows are planned, with a loader
        thread filling the memory layer by layer (`Memory.pending`); the engine's forward pass
        waits for each layer just before reading it, so a question read right away overlaps the
        load. A damaged row raises CorruptSnapshotError where the memory is first used.
        """
        ids = [doc_ids] if isinstance(doc_ids, str) else list(doc_ids)
        if not ids:
            raise ValueError("get needs at least one doc id")
        if background and len(ids) > 1:
            raise ValueError(f"background=True loads one document; got {len(ids)} (load them, then concat)")
        memories = [self._load(self.show(i), fingerprint, device, background)[0] for i in ids]
        return memories[0] if len(memories) == 1 else Memory.concat(memories)

    def append(
        self,
        doc_id: str,
        token_ids: torch.Tensor | Sequence[int],
        *,
        lm: BeaconLM,
        text: str | bytes | None = None,
        expected_length: int | None = None,
    ) -> Memory:
        """Continue stored `doc_id` with more tokens; returns the extended memory (on lm.device).

        The result equals condensing the whole text at once. Only the open window and the new
        entries are written; the commit is a compare-and-swap, so if the document was replaced or
        deleted meanwhile nothing changes and ConcurrentUpdateError says to append again.
        """
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"document {doc_id!r}: token_ids must be 1-D (one document), got shape {tuple(ids.shape)}")
        if ids.shape[1] == 0:
            raise ValueError(f"document {doc_id!r}: nothing to append (token_ids is empty)")
        piece = Piece(int(ids.shape[1]), text_digest(text, doc_id), tokens_digest(ids))
        memory, info, live = self._load(self.show(doc_id), lm.fingerprint(), lm.device)
        kept_outer = info.state.n_outer  # rows below this stay: no row straddles it
        lm.condense(ids, memory, expected_length=expected_length)
        generation, now = uuid.uuid4().hex, _now()
        segments = segments_of(memory, kept_outer)
        n_rows, nbytes = self._write_rows(doc_id, generation, memory, segments, info.store_dtype, now)
        kept = [r for r in live if r["entry_to"] <= kept_outer]
        parts = [
            dataclasses.replace(p, entry_to=min(p.entry_to, kept_outer))
            for p in info.parts
            if p.entry_from < kept_outer
        ]
        new = _describe(
            doc_id, generation, memory, info.fingerprint, info.store_dtype,
            parts=(*parts, Part(generation, kept_outer, memory.state.size)), pieces=(*info.pieces, piece),
            n_rows=len(kept) + n_rows, stored_bytes=sum(_payload(r) for r in kept) + nbytes,
            created_at=info.created_at, text_sha256=None, source_uri=info.source_uri, title=info.title,
            metadata=info.metadata,
        )  # fmt: skip
        try:
            ok = self.tables.commit_doc(new.to_row(), expect=info.generation)
        except BaseException:
            self._drop_dead_rows(doc_id, [generation])
            raise
        if not ok:
            self._drop_dead_rows(doc_id, [generation])
            raise ConcurrentUpdateError(f"document {doc_id!r} was replaced or deleted while appending; append again")
        for p in info.parts:  # rows of the old open window are dead now
            if p.entry_to > kept_outer:
                self._drop_dead_rows(doc_id, [p.generation], f"entry_from >= {kept_outer}")
        return memory

    # ---- catalogue -----------------------------------------------------------------------------
    def show(self, doc_id: str) -> DocumentInfo:
        """The stored record of `doc_id` (DocumentNotFoundError if none)."""
        _check_doc_id(doc_id)
        info = self._read_doc(doc_id)
        if info is None:
            raise DocumentNotFoundError(f"no document {doc_id!r} in {self.path} (list() shows what is stored)")
        return info

    def show_many(self, doc_ids: Sequence[str]) -> dict[str, DocumentInfo]:
        """doc_id -> stored record, of those of `doc_ids` that are stored and readable, in one read
        (a damaged record is left out: `show` says what is wrong with it)."""
        for doc_id in doc_ids:
            _check_doc_id(doc_id)
        found = {}
        for doc_id, row in self._read_raws(doc_ids, columns=None).items():
            try:
                found[doc_id] = DocumentInfo.from_row(row)
            except SnapshotError:
                continue
        return found

    def list(self) -> list[DocumentInfo]:
        """All stored documents, by doc_id."""
        return self._read_docs()

    def ids(self) -> list[str]:
        """Every stored doc id, sorted (reads only the id column)."""
        return sorted({r["doc_id"] for r in self.tables.doc_rows(columns=["doc_id"])})

    def list_readable(self) -> tuple[list[DocumentInfo], dict[str, str]]:
        """(every stored document whose record parses and passes its checksum, {doc_id: why not} of the others)."""
        infos, damaged = [], {}
        latest = _newest_per_id(self.tables.doc_rows())
        for doc_id in sorted(latest):
            try:
                infos.append(DocumentInfo.from_row(latest[doc_id]))
            except SnapshotError as e:
                damaged[doc_id] = f"{type(e).__name__}: {e}"
        return infos, damaged

    def verify(self, doc_ids: Sequence[str] | None = None, *, read_data: bool = True) -> dict[str, str]:
        """{doc_id: what is wrong} for the damaged documents among `doc_ids` (all if None).

        Checks each documents record (its checksum, its fingerprint's id against the fingerprint's
        fields), the rows' headers and that they tile the memory once, and with `read_data` every
        row's bytes against its crc32 (a whole read of the snapshots). Unknown ids raise
        DocumentNotFoundError.
        """
        infos, damaged = self.list_readable()
        by_id = {i.doc_id: i for i in infos}
        wanted = sorted(set(by_id) | set(damaged)) if doc_ids is None else list(doc_ids)
        out = {}
        for doc_id in wanted:
            if doc_id in damaged:
                out[doc_id] = damaged[doc_id]
                continue
            if doc_id not in by_id:
                raise DocumentNotFoundError(f"no document {doc_id!r} in {self.path} (list() shows what is stored)")
            problem = self._check(by_id[doc_id], read_data)
            if problem:
                out[doc_id] = problem
        return out

    def _check(self, info: DocumentInfo, read_data: bool) -> str | None:
        problem = fingerprint_problem(info.fingerprint)
        if problem:
            return f"CorruptSnapshotError: document {info.doc_id!r}: {problem}"
        try:
            if read_data:
                memory, _ = self._load_once(info, "cpu")
                del memory
            else:
                view = self.tables.snapshot_view()
                try:
                    self._plan_load(view, info)
                finally:
                    view.close()
        except SnapshotError as e:
            return f"{type(e).__name__}: {e}"
        return None

    def delete(self, doc_id: str, *, missing_ok: bool = False) -> bool:
        """Remove `doc_id` and its rows. Returns False if it was not stored and missing_ok, else raises
        DocumentNotFoundError."""
        _check_doc_id(doc_id)
        old = self._read_raw(doc_id)  # unchecked: a damaged record can still be deleted
        if old is None:
            if missing_ok:
                return False
            raise DocumentNotFoundError(f"no document {doc_id!r} in {self.path} to delete")
        self.tables.delete_docs(f"doc_id = {sql_str(doc_id)} AND generation = {sql_str(old['generation'])}")
        self._drop_dead_rows(doc_id, [p["generation"] for p in old["parts"]] + [old["generation"]])
        return True

    def optimize(self, *, grace_s: float = 3600.0, keep_versions_s: float = 3600.0) -> OptimizeReport:
        """Delete dead rows, compact both tables, drop table versions older than `keep_versions_s`.

        Dead rows: of writes no document points at (replaced, deleted, crashed) once older than
        `grace_s` — a younger one may be a put still running — and rows of open windows a later
        append superseded. Readers of an older table version keep working for `keep_versions_s`.
        """
        keys = self.tables.row_keys()  # rows first: a write committed after this is seen below
        docs = self.tables.doc_rows(columns=["doc_id", "generation", "parts", "updated_at"])
        latest = _newest_per_id(docs)
        losers = [r for r in docs if latest[r["doc_id"]] is not r]
        for r in losers:
            self.tables.delete_docs(f"doc_id = {sql_str(r['doc_id'])} AND generation = {sql_str(r['generation'])}")
        live = {(d, p["generation"]): p for d, r in latest.items() for p in r["parts"]}
        cutoff = _now() - timedelta(seconds=grace_s)
        groups: dict[tuple[str, str], list[tuple[int, datetime]]] = {}
        for d, g, e, c in keys:
            groups.setdefault((d, g), []).append((e, c))
        preds, n_rows, n_gens, n_flight = [], 0, 0, 0
        for (d, g), rows in groups.items():
            key = f"doc_id = {sql_str(d)} AND generation = {sql_str(g)}"
            part = live.get((d, g))
            if part is not None:
                a, b = part["entry_from"], part["entry_to"]
                out = [e for e, _ in rows if not a <= e < b]
                if out:
                    preds.append(f"({key} AND (entry_from < {a} OR entry_from >= {b}))")
                    n_rows += len(out)
            elif max(c for _, c in rows) < cutoff:
                preds.append(f"({key})")
                n_rows, n_gens = n_rows + len(rows), n_gens + 1
            else:
                n_flight += 1
        for i in range(0, len(preds), 64):
            self.tables.delete_rows(" OR ".join(preds[i : i + 64]))
        compaction, cleanup = self.tables.compact_and_clean(keep_versions_s)
        return OptimizeReport(n_rows, n_gens, n_flight, len(losers), compaction, cleanup)

    def stats(self) -> StoreStats:
        """Bytes per raw token stored vs. a full KV cache, per document and in total."""
        docs = [
            DocStats(i.doc_id, i.n_tokens, i.n_entries, i.n_rows, i.stored_bytes, i.full_kv_bytes, i.store_dtype)
            for i in self.list()
        ]
        return StoreStats(docs, self.tables.count_rows(), self.tables.disk_bytes(), self.tables.versions())

    # ---- internals -----------------------------------------------------------------------------
    def _read_docs(self, where: str | None = None) -> list[DocumentInfo]:
        latest = _newest_per_id(self.tables.doc_rows(where))
        return [DocumentInfo.from_row(latest[k]) for k in sorted(latest)]

    def _read_raw(self, doc_id: str) -> dict | None:
        """The newest documents row of `doc_id` as stored, without checks (for replacing or deleting it)."""
        return self._read_raws([doc_id]).get(doc_id)

    def _read_raws(self, doc_ids: Sequence[str], columns: Sequence[str] | None = _RAW_COLUMNS) -> dict[str, dict]:
        """doc_id -> its newest documents row as stored (`columns` of it; None: all), of those of
        `doc_ids` that are stored (one read)."""
        if not doc_ids:
            return {}
        where = f"doc_id IN ({', '.join(sql_str(d) for d in doc_ids)})"
        return _newest_per_id(self.tables.doc_rows(where, None if columns is None else list(columns)))

    def _read_doc(self, doc_id: str) -> DocumentInfo | None:
        found = self._read_docs(f"doc_id = {sql_str(doc_id)}")
        return found[0] if found else None

    def _write_rows(
        self,
        doc_id: str,
        generation: str,
        memory: Memory,
        segments: list[tuple[int, int]],
        store_dtype: str,
        now: datetime,
    ) -> tuple[int, int]:
        """Write the rows of `memory`'s `segments` under `generation` (one commit); (rows, payload bytes)."""
        rows = self._rows_of(doc_id, generation, memory, segments, store_dtype)
        if rows is None:
            return 0, 0
        (written,) = self.tables.write_rows([rows], now)
        if isinstance(written, Exception):
            raise written
        return written

    def _write_many(
        self, items: list[tuple[NewDocument, str, str]], now: datetime
    ) -> list[tuple[int, int] | Exception]:
        """Write the whole memory of each (document, generation, store dtype) in one commit for all;
        per document (rows, payload bytes) or the error that left it out (tables.write_rows)."""
        out: list[tuple[int, int] | Exception] = [(0, 0)] * len(items)
        writes: dict[int, RowsOf] = {}
        for i, (doc, generation, store_dtype) in enumerate(items):
            rows = self._rows_of(doc.doc_id, generation, doc.memory, segments_of(doc.memory), store_dtype)
            if rows is not None:
                writes[i] = rows
        if writes:
            for i, written in zip(writes, self.tables.write_rows(list(writes.values()), now), strict=True):
                out[i] = written
        return out

    def _rows_of(
        self, doc_id: str, generation: str, memory: Memory, segments: list[tuple[int, int]], store_dtype: str
    ) -> RowsOf | None:
        """The rows `memory`'s `segments` are cut into (None if none)."""
        b, h, d = memory.batch_size, memory.keys[0].shape[1], memory.keys[0].shape[3]
        entry_bytes = b * h * d * to_dtype(store_dtype).itemsize
        slabs = plan_slabs(memory.n_layers, segments, entry_bytes=entry_bytes, max_row_bytes=self.max_row_bytes)
        if not slabs:
            return None
        encoded = partial(encode, memory, slabs, store_dtype=store_dtype, doc_id=doc_id, generation=generation)
        return RowsOf(doc_id, generation, encoded)

    def _drop_dead_rows(self, doc_id: str, generations: list[str], extra: str | None = None) -> None:
        """Best effort: delete rows nobody points at any more (`optimize` deletes what this misses)."""
        where = f"doc_id = {sql_str(doc_id)} AND generation IN ({', '.join(sql_str(g) for g in generations)})"
        where = f"{where} AND {extra}" if extra else where
        try:
            self.tables.delete_rows(where)
        except Exception as e:  # the commit that made them dead stands; never undo it for garbage
            logger.warning("could not delete dead snapshot rows (%s): %s; optimize() will", where, e)

    def _drop_dead_rows_of(self, dead: list[tuple[str, list[str]]]) -> None:
        """`_drop_dead_rows` of several documents' (doc_id, generations), in one commit per 64 documents."""
        for at in range(0, len(dead), 64):
            preds = [
                f"(doc_id = {sql_str(d)} AND generation IN ({', '.join(sql_str(g) for g in gens)}))"
                for d, gens in dead[at : at + 64]
            ]
            try:
                self.tables.delete_rows(" OR ".join(preds))
            except Exception as e:  # the commit that made them dead stands; never undo it for garbage
                logger.warning("could not delete dead rows of %d documents: %s; optimize() will", len(preds), e)

    def _plan_load(self, view: SnapshotView, info: DocumentInfo) -> list[dict]:
        """Metadata of the live rows of `info` (all but their fp8 scales, read beside the data:
        see `_load_once`), checked to tile its memory exactly once."""
        gens = {p.generation: p for p in info.parts}
        try:
            rows = view.rows(_rows_of(info), [c for c in SNAPSHOT_META_COLUMNS if c != "scale"])
        except (OSError, ValueError, RuntimeError) as e:  # a damaged data file
            raise CorruptSnapshotError(f"document {info.doc_id!r}: its rows cannot be read ({e})") from e
        live = [r for r in rows if gens[r["generation"]].entry_from <= r["entry_from"] < gens[r["generation"]].entry_to]
        cover = {t: np.zeros((info.n_layers, info.n_entries), np.int32) for t in ("keys", "values")}
        for r in live:
            problem = _row_problem(r, info, gens[r["generation"]])
            if problem:
                raise CorruptSnapshotError(
                    f"document {info.doc_id!r}: row {r['row']} of generation {r['generation']} {problem}"
                )
            cover[r["tensor"]][r["layer_from"] : r["layer_to"], r["entry_from"] : r["entry_to"]] += 1
        for t, c in cover.items():
            if (c > 1).any():
                raise CorruptSnapshotError(f"document {info.doc_id!r}: stored rows of {t} overlap; put it again")
            if (c == 0).any():
                layer, entry = (int(x[0]) for x in np.nonzero(c == 0))
                raise _RowsMissing(f"document {info.doc_id!r}: no stored row holds {t} of layer {layer}, entry {entry}")
        return sorted(live, key=lambda r: r["_rowid"])  # file order

    def _load_once(
        self, info: DocumentInfo, device: torch.device | str, background: bool = False
    ) -> tuple[Memory, list[dict]]:
        view = self.tables.snapshot_view()
        try:
            live = self._plan_load(view, info)
            try:
                blobs = view.blobs(live)
            except (OSError, ValueError, RuntimeError) as e:
                raise CorruptSnapshotError(f"document {info.doc_id!r}: its rows cannot be opened ({e})") from e
            scale_of = view.scales(_rows_of(info)) if info.store_dtype == FP8 else None
            reads = [
                RowRead(info.doc_id, r["generation"], r["row"], _slab(r), r["dtype"], tuple(r["shape"]), r["nbytes"],
                        r["crc32"], _scale_nbytes(r), scale_of and partial(scale_of, r["_rowid"]),
                        blob.size, blob.read_into, blob.any_buffer)
                for r, blob in zip(live, blobs, strict=True)
            ]  # fmt: skip
            shape = (info.n_layers, 1, info.n_kv_heads, info.n_entries, info.head_dim)  # (L, b, h, n, d)
            dtype = to_dtype(info.memory_dtype)
            keys = torch.empty(shape, dtype=dtype, device=device)
            values = torch.empty(shape, dtype=dtype, device=device)
            meta = {"version": info.memory_version, "state": info.state.to_dict()}
            memory = Memory.from_export({"keys": keys, "values": values}, meta)  # views of keys/values
            workers, prefetch = self.read_workers, 2 * self.read_workers
            if background:  # layer by layer; the loader thread closes the files when done
                reads.sort(key=lambda r: (r.slab.layer_from, r.slab.entry_from, r.slab.tensor))
                memory.pending = load_rows_in_background(
                    reads, keys, values, workers=workers, prefetch=prefetch, when_done=view.close
                )
                view = None
            else:
                load_rows(reads, keys, values, workers=workers, prefetch=prefetch)
            return memory, live
        finally:
            if view is not None:
                view.close()

    def _load(
        self, info: DocumentInfo, fingerprint: dict, device: torch.device | str, background: bool = False
    ) -> tuple[Memory, DocumentInfo, list[dict]]:
        """Load `info`'s memory; if its rows vanished because it was replaced meanwhile, the new version."""
        for _ in range(3):
            check_fingerprint(info.fingerprint, fingerprint, doc_id=info.doc_id)
            try:
                memory, live = self._load_once(info, device, background)
                return memory, info, live
            except _RowsMissing as e:
                newer = self._read_doc(info.doc_id)
                if newer is None:
                    raise DocumentNotFoundError(f"document {info.doc_id!r} was deleted while loading") from e
                if newer.generation == info.generation:
                    raise CorruptSnapshotError(f"{e}: rows are missing; put the document again") from e
                info = newer
        raise ConcurrentUpdateError(f"document {info.doc_id!r} kept changing while loading; get it again")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class _RowsMissing(CorruptSnapshotError):
    """Rows of a ready generation are not there: corrupt, unless the document was just replaced."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _slab(r: dict) -> Slab:
    return Slab(r["tensor"], r["layer_from"], r["layer_to"], r["entry_from"], r["entry_to"])


def _scale_nbytes(r: dict) -> int:
    """Bytes of a row's fp8 scales (one float32 per vector), from its header."""
    return 4 * int(np.prod(r["shape"][:-1])) if r["dtype"] == FP8 else 0


def _payload(r: dict) -> int:
    return r["nbytes"] + _scale_nbytes(r)


def _rows_of(info: DocumentInfo) -> str:
    """Filter for the stored rows of `info`'s generations."""
    gens = ", ".join(sql_str(p.generation) for p in info.parts)
    return f"doc_id = {sql_str(info.doc_id)} AND generation IN ({gens})"


def _newest_per_id(rows: list[dict]) -> dict[str, dict]:
    """doc_id -> its newest row. Duplicates only come from a lost race; the newest wins."""
    latest: dict[str, dict] = {}
    for row in rows:
        old = latest.get(row["doc_id"])
        if old is None or (row["updated_at"], row["generation"]) > (old["updated_at"], old["generation"]):
            latest[row["doc_id"]] = row
    return latest


def _row_problem(r: dict, info: DocumentInfo, part: Part) -> str | None:
    """Why a row's header cannot belong to `info` (None if it can)."""
    if r["tensor"] not in ("keys", "values") or not 0 <= r["layer_from"] < r["layer_to"] <= info.n_layers:
        return "names a tensor or layers the document does not have"
    if not r["entry_from"] < r["entry_to"] <= part.entry_to:
        return "reaches past its part of the memory"
    want = _slab(r).shape(1, info.n_kv_heads, info.head_dim)
    nbytes = int(np.prod(want)) * to_dtype(info.store_dtype).itemsize
    if tuple(r["shape"]) != want or r["dtype"] != info.store_dtype or r["nbytes"] != nbytes:
        return f"claims {r['dtype']} {tuple(r['shape'])} / {r['nbytes']} bytes, expected {info.store_dtype} {want}"
    return None


def _check_put(doc: NewDocument) -> tuple[str, Piece]:
    """(store dtype, piece) of a document to put; ValueError saying what is wrong with it."""
    _check_doc_id(doc.doc_id)
    _check_memory(doc.doc_id, doc.memory, doc.fingerprint)
    store_dtype = doc.store_dtype or dtype_name(doc.memory.dtype)
    if store_dtype not in STORE_DTYPES:
        raise ValueError(f"store_dtype={store_dtype!r}: choose one of {STORE_DTYPES}")
    if doc.token_ids is not None and torch.as_tensor(doc.token_ids).numel() != doc.memory.n_tokens:
        raise ValueError(
            f"document {doc.doc_id!r}: token_ids has {torch.as_tensor(doc.token_ids).numel()} ids but the memory read"
            f" {doc.memory.n_tokens} tokens: pass the ids that were condensed"
        )
    piece = Piece(doc.memory.n_tokens, text_digest(doc.text, doc.doc_id), tokens_digest(doc.token_ids))
    _check_metadata(doc.doc_id, doc.metadata)
    return store_dtype, piece


def _check_doc_id(doc_id: str) -> None:
    if not isinstance(doc_id, str) or not doc_id or "\x00" in doc_id:
        raise ValueError(f"doc_id must be a non-empty string without NUL characters, got {doc_id!r}")


def _check_memory(doc_id: str, memory: Memory, fingerprint: dict) -> None:
    if not isinstance(memory, Memory):
        raise ValueError(f"document {doc_id!r}: memory must be a beacon.Memory, got {type(memory).__name__}")
    memory.check()
    if memory.batch_size != 1:
        raise ValueError(
            f"document {doc_id!r}: the memory holds a batch of {memory.batch_size} sequences; a snapshot is one"
            " document: put each with memory.select([i]) (or lm.condense_many, which returns one per document)"
        )
    if memory.n_tokens == 0:
        raise ValueError(f"document {doc_id!r} is empty (the memory has read no tokens): condense some text first")
    if not isinstance(fingerprint, dict) or "id" not in fingerprint:
        raise ValueError(f"document {doc_id!r}: fingerprint must be lm.fingerprint() of the model that condensed it")
    if fingerprint.get("dtype") != dtype_name(memory.dtype):
        raise ValueError(
            f"document {doc_id!r}: the memory is {dtype_name(memory.dtype)} but the fingerprint's model runs in"
            f" {fingerprint.get('dtype')}: pass the fingerprint of the model that condensed this memory"
        )


def _check_metadata(doc_id: str, metadata: dict | None) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise ValueError(f"document {doc_id!r}: metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"document {doc_id!r}: metadata must be JSON (str keys, plain values): {e}") from e


def _describe(
    doc_id: str,
    generation: str,
    memory: Memory,
    fingerprint: dict,
    store_dtype: str,
    *,
    parts: tuple[Part, ...],
    pieces: tuple[Piece, ...],
    n_rows: int,
    stored_bytes: int,
    created_at: datetime,
    text_sha256: str | None,
    source_uri: str | None,
    title: str | None,
    metadata: dict | None,
) -> DocumentInfo:
    """The documents record of `memory` stored under `generation`."""
    h, d = memory.keys[0].shape[1], memory.keys[0].shape[3]
    config = fingerprint.get("beacon_config", {})
    return DocumentInfo(
        doc_id=doc_id,
        generation=generation,
        parts=parts,
        created_at=created_at,
        updated_at=_now(),
        n_tokens=memory.n_tokens,
        pieces=pieces,
        fingerprint=fingerprint,
        beacon_config=config,
        ratios=chosen_ratios(config, memory.state),
        state=memory.state,
        memory_version=EXPORT_VERSION,
        memory_dtype=dtype_name(memory.dtype),
        store_dtype=store_dtype,
        n_layers=memory.n_layers,
        n_kv_heads=h,
        head_dim=d,
        n_rows=n_rows,
        stored_bytes=stored_bytes,
        full_kv_bytes=full_kv_bytes(memory.n_layers, h, d, memory.n_tokens, memory.dtype),
        source_uri=source_uri,
        title=title,
        metadata=metadata,
        text_sha256=text_sha256,
    )
