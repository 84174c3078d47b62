"""snapshots: beacon memories persisted as LanceDB tables — condense once, load many times.

Public API:
    store = SnapshotStore(path)            # a folder, or an object-store URI: s3://bucket/prefix
    info = store.put(doc_id, memory, fingerprint=lm.fingerprint(), text=..., store_dtype=None)
    infos = store.put_many([NewDocument(doc_id, memory, lm.fingerprint(), text=...), ...])  # two commits
    memory = store.get(doc_id | [doc_ids], fingerprint=lm.fingerprint(), device=lm.device)
    memory = store.append(doc_id, more_token_ids, lm=lm, text=...)
    store.list(), store.show(doc_id), store.delete(doc_id), store.optimize(), store.stats()

Tables and their columns: snapshots/schema.py and docs/snapshots.md.
"""

from .errors import (
    ConcurrentUpdateError,
    CorruptSnapshotError,
    DocumentExistsError,
    DocumentNotFoundError,
    FingerprintMismatchError,
    SchemaMismatchError,
    SnapshotError,
    StoreUnavailableError,
)
from .records import DocumentInfo, Part, Piece
from .reports import DocStats, OptimizeReport, StoreStats
from .schema import DOCUMENTS_SCHEMA, SCHEMA_VERSION, SNAPSHOTS_SCHEMA, STORE_DTYPES
from .store import NewDocument, SnapshotStore, store_exists

__all__ = [
    "DOCUMENTS_SCHEMA",
    "SCHEMA_VERSION",
    "SNAPSHOTS_SCHEMA",
    "STORE_DTYPES",
    "ConcurrentUpdateError",
    "CorruptSnapshotError",
    "DocStats",
    "DocumentExistsError",
    "DocumentInfo",
    "DocumentNotFoundError",
    "FingerprintMismatchError",
    "NewDocument",
    "OptimizeReport",
    "Part",
    "Piece",
    "SchemaMismatchError",
    "SnapshotError",
    "SnapshotStore",
    "StoreStats",
    "StoreUnavailableError",
    "store_exists",
]
