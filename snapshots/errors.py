"""Errors the snapshot store raises; each message names the document, the bad value and what to do."""

from __future__ import annotations


class SnapshotError(Exception):
    """Base class of every error raised by the snapshot store."""


class DocumentNotFoundError(SnapshotError, LookupError):
    """No document with this id is stored (ready)."""


class DocumentExistsError(SnapshotError, ValueError):
    """`put(..., on_exists="error")` found the id already stored."""


class FingerprintMismatchError(SnapshotError, ValueError):
    """A snapshot was made by another model, dtype or beacon config than the one asking for it."""


class CorruptSnapshotError(SnapshotError):
    """Stored bytes fail their checks (checksum, size, coverage); the memory is not returned."""


class ConcurrentUpdateError(SnapshotError):
    """Another writer changed the document while this one was working on it; retry the call."""


class SchemaMismatchError(SnapshotError):
    """The tables on disk have another schema (version) than this code writes."""


class StoreUnavailableError(SnapshotError):
    """The store's object-store location cannot be reached (no such bucket, endpoint down, access refused)."""
