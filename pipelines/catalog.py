"""Look after a store: list, show, delete, optimize — the snapshot store and its search table together."""

from __future__ import annotations

import os
from pathlib import Path

from snapshots import SnapshotStore
from snapshots.records import DocumentInfo
from snapshots.reports import OptimizeReport
from snapshots.search import SearchIndex

from .lookup import resolve_id, resolve_ids


def open_store(db: str | os.PathLike) -> SnapshotStore:
    """The store at `db`; ValueError saying how to make one if there is none."""
    if Path(db).exists() and not Path(db).is_dir():
        raise ValueError(f"--db {str(db)!r} is a file, not a snapshot store folder: give the folder you ingested into")
    if not Path(db).is_dir():
        raise ValueError(f"no snapshot store at {str(db)!r}: ingest a corpus first (beacon ingest CORPUS --db {db})")
    return SnapshotStore(db)


def list_documents(db: str | os.PathLike) -> list[DocumentInfo]:
    """Every stored document, by id."""
    return open_store(db).list()


def show_document(db: str | os.PathLike, doc_id: str) -> DocumentInfo:
    """The stored record of `doc_id`, or of the one its stem names (DocumentNotFoundError with the closest ids)."""
    store = open_store(db)
    return store.show(resolve_id(doc_id, store.ids(), where=str(db)))


def verify_documents(db: str | os.PathLike, doc_ids: list[str] | None = None) -> tuple[int, dict[str, str]]:
    """(documents checked, {doc_id: damage}): every checksum and fingerprint of `doc_ids` (all if None)."""
    store = open_store(db)
    ids = store.ids()
    wanted = ids if not doc_ids else resolve_ids(doc_ids, ids, where=str(db))
    return len(wanted), store.verify(wanted)


def delete_documents(db: str | os.PathLike, doc_ids: list[str], *, missing_ok: bool = False) -> list[str]:
    """Delete the snapshots and search rows of `doc_ids`; returns the ids that were stored."""
    store = open_store(db)
    stored = store.ids()
    if not missing_ok:
        doc_ids = resolve_ids(doc_ids, stored, where=str(db))
    gone = [d for d in doc_ids if store.delete(d, missing_ok=missing_ok)]
    SearchIndex(db).delete(list(doc_ids))
    return gone


def optimize_store(
    db: str | os.PathLike, *, grace_s: float = 3600.0, keep_versions_s: float = 3600.0
) -> OptimizeReport:
    """The store's optimize (dead rows, compaction, old versions), then the search table's."""
    report = open_store(db).optimize(grace_s=grace_s, keep_versions_s=keep_versions_s)
    SearchIndex(db).optimize()
    return report
