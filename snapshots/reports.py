"""What `stats` and `optimize` return: plain dataclasses with a one-line summary each."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DocStats:
    """Sizes of one stored document."""

    doc_id: str
    n_tokens: int
    n_entries: int  # per layer
    n_rows: int
    stored_bytes: int  # payload of its live rows
    full_kv_bytes: int  # a plain KV cache of n_tokens, memory dtype
    store_dtype: str

    @property
    def bytes_per_token(self) -> float:
        return self.stored_bytes / max(self.n_tokens, 1)

    @property
    def full_kv_bytes_per_token(self) -> float:
        return self.full_kv_bytes / max(self.n_tokens, 1)

    @property
    def compression(self) -> float:
        """full KV bytes / stored bytes."""
        return self.full_kv_bytes / max(self.stored_bytes, 1)


@dataclass(frozen=True)
class StoreStats:
    """Sizes of a whole store: live payload vs. a plain KV cache, and what the folder holds."""

    documents: list[DocStats]
    snapshot_rows: int  # rows in the snapshots table, live or not (garbage until optimize)
    disk_bytes: int  # bytes of the store folder, all versions included
    versions: dict[str, int]  # table -> versions kept

    @property
    def n_tokens(self) -> int:
        return sum(d.n_tokens for d in self.documents)

    @property
    def stored_bytes(self) -> int:
        return sum(d.stored_bytes for d in self.documents)

    @property
    def full_kv_bytes(self) -> int:
        return sum(d.full_kv_bytes for d in self.documents)

    @property
    def live_rows(self) -> int:
        return sum(d.n_rows for d in self.documents)

    @property
    def bytes_per_token(self) -> float:
        return self.stored_bytes / max(self.n_tokens, 1)

    @property
    def full_kv_bytes_per_token(self) -> float:
        return self.full_kv_bytes / max(self.n_tokens, 1)

    def summary(self) -> str:
        ratio = self.full_kv_bytes / max(self.stored_bytes, 1)
        return (
            f"{len(self.documents)} documents, {self.n_tokens} tokens: {self.bytes_per_token:.1f} B/token stored vs"
            f" {self.full_kv_bytes_per_token:.1f} B/token full KV ({ratio:.1f}x);"
            f" {self.live_rows}/{self.snapshot_rows} rows live, {self.disk_bytes / 1e6:.1f} MB on disk"
        )


@dataclass(frozen=True)
class OptimizeReport:
    """What `optimize` removed and rewrote."""

    rows_deleted: int  # snapshot rows of replaced, deleted or crashed writes
    generations_deleted: int  # writes no document refers to, older than the grace period
    generations_in_flight: int  # unreferenced writes younger than the grace period (kept)
    duplicate_records: int  # documents rows that lost to a newer row of the same id (removed)
    compaction: dict[str, dict] = field(default_factory=dict)  # table -> Lance compaction metrics
    cleanup: dict[str, dict] = field(default_factory=dict)  # table -> {old_versions, bytes_removed}

    def summary(self) -> str:
        freed = sum(c.get("bytes_removed", 0) for c in self.cleanup.values())
        return (
            f"deleted {self.rows_deleted} rows of {self.generations_deleted} dead writes"
            f" ({self.generations_in_flight} in flight kept), {self.duplicate_records} duplicate records;"
            f" freed {freed / 1e6:.1f} MB"
        )
