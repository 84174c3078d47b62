"""The snapshot tables' schemas are pinned, documented, and what LanceDB finds on disk."""

from __future__ import annotations

from pathlib import Path

import lance
import lancedb
import pyarrow as pa
import pytest

from snapshots import SnapshotStore, schema
from snapshots.errors import SchemaMismatchError

from ._snapshots_helpers import CONFIGS
from .conftest import load_tiny, tokens

DOCS = Path(__file__).resolve().parent.parent / "docs" / "snapshots.md"

PART = "struct<generation: string not null, entry_from: int64 not null, entry_to: int64 not null>"
PINNED = {
    "documents": [
        ("doc_id", "string", False), ("schema_version", "int32", False), ("status", "string", False),
        ("generation", "string", False),
        ("parts", f"list<item: {PART}>", False),
        ("created_at", "timestamp[us, tz=UTC]", False), ("updated_at", "timestamp[us, tz=UTC]", False),
        ("source_uri", "string", True), ("title", "string", True), ("metadata_json", "string", True),
        ("n_tokens", "int64", False), ("text_sha256", "string", True),
        ("pieces", "list<item: struct<n_tokens: int64 not null, text_sha256: string, tokens_sha256: string>>", False),
        ("fingerprint_id", "string", False), ("model_name", "string", False), ("model_type", "string", False),
        ("model_dtype", "string", False), ("fingerprint_json", "string", False),
        ("beacon_config_json", "string", False), ("ratios", "list<item: int32>", True),
        ("memory_version", "int32", False), ("memory_state_json", "string", False), ("memory_dtype", "string", False),
        ("store_dtype", "string", False), ("n_layers", "int32", False), ("n_kv_heads", "int32", False),
        ("head_dim", "int32", False), ("n_entries", "int64", False), ("n_sink", "int64", False),
        ("n_beacons", "int64", False), ("n_window", "int64", False), ("n_rows", "int64", False),
        ("stored_bytes", "int64", False), ("full_kv_bytes", "int64", False), ("record_crc32", "uint32", False),
    ],
    "snapshots": [
        ("doc_id", "string", False), ("generation", "string", False), ("row", "int32", False),
        ("tensor", "string", False), ("layer_from", "int32", False), ("layer_to", "int32", False),
        ("entry_from", "int64", False), ("entry_to", "int64", False), ("dtype", "string", False),
        ("shape", "list<item: int64>", False), ("data", "large_binary", False), ("scale", "binary", True),
        ("nbytes", "int64", False), ("crc32", "uint32", False), ("created_at", "timestamp[us, tz=UTC]", False),
    ],
}  # fmt: skip


def test_schemas_are_pinned():
    assert schema.SCHEMA_VERSION == 1
    for name, pinned in PINNED.items():
        assert [(n, t, null) for n, t, null, _ in schema.describe(name)] == pinned, f"{name}: bump SCHEMA_VERSION"
        assert schema.SCHEMAS[name].metadata[b"beacon.schema_version"] == b"1"
    assert schema.SNAPSHOTS_SCHEMA.field("data").metadata == {b"lance-encoding:blob": b"true"}
    assert schema.DOCUMENTS_SCHEMA.field("doc_id").metadata == {b"lance-schema:unenforced-primary-key": b"true"}


def test_no_column_can_hold_a_pickle_or_an_extension_type():
    for s in schema.SCHEMAS.values():
        for f in s:
            assert not isinstance(f.type, pa.ExtensionType)
            if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
                assert f.name in ("data", "scale")  # raw little-endian tensor bytes only


def test_docs_describe_every_column():
    text = DOCS.read_text()
    for name in schema.SCHEMAS:
        assert schema.markdown(name) in text, f"docs/snapshots.md: paste snapshots.schema.markdown({name!r})"


def test_store_folder_is_a_lancedb_database(tmp_path):
    lm = load_tiny("qwen2", **CONFIGS["append"])
    store = SnapshotStore(tmp_path / "db")
    info = store.put("doc", lm.condense(tokens(37, 1)), fingerprint=lm.fingerprint())
    db = lancedb.connect(tmp_path / "db")
    names = db.list_tables().tables
    assert {"documents", "snapshots"} <= set(names)
    docs = db.open_table("documents")
    assert docs.count_rows() == 1 and docs.schema.equals(schema.DOCUMENTS_SCHEMA, check_metadata=True)
    assert db.open_table("snapshots").count_rows() == info.n_rows
    SnapshotStore(tmp_path / "db")  # reopening checks the schemas and keeps the data
    assert store.show("doc").generation == info.generation


def test_a_table_with_another_schema_is_refused(tmp_path):
    other = pa.schema([pa.field("doc_id", pa.string())])
    lance.write_dataset(other.empty_table(), str(tmp_path / "db" / "documents.lance"), other)
    with pytest.raises(SchemaMismatchError, match="documents"):
        SnapshotStore(tmp_path / "db")
