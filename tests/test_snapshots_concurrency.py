"""Two real processes write into one store at the same time: nothing is lost, nothing is doubled."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import torch

from beacon import Memory, WindowState
from snapshots import SnapshotStore

from ._snapshots_helpers import CONFIGS, REPO, assert_same_memory
from .conftest import load_tiny, tokens

N_DOCS = 6

_WRITER = """
import json, os, sys, time
from snapshots import ConcurrentUpdateError, SnapshotStore
from tests.conftest import load_tiny, tokens
from tests._snapshots_helpers import CONFIGS

path, who, barrier, n_docs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lm = load_tiny("qwen2", **CONFIGS["interleave"])
fp = lm.fingerprint()
seed0 = 100 if who == "A" else 200
memories = {f"{who}-{i}": lm.condense(tokens(20 + 3 * i, seed0 + i)) for i in range(n_docs)}
shared = lm.condense(tokens(29, seed0 + 50))
open(f"{barrier}/{who}", "w").close()
while not all(os.path.exists(f"{barrier}/{w}") for w in "AB"):  # start together
    time.sleep(0.001)
began = time.time()
SnapshotStore(path + "-fresh").put(who, shared, fingerprint=fp)  # both create the same new store
store = SnapshotStore(path)
for doc_id, memory in memories.items():
    store.put(doc_id, memory, fingerprint=fp)
store.put("shared", shared, fingerprint=fp)  # both replace one id
retries = 0
while True:  # both extend one document: compare-and-swap, so retry until ours lands
    try:
        store.append("grown", tokens(11, seed0 + 60), lm=lm)
        break
    except ConcurrentUpdateError:
        retries += 1
print(json.dumps({"began": began, "ended": time.time(), "retries": retries}))
"""


def test_two_processes_putting_at_once_lose_nothing(tmp_path):
    two_writers_lose_nothing(str(tmp_path / "db"), tmp_path)


def two_writers_lose_nothing(path: str, tmp_path, n_docs: int = N_DOCS) -> None:
    """Two writer processes at once on the store at `path` (a folder or an object-store URI; the
    processes inherit this one's environment): check that nothing is lost, nothing doubled."""
    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    base = lm.condense(tokens(23, 7))
    SnapshotStore(path).put("grown", base, fingerprint=fp)  # the document both will append to
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, path, who, str(barrier), str(n_docs)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for who in ("A", "B")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    runs = [json.loads(out) for out, _ in outs]
    assert max(r["began"] for r in runs) < min(r["ended"] for r in runs)  # they really wrote at the same time

    store = SnapshotStore(path)
    ids = [i.doc_id for i in store.list()]
    assert ids == sorted([f"{w}-{i}" for w in "AB" for i in range(n_docs)] + ["shared", "grown"])
    for who, seed0 in (("A", 100), ("B", 200)):
        for i in range(n_docs):
            want = lm.condense(tokens(20 + 3 * i, seed0 + i))
            assert_same_memory(store.get(f"{who}-{i}", fingerprint=fp), want)

    shared = store.get("shared", fingerprint=fp)  # one of the two whole versions
    candidates = [lm.condense(tokens(29, s + 50)) for s in (100, 200)]
    assert sum(torch.equal(shared.keys[0], c.keys[0]) for c in candidates) == 1

    grown = store.get("grown", fingerprint=fp)  # both appends landed, one after the other
    a, b = tokens(11, 160), tokens(11, 260)
    orders = [lm.condense(y, lm.condense(x, base.fork())) for x, y in ((a, b), (b, a))]
    assert grown.n_tokens == 45
    assert sum(_same(grown, o) for o in orders) == 1
    assert [p.n_tokens for p in store.show("grown").pieces] == [23, 11, 11]

    fresh = SnapshotStore(path + "-fresh")  # created by both at once: one made it, both wrote to it
    assert [i.doc_id for i in fresh.list()] == ["A", "B"]
    assert_same_memory(fresh.get("A", fingerprint=fp), candidates[0])

    store.optimize(grace_s=0)  # nothing dead is left behind, nothing live is lost
    assert store.stats().snapshot_rows == store.stats().live_rows
    assert_same_memory(store.get("A-0", fingerprint=fp), lm.condense(tokens(20, 100)))


def _same(a: Memory, b: Memory) -> bool:
    return a.state == b.state and all(
        torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values, strict=True)
    )


BATCH = 6
_BATCH_WRITER = """
import sys, torch
from beacon import Memory, WindowState
from snapshots import NewDocument, SnapshotStore
from tests.conftest import load_tiny
from tests._snapshots_helpers import CONFIGS
from tests.test_snapshots_concurrency import batch_memory

fp = load_tiny("qwen2", **CONFIGS["append"]).fingerprint()
store = SnapshotStore(sys.argv[1], max_row_bytes=1024)  # many rows per document
batch = int(sys.argv[2])
for b in range(1000):
    docs = [NewDocument(f"b{b:03d}-{j}", batch_memory(b, j), fp) for j in range(batch)]
    assert not any(isinstance(r, Exception) for r in store.put_many(docs))
    print(b, flush=True)
"""


def batch_memory(b: int, j: int) -> Memory:
    """Document j of batch b of _BATCH_WRITER: random keys and values, 2 layers, 20 + 7j entries."""
    n = 20 + 7 * j
    base = torch.randn(2, 1, 2, n, 16, generator=torch.Generator().manual_seed(1000 * b + j))
    keys = list(base.unbind(0))
    return Memory(keys, [k + 1 for k in keys], WindowState(n_tokens=1, n_beacons=n - 1, window_raw=1))


def test_readers_see_whole_batches_of_whole_documents_while_a_writer_puts_many(tmp_path):
    """A writer process puts batches of documents (put_many); a reader meanwhile sees only whole
    batches (their documents rows are one commit) of whole documents (rows before documents
    rows). Killed mid-batch, the writer leaves whole batches; optimize leaves no dead row."""
    fp = load_tiny("qwen2", **CONFIGS["append"]).fingerprint()
    path = tmp_path / "db"
    store = SnapshotStore(path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen(
        [sys.executable, "-c", _BATCH_WRITER, str(path), str(BATCH)], cwd=REPO, env=env, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "0"  # one batch is in
        rng, reads, seen = random.Random(0), 0, set()
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            ids = store.ids()
            assert len(ids) % BATCH == 0, ids  # whole batches
            seen.add(len(ids))
            for doc_id in rng.sample(ids, 2):  # whole documents
                b, j = (int(x) for x in doc_id[1:].split("-"))
                assert_same_memory(store.get(doc_id, fingerprint=fp), batch_memory(b, j))
                reads += 1
        assert len(seen) > 2 and reads > 10  # the reader really read while batches landed
        time.sleep(random.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)  # at a random moment of some batch
    finally:
        child.kill()
        child.wait()
    ids = store.ids()
    assert ids and len(ids) % BATCH == 0
    for doc_id in ids:
        b, j = (int(x) for x in doc_id[1:].split("-"))
        assert_same_memory(store.get(doc_id, fingerprint=fp), batch_memory(b, j))
    store.optimize(grace_s=0)
    assert store.stats().snapshot_rows == store.stats().live_rows
