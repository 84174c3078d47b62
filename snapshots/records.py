"""One document's row of the `documents` table, as a typed record, plus what goes into it.

`DocumentInfo` is what `show` and `list` return; `to_row` / `from_row` convert it to and from the
Arrow row declared in schema.py. `record_crc32` covers the fields that rebuild the memory, so a
damaged documents row is caught like a damaged snapshot row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import torch

from beacon import BeaconConfig, WindowState
from beacon.windows import plan_steps

from .errors import CorruptSnapshotError, SchemaMismatchError
from .schema import SCHEMA_VERSION, STATUS_READY


@dataclass(frozen=True)
class Part:
    """Entries [entry_from, entry_to) of the memory live in the rows of `generation`."""

    generation: str
    entry_from: int
    entry_to: int


@dataclass(frozen=True)
class Piece:
    """One put or append: how many tokens it read and hashes of what it read."""

    n_tokens: int
    text_sha256: str | None = None
    tokens_sha256: str | None = None


@dataclass(frozen=True)
class DocumentInfo:
    """A stored document: identity, provenance, window state and sizes (one `documents` row)."""

    doc_id: str
    generation: str
    parts: tuple[Part, ...]
    created_at: datetime
    updated_at: datetime
    n_tokens: int
    pieces: tuple[Piece, ...]
    fingerprint: dict
    beacon_config: dict
    ratios: tuple[int, ...] | None
    state: WindowState
    memory_version: int
    memory_dtype: str
    store_dtype: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    n_rows: int
    stored_bytes: int
    full_kv_bytes: int
    source_uri: str | None = None
    title: str | None = None
    metadata: dict | None = None
    text_sha256: str | None = None
    status: str = STATUS_READY
    schema_version: int = SCHEMA_VERSION

    # ---- derived -------------------------------------------------------------------------------
    @property
    def fingerprint_id(self) -> str:
        return self.fingerprint["id"]

    @property
    def n_entries(self) -> int:
        """Entries per layer: sink + beacons + open window."""
        return self.state.size

    def sizes(self) -> tuple[int, int, int]:
        """(sink, beacons, raw) entries per layer, as Memory.sizes()."""
        return self.state.n_sink, self.state.n_beacons, self.state.n_window

    @property
    def bytes_per_token(self) -> float:
        """Stored payload bytes per raw token read."""
        return self.stored_bytes / max(self.n_tokens, 1)

    @property
    def full_kv_bytes_per_token(self) -> float:
        """Bytes per token of a plain KV cache in the memory dtype."""
        return self.full_kv_bytes / max(self.n_tokens, 1)

    # ---- rows ----------------------------------------------------------------------------------
    def record_crc32(self) -> int:
        """crc32 of the fields that say how to rebuild the memory."""
        key = [
            self.doc_id,
            self.generation,
            [dataclasses.astuple(p) for p in self.parts],
            self.state.to_dict(),
            self.memory_version,
            self.memory_dtype,
            self.store_dtype,
            self.n_layers,
            self.n_kv_heads,
            self.head_dim,
            self.n_rows,
            self.fingerprint_id,
        ]
        return zlib.crc32(json.dumps(key, sort_keys=True).encode())

    def to_row(self) -> dict:
        """The `documents` row (column name -> Python value)."""
        s = self.state
        return {
            "doc_id": self.doc_id,
            "schema_version": self.schema_version,
            "status": self.status,
            "generation": self.generation,
            "parts": [dataclasses.asdict(p) for p in self.parts],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "source_uri": self.source_uri,
            "title": self.title,
            "metadata_json": None if self.metadata is None else json.dumps(self.metadata, sort_keys=True),
            "n_tokens": self.n_tokens,
            "text_sha256": self.text_sha256,
            "pieces": [dataclasses.asdict(p) for p in self.pieces],
            "fingerprint_id": self.fingerprint_id,
            "model_name": str(self.fingerprint.get("name", "")),
            "model_type": str(self.fingerprint.get("model_type", "")),
            "model_dtype": str(self.fingerprint.get("dtype", "")),
            "fingerprint_json": json.dumps(self.fingerprint, sort_keys=True),
            "beacon_config_json": json.dumps(self.beacon_config, sort_keys=True),
            "ratios": None if self.ratios is None else list(self.ratios),
            "memory_version": self.memory_version,
            "memory_state_json": json.dumps(s.to_dict(), sort_keys=True),
            "memory_dtype": self.memory_dtype,
            "store_dtype": self.store_dtype,
            "n_layers": self.n_layers,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "n_entries": s.size,
            "n_sink": s.n_sink,
            "n_beacons": s.n_beacons,
            "n_window": s.n_window,
            "n_rows": self.n_rows,
            "stored_bytes": self.stored_bytes,
            "full_kv_bytes": self.full_kv_bytes,
            "record_crc32": self.record_crc32(),
        }

    @classmethod
    def from_row(cls, row: dict) -> DocumentInfo:
        """Parse and check a `documents` row (schema version, status, record checksum)."""
        doc_id = row.get("doc_id")
        if row.get("schema_version") != SCHEMA_VERSION:
            raise SchemaMismatchError(
                f"document {doc_id!r} was written with snapshot schema {row.get('schema_version')}; this code"
                f" reads {SCHEMA_VERSION}: use the matching version of `snapshots`"
            )
        if row.get("status") != STATUS_READY:
            raise CorruptSnapshotError(f"document {doc_id!r} has status {row.get('status')!r}, not 'ready'")
        try:
            info = cls(
                doc_id=doc_id,
                generation=row["generation"],
                parts=tuple(Part(**p) for p in row["parts"]),
                created_at=row["created_at"],
                updated_at=row["updated_at"],
                n_tokens=row["n_tokens"],
                pieces=tuple(Piece(**p) for p in row["pieces"]),
                fingerprint=json.loads(row["fingerprint_json"]),
                beacon_config=json.loads(row["beacon_config_json"]),
                ratios=None if row["ratios"] is None else tuple(row["ratios"]),
                state=WindowState.from_dict(json.loads(row["memory_state_json"])),
                memory_version=row["memory_version"],
                memory_dtype=row["memory_dtype"],
                store_dtype=row["store_dtype"],
                n_layers=row["n_layers"],
                n_kv_heads=row["n_kv_heads"],
                head_dim=row["head_dim"],
                n_rows=row["n_rows"],
                stored_bytes=row["stored_bytes"],
                full_kv_bytes=row["full_kv_bytes"],
                source_uri=row["source_uri"],
                title=row["title"],
                metadata=None if row["metadata_json"] is None else json.loads(row["metadata_json"]),
                text_sha256=row["text_sha256"],
                status=row["status"],
                schema_version=row["schema_version"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptSnapshotError(f"document {doc_id!r}: its documents row cannot be parsed ({e})") from e
        if info.record_crc32() != row["record_crc32"]:
            raise CorruptSnapshotError(
                f"document {doc_id!r}: its documents row fails its checksum (crc32 {info.record_crc32():#010x},"
                f" stored {row['record_crc32']:#010x}); put the document again"
            )
        return info


# ---------------------------------------------------------------------------------------------
# What goes into a record
# ---------------------------------------------------------------------------------------------


def text_digest(text: str | bytes | None, doc_id: str) -> str | None:
    """sha256 of the UTF-8 text; bytes must be valid UTF-8 and str must encode to it."""
    if text is None:
        return None
    if isinstance(text, bytes):
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"document {doc_id!r}: text is not valid UTF-8 (byte {e.start}: {e.reason});"
                " decode it with the right encoding first, or pass only token ids"
            ) from e
        return hashlib.sha256(text).hexdigest()
    if not isinstance(text, str):
        raise ValueError(f"document {doc_id!r}: text must be str or UTF-8 bytes, got {type(text).__name__}")
    try:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError as e:
        raise ValueError(
            f"document {doc_id!r}: text holds characters UTF-8 cannot encode (position {e.start}: {e.reason},"
            " e.g. lone surrogates from a bad decode); clean the text first"
        ) from e


def tokens_digest(token_ids: torch.Tensor | Sequence[int] | None) -> str | None:
    """sha256 of the token ids as little-endian int64."""
    if token_ids is None:
        return None
    ids = torch.as_tensor(token_ids, dtype=torch.int64).reshape(-1).cpu()
    return hashlib.sha256(ids.numpy().astype("<i8").tobytes()).hexdigest()


def chosen_ratios(config: dict, state: WindowState) -> tuple[int, ...] | None:
    """The ratio of each finished window, replayed from the config and seed (None if it can't be).

    The engine draws window ratios from (seed, window index) or fixes one per sequence
    (`state.sequence_ratio`), so replaying the plan over `state.n_tokens` tokens reproduces them;
    the replay must end in exactly `state`, else (e.g. a concatenated memory) nothing is claimed.
    """
    if state.n_tokens == 0:
        return ()
    try:
        cfg = BeaconConfig.from_dict(config)
    except (TypeError, ValueError):
        return None
    if len(cfg.beacon_ratio) == 1:  # nothing to draw
        return (cfg.beacon_ratio[0],) * state.n_windows
    start = WindowState(seed=state.seed, sequence_ratio=state.sequence_ratio)
    steps = plan_steps(cfg, start, state.n_tokens, known_length=state.n_tokens, max_positions=2**62)
    if steps[-1].after != state:
        return None
    return tuple(s.ratio for s in steps if s.closes)


def full_kv_bytes(n_layers: int, n_kv_heads: int, head_dim: int, n_tokens: int, dtype: torch.dtype) -> int:
    """Bytes a plain KV cache of `n_tokens` tokens takes (keys + values, all layers)."""
    return 2 * n_layers * n_kv_heads * head_dim * n_tokens * dtype.itemsize
