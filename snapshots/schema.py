"""The two tables of a snapshot store — declared once, here, with a version number.

A store is a folder that LanceDB opens as a database with two tables:

  documents   one row per stored document: identity, provenance (model fingerprint, beacon
              config, ratios), the memory's window state, sizes, and which write ("generation")
              holds which range of memory entries.
  snapshots   the memory itself, in rows of bounded size: one row = one slab of the keys or the
              values tensor, layers [layer_from, layer_to) x entries [entry_from, entry_to),
              shape (layers, b, h_kv, entries, d), as raw little-endian bytes + dtype + shape +
              crc32. No pickle anywhere: every value is an Arrow primitive, string or bytes.

Every write passes these schemas; `tests/test_snapshots_schema.py` pins them and checks that
docs/snapshots.md describes every column. Change a column -> bump SCHEMA_VERSION.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
DATA_STORAGE_VERSION = "2.1"  # Lance file format, pinned: blob columns read fastest with it (docs/snapshots.md)

DOCUMENTS = "documents"
SNAPSHOTS = "snapshots"
SEARCH = "search"  # the search table (search.py): rebuilt from the corpus, so outside SCHEMA_VERSION
SEARCH_TEXT_COLUMNS = ("title", "text")
STATUS_READY = "ready"  # the only status schema v1 writes; readers refuse any other
TENSORS = ("keys", "values")
STORE_DTYPES = ("float32", "bfloat16", "float16", "float8_e4m3fn")  # names of torch dtypes

_META = {b"beacon.schema_version": str(SCHEMA_VERSION).encode()}
_BLOB = {b"lance-encoding:blob": b"true"}  # stored out of line, read with take_blobs
# merge_insert on a primary key detects concurrent inserts of the same key (one wins, one retries)
_KEY = {b"lance-schema:unenforced-primary-key": b"true"}
_UTC = pa.timestamp("us", tz="UTC")

PART = pa.struct(
    [
        pa.field("generation", pa.string(), nullable=False),
        pa.field("entry_from", pa.int64(), nullable=False),
        pa.field("entry_to", pa.int64(), nullable=False),
    ]
)
PIECE = pa.struct(
    [
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("text_sha256", pa.string()),
        pa.field("tokens_sha256", pa.string()),
    ]
)

# (field, description) — the description is what docs/snapshots.md shows
_DOCUMENT_FIELDS: list[tuple[pa.Field, str]] = [
    (
        pa.field("doc_id", pa.string(), nullable=False, metadata=_KEY),
        "caller's id, the table's primary key (put upserts)",
    ),
    (pa.field("schema_version", pa.int32(), nullable=False), "SCHEMA_VERSION of the writer"),
    (pa.field("status", pa.string(), nullable=False), "'ready' (the only committed state in v1)"),
    (
        pa.field("generation", pa.string(), nullable=False),
        "id of the write that made this version (new per put/append)",
    ),
    (
        pa.field("parts", pa.list_(PART), nullable=False),
        "which generation's snapshot rows hold which entry range [entry_from, entry_to)",
    ),
    (pa.field("created_at", _UTC, nullable=False), "when this doc_id's content was first put (kept by append)"),
    (pa.field("updated_at", _UTC, nullable=False), "when this version was committed"),
    (pa.field("source_uri", pa.string()), "where the text came from (caller's)"),
    (pa.field("title", pa.string()), "caller's title"),
    (pa.field("metadata_json", pa.string()), "caller's metadata, a JSON object"),
    (pa.field("n_tokens", pa.int64(), nullable=False), "raw tokens the memory has read"),
    (pa.field("text_sha256", pa.string()), "sha256 of the UTF-8 text when read in one piece, else null"),
    (pa.field("pieces", pa.list_(PIECE), nullable=False), "one entry per put/append: tokens and hashes of that piece"),
    (pa.field("fingerprint_id", pa.string(), nullable=False), "`id` of the model fingerprint; must match to load"),
    (pa.field("model_name", pa.string(), nullable=False), "name or path the model was loaded from"),
    (pa.field("model_type", pa.string(), nullable=False), "HF model_type (qwen2, llama, ...)"),
    (pa.field("model_dtype", pa.string(), nullable=False), "dtype the model ran in"),
    (pa.field("fingerprint_json", pa.string(), nullable=False), "the whole fingerprint (base hashes, beacon hashes)"),
    (pa.field("beacon_config_json", pa.string(), nullable=False), "BeaconConfig the memory was condensed with"),
    (pa.field("ratios", pa.list_(pa.int32())), "ratio chosen for each finished window, in order (null if unknown)"),
    (pa.field("memory_version", pa.int32(), nullable=False), "beacon.memory.EXPORT_VERSION of the memory"),
    (pa.field("memory_state_json", pa.string(), nullable=False), "WindowState: where the open window stands"),
    (pa.field("memory_dtype", pa.string(), nullable=False), "dtype of the memory tensors (what get returns)"),
    (pa.field("store_dtype", pa.string(), nullable=False), "dtype of the stored bytes (= memory_dtype, or fp8)"),
    (pa.field("n_layers", pa.int32(), nullable=False), "layers"),
    (pa.field("n_kv_heads", pa.int32(), nullable=False), "h_kv"),
    (pa.field("head_dim", pa.int32(), nullable=False), "d"),
    (pa.field("n_entries", pa.int64(), nullable=False), "entries per layer = sink + beacons + window"),
    (pa.field("n_sink", pa.int64(), nullable=False), "sink entries"),
    (pa.field("n_beacons", pa.int64(), nullable=False), "condensed entries of finished windows"),
    (pa.field("n_window", pa.int64(), nullable=False), "entries of the open window (raw tail)"),
    (pa.field("n_rows", pa.int64(), nullable=False), "live snapshot rows"),
    (pa.field("stored_bytes", pa.int64(), nullable=False), "payload bytes of the live rows (data + scales)"),
    (pa.field("full_kv_bytes", pa.int64(), nullable=False), "bytes a plain KV cache of n_tokens would take"),
    (pa.field("record_crc32", pa.uint32(), nullable=False), "crc32 of the fields that rebuild the memory"),
]

_SNAPSHOT_FIELDS: list[tuple[pa.Field, str]] = [
    (pa.field("doc_id", pa.string(), nullable=False), "document the row belongs to"),
    (pa.field("generation", pa.string(), nullable=False), "write that produced the row"),
    (pa.field("row", pa.int32(), nullable=False), "index of the row within its generation"),
    (pa.field("tensor", pa.string(), nullable=False), "'keys' (pre-RoPE) or 'values'"),
    (pa.field("layer_from", pa.int32(), nullable=False), "first layer in the slab"),
    (pa.field("layer_to", pa.int32(), nullable=False), "end layer (exclusive)"),
    (pa.field("entry_from", pa.int64(), nullable=False), "first memory entry in the slab"),
    (pa.field("entry_to", pa.int64(), nullable=False), "end entry (exclusive)"),
    (pa.field("dtype", pa.string(), nullable=False), "dtype of `data`: float32, bfloat16, float16, float8_e4m3fn"),
    (pa.field("shape", pa.list_(pa.int64()), nullable=False), "(layers, b, h_kv, entries, d) of `data`"),
    (pa.field("data", pa.large_binary(), nullable=False, metadata=_BLOB), "raw little-endian C-order bytes (blob)"),
    (pa.field("scale", pa.binary()), "fp8 only: float32 per (layer, b, head, entry), shape[:-1] + [1]"),
    (pa.field("nbytes", pa.int64(), nullable=False), "len(data); a shorter blob is a truncated row"),
    (pa.field("crc32", pa.uint32(), nullable=False), "crc32 of (row header, data, scale)"),
    (pa.field("created_at", _UTC, nullable=False), "when the generation started writing (optimize's grace)"),
]

DOCUMENTS_SCHEMA = pa.schema([f for f, _ in _DOCUMENT_FIELDS], metadata=_META | {b"beacon.table": b"documents"})
SNAPSHOTS_SCHEMA = pa.schema([f for f, _ in _SNAPSHOT_FIELDS], metadata=_META | {b"beacon.table": b"snapshots"})
SCHEMAS = {DOCUMENTS: DOCUMENTS_SCHEMA, SNAPSHOTS: SNAPSHOTS_SCHEMA}

# the snapshot columns read to plan a load (everything but the blob)
SNAPSHOT_META_COLUMNS = [f.name for f, _ in _SNAPSHOT_FIELDS if f.name != "data"]


def describe(table: str) -> list[tuple[str, str, bool, str]]:
    """(name, Arrow type, nullable, description) of each column of `table`."""
    fields = {DOCUMENTS: _DOCUMENT_FIELDS, SNAPSHOTS: _SNAPSHOT_FIELDS}
    if table not in fields:
        raise ValueError(f"unknown table {table!r}: choose {DOCUMENTS!r} or {SNAPSHOTS!r}")
    return [(f.name, str(f.type), f.nullable, doc) for f, doc in fields[table]]


def markdown(table: str) -> str:
    """The column table of `table` as Markdown (docs/snapshots.md embeds it)."""
    lines = ["| column | type | null | meaning |", "|---|---|---|---|"]
    for name, typ, nullable, doc in describe(table):
        lines.append(f"| `{name}` | `{typ}` | {'yes' if nullable else 'no'} | {doc} |")
    return "\n".join(lines)


def search_schema(dim: int | None) -> pa.Schema:
    """The search table's columns; `vector` only when documents carry embeddings of length `dim`."""
    fields = [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.large_string()),
        pa.field("source_uri", pa.string()),
        pa.field("text_sha256", pa.string()),
        pa.field("updated_at", _UTC, nullable=False),
    ]
    if dim is not None:
        fields.append(pa.field("vector", pa.list_(pa.float32(), dim)))
    return pa.schema(fields)
