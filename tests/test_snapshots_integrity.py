"""Damaged bytes are detected and never used; failed and crashed puts lose nothing already stored."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import pyarrow as pa
import pytest
import torch

from snapshots import CorruptSnapshotError, SnapshotStore

from ._snapshots_helpers import CONFIGS, REPO, assert_same_memory
from .conftest import load_tiny, tokens


@pytest.fixture
def stored(tmp_path):
    """(store, lm, memory) with one document "doc" stored in rows of at most 300 bytes."""
    lm = load_tiny("qwen2", **CONFIGS["append"])
    store = SnapshotStore(tmp_path / "db", max_row_bytes=300)
    memory = lm.condense(tokens(37, 1))
    store.put("doc", memory, fingerprint=lm.fingerprint())
    return store, lm, memory


def _data_files(store: SnapshotStore) -> list[Path]:
    return sorted((store.path / "snapshots.lance" / "data").glob("*.lance"))


def test_a_flipped_byte_is_reported_and_never_used(stored):
    store, lm, memory = stored
    needle = memory.keys[1][0, 1, 3].numpy().tobytes()  # 64 bytes inside one row's data
    for path in _data_files(store):
        blob = bytearray(path.read_bytes())
        at = blob.find(needle)
        if at >= 0:
            blob[at + 5] ^= 0x01
            path.write_bytes(blob)
            break
    else:
        raise AssertionError("row bytes not found in the data files")
    with pytest.raises(CorruptSnapshotError, match=r"document 'doc' row \d+ .*keys, layers 1:2.*fails its checksum"):
        store.get("doc", fingerprint=lm.fingerprint())
    with pytest.raises(CorruptSnapshotError):
        store.append("doc", tokens(5, 2), lm=lm)
    assert store.show("doc").n_tokens == 37  # the failed append changed nothing


def test_a_truncated_data_file_is_reported(stored):
    store, lm, _ = stored
    (path,) = _data_files(store)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CorruptSnapshotError, match="document 'doc'"):
        store.get("doc", fingerprint=lm.fingerprint())


def test_a_short_row_is_reported(stored):
    """A row whose blob lost its tail but whose header still claims the full size."""
    store, lm, _ = stored
    uri = str(store.path / "snapshots.lance")
    ds = lance.dataset(uri)
    columns = [n for n in ds.schema.names if n != "data"]
    row = ds.to_table(columns=columns, filter="row = 3", with_row_id=True).to_pylist()[0]
    row["data"] = ds.take_blobs("data", ids=[row.pop("_rowid")])[0].readall()[:-8]
    lance.dataset(uri).delete("row = 3")
    lance.write_dataset(pa.Table.from_pylist([row], schema=lance.dataset(uri).schema), uri, mode="append")
    with pytest.raises(CorruptSnapshotError, match=r"row 3 .* holds \d+ bytes, its header says \d+"):
        store.get("doc", fingerprint=lm.fingerprint())


@pytest.mark.parametrize("damage", ["short", "flipped"])
def test_damaged_fp8_scales_are_reported(tmp_path, damage):
    """fp8 scales are read apart from the data (store.get reads them beside it); a row whose scales
    lost bytes or had one flipped is reported, in a load to host and in a background load."""
    lm = load_tiny("qwen2", **CONFIGS["append"])
    store = SnapshotStore(tmp_path / "db", max_row_bytes=300)
    store.put("doc", lm.condense(tokens(37, 1)), fingerprint=lm.fingerprint(), store_dtype="float8_e4m3fn")
    uri = str(store.path / "snapshots.lance")
    ds = lance.dataset(uri)
    columns = [n for n in ds.schema.names if n != "data"]
    row = ds.to_table(columns=columns, filter="row = 3", with_row_id=True).to_pylist()[0]
    row["data"] = ds.take_blobs("data", ids=[row.pop("_rowid")])[0].readall()
    scale = bytearray(row["scale"])
    if damage == "short":
        del scale[-4:]
    else:
        scale[1] ^= 0x10
    row["scale"] = bytes(scale)
    lance.dataset(uri).delete("row = 3")
    lance.write_dataset(pa.Table.from_pylist([row], schema=lance.dataset(uri).schema), uri, mode="append")
    message = r"row 3 .* bytes of fp8 scales" if damage == "short" else r"row 3 .* fails its checksum"
    with pytest.raises(CorruptSnapshotError, match=message):
        store.get("doc", fingerprint=lm.fingerprint())
    with pytest.raises(CorruptSnapshotError, match=message):
        store.get("doc", fingerprint=lm.fingerprint(), background=True).ready()


def test_missing_rows_and_a_damaged_documents_row_are_reported(stored):
    store, lm, memory = stored
    lance.dataset(str(store.path / "snapshots.lance")).delete("row = 2")
    with pytest.raises(CorruptSnapshotError, match="no stored row holds .* rows are missing"):
        store.get("doc", fingerprint=lm.fingerprint())
    lance.dataset(str(store.path / "documents.lance")).update({"n_rows": "n_rows + 1"})
    with pytest.raises(CorruptSnapshotError, match="documents row fails its checksum"):
        store.show("doc")
    with pytest.raises(CorruptSnapshotError):
        store.get("doc", fingerprint=lm.fingerprint())
    store.put("doc", memory, fingerprint=lm.fingerprint())  # a damaged document can be replaced...
    assert_same_memory(store.get("doc", fingerprint=lm.fingerprint()), memory)
    store.put("other", memory, fingerprint=lm.fingerprint())
    lance.dataset(str(store.path / "documents.lance")).update({"n_rows": "n_rows + 1"}, where="doc_id = 'other'")
    assert store.delete("other")  # ... or deleted
    assert [i.doc_id for i in store.list()] == ["doc"]
    assert store.stats().snapshot_rows == store.show("doc").n_rows


def test_rows_of_an_uncommitted_write_are_invisible_and_optimize_removes_them(stored):
    """What a put that died between writing its rows and committing leaves behind."""
    store, lm, memory = stored
    other = lm.condense(tokens(50, 7))
    before = store.show("doc")
    store._write_rows("doc", "crashed", other, [(0, other.state.size)], "float32", before.updated_at)
    store._write_rows("new-doc", "crashed-too", other, [(0, other.state.size)], "float32", before.updated_at)
    assert_same_memory(store.get("doc", fingerprint=lm.fingerprint()), memory)
    assert [i.doc_id for i in store.list()] == ["doc"]
    report = store.optimize()  # an hour of grace: could still be a running put
    assert report.generations_in_flight == 2 and report.rows_deleted == 0
    report = store.optimize(grace_s=0)
    assert report.generations_deleted == 2
    assert store.stats().snapshot_rows == before.n_rows
    assert_same_memory(store.get("doc", fingerprint=lm.fingerprint()), memory)


def test_a_failed_put_keeps_what_was_stored(stored):
    store, lm, memory = stored
    broken = lm.condense(tokens(50, 3))
    broken.values[1][0, 0, -1, 0] = float("nan")  # found only when its row is encoded, mid-write
    for doc_id in ("doc", "other"):
        with pytest.raises(ValueError, match="NaN or Inf"):
            store.put(doc_id, broken, fingerprint=lm.fingerprint())
    assert_same_memory(store.get("doc", fingerprint=lm.fingerprint()), memory)
    assert [i.doc_id for i in store.list()] == ["doc"]
    store.optimize(grace_s=0)
    assert store.stats().snapshot_rows == store.show("doc").n_rows


_CRASHING_WRITER = """
import sys, torch
from beacon import Memory, WindowState
from snapshots import SnapshotStore
from tests.conftest import load_tiny
from tests._snapshots_helpers import CONFIGS

fp = load_tiny("qwen2", **CONFIGS["append"]).fingerprint()
store = SnapshotStore(sys.argv[1], max_row_bytes=1 << 20)
n = 200_000  # entries: K,V x 2 layers x 2 heads x 16 dims x 4 bytes = 51 MB, 50 rows
base = torch.randn(2, 1, 2, n, 16, generator=torch.Generator().manual_seed(0))
for version in range(1, 1000):
    keys = list((base + version).unbind(0))
    memory = Memory(keys, [k.clone() for k in keys], WindowState(n_tokens=1, n_beacons=n - 1, window_raw=1))
    print(version, flush=True)
    store.put("doc", memory, fingerprint=fp)
"""


def test_a_writer_killed_mid_put_leaves_an_old_or_new_whole_document(tmp_path):
    store = SnapshotStore(tmp_path / "db")
    fp = load_tiny("qwen2", **CONFIGS["append"]).fingerprint()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(store.path)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    versions = [int(child.stdout.readline()), int(child.stdout.readline())]  # version 2 is replacing version 1
    time.sleep(random.uniform(0.0, 0.3))
    child.send_signal(signal.SIGKILL)
    child.wait()
    versions += [int(v) for v in child.stdout.read().split()]
    assert [d.doc_id for d in store.list()] == ["doc"]
    got = store.get("doc", fingerprint=fp)  # whole, checked: some version that was put
    base = torch.randn(2, 1, 2, 200_000, 16, generator=torch.Generator().manual_seed(0))
    version = round(float((got.keys[1] - base[1]).mean()))
    assert version in versions
    for i in range(2):
        assert torch.equal(got.keys[i], base[i] + version) and torch.equal(got.values[i], base[i] + version)
    store.optimize(grace_s=0)
    assert store.stats().snapshot_rows == store.show("doc").n_rows
