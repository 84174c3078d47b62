"""Look after a store: check, open, list, show, delete, optimize — the snapshot store and its search table together.

A store is a folder or an object-store URI (s3://bucket/prefix: snapshots/location.py); on an object
store there are no folders, so "is there a store" means "does its documents table open".
"""

from __future__ import annotations

import os
from pathlib import Path

from snapshots import SnapshotStore, store_exists
from snapshots.location import is_uri
from snapshots.records import DocumentInfo
from snapshots.reports import OptimizeReport
from snapshots.search import SearchIndex

from .lookup import resolve_id, resolve_ids


def open_store(db: str | os.PathLike) -> SnapshotStore:
    """The store at `db` (a folder or an object-store URI); ValueError saying how to make one if there
    is none, StoreUnavailableError (one line) if its object store cannot be reached."""
    if is_uri(db):
        found = store_exists(db)
    else:
        if Path(db).exists() and not Path(db).is_dir():
            raise ValueError(
                f"--db {str(db)!r} is a file, not a snapshot store folder: give the folder you ingested into"
            )
        found = Path(db).is_dir()
    if not found:
        raise ValueError(f"no snapshot store at {str(db)!r}: ingest a corpus first (beacon ingest CORPUS --db {db})")
    return SnapshotStore(db)


def check_store_path(db: str) -> None:
    """ValueError if `db` cannot be a store (a regular file, or inside one), StoreUnavailableError if
    its object store cannot be reached (no such bucket, endpoint down) — checked before any work."""
    if is_uri(db):
        store_exists(db)  # reaches the bucket: raises if it cannot, whether or not a store is there yet
        return
    path = Path(db)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies under {str(p)!r}, which is a file"
                raise ValueError(f"--db {db!r} {what}: give a folder (created if missing), e.g. --db beacon_db")
            break


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
