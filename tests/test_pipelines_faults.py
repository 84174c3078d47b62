"""Faults on a real local Ray: a Condenser's worker process killed mid-ingestion loses and repeats no
document (Ray Data restarts the actor and retries its batches; the store's atomic put and the
Condenser's already-stored check do the rest), and running the job again has nothing left to do."""

from __future__ import annotations

import os
import signal

import pytest

from pipelines.config import IngestConfig
from pipelines.ingest import ingest
from snapshots import SnapshotStore

from ._pipelines_helpers import tiny_model, write_corpus

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_killing_a_condenser_process_loses_and_repeats_nothing(tmp_path):
    model = tiny_model(tmp_path / "model")
    ids = write_corpus(tmp_path / "corpus", 24, tokens=1500)
    config = IngestConfig(corpus=str(tmp_path / "corpus"), db=str(tmp_path / "db"), model=str(model), batch_size=2,
                          min_actors=2, max_actors=2, progress=False)  # fmt: skip
    killed: list[int] = []
    after_kill: list[dict] = []

    def kill_first_worker(rows: list[dict]) -> None:
        if not killed:  # the actor that finished first is busy with its next batch by now: kill its process
            killed.append(rows[0]["pid"])
            os.kill(rows[0]["pid"], signal.SIGKILL)
        else:
            after_kill.extend(rows)

    report = ingest(config, on_batch=kill_first_worker)
    assert killed and after_kill, "the kill happened before the last batch"
    assert not report.duplicates and report.n_failed == 0
    assert report.n_condensed + report.n_stored == 24  # 'stored': put before the kill, found by the retry
    assert {r["pid"] for r in after_kill} - set(killed), "a restarted actor went on with the work"
    store = SnapshotStore(tmp_path / "db")
    assert [i.doc_id for i in store.list()] == ids  # each document exactly once
    fingerprint = store.show(ids[0]).fingerprint
    for d in ids:
        assert store.get(d, fingerprint=fingerprint).n_tokens == 1500  # whole and readable

    again = ingest(config)
    assert (again.n_stored, again.n_condensed, again.n_skipped, again.ray_started) == (24, 0, 0, False)
