"""`ray job submit` on a real `ray start --head` cluster (its job server runs in the dashboard, on
127.0.0.1): an ingest job and a QA job write what they should; an ingest job stopped mid-way and
submitted again finishes the rest, every document stored exactly once."""

from __future__ import annotations

import json
import time

import pytest

from snapshots import SnapshotStore

from ._pipelines_helpers import REPO, HeadNode, tiny_model, write_corpus

pytest.importorskip("ray")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def head():
    node = HeadNode(num_cpus=3, dashboard=True)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def client(head):
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 60
    while True:  # the job server comes up a little after the head
        try:
            return JobSubmissionClient(head.dashboard_url)
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "qwen2", max_positions=65536)  # the sample's memories


def submit(client, module: str, *args: str) -> str:
    """Submit `python -m module args` with the repository as working directory, as the docs do."""
    deadline = time.time() + 90
    while True:
        try:
            return client.submit_job(
                entrypoint=" ".join(["python", "-m", module, *args]),
                runtime_env={"working_dir": str(REPO), "excludes": [".git", "tests/fixtures", "docs/results"]},
            )
        except RuntimeError as err:  # the job server answers before its agent is up on a busy machine
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(1)


def wait(client, job_id: str, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(0.5)
    client.stop_job(job_id)
    raise AssertionError(f"job {job_id} still running after {timeout} s:\n{client.get_job_logs(job_id)[-3000:]}")


def report_of(client, job_id: str) -> dict:
    """The JSON report a job printed last (worker output such as progress bars may follow it)."""
    logs = client.get_job_logs(job_id)
    report, _ = json.JSONDecoder().raw_decode(logs, logs.rindex("\n{\n") + 1)
    return report


def test_ingest_and_answer_jobs_write_what_they_should(client, model, tmp_path):
    db, answers = tmp_path / "db", tmp_path / "answers.jsonl"
    job = submit(client, "jobs.ingest", "data/sample/corpus", "--db", str(db), "--model", str(model), "--no-progress")
    assert wait(client, job) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    assert report_of(client, job)["n_condensed"] == 5
    assert len(SnapshotStore(db).list()) == 5
    job = submit(client, "jobs.answer", "data/sample/questions.jsonl", "--output", str(answers), "--db", str(db),
                 "--model", str(model), "--max-new-tokens", "4", "--no-progress")  # fmt: skip
    assert wait(client, job) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    rows = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(rows) == 6 and all(r["error"] is None and r["n_new_tokens"] >= 1 for r in rows)
    assert report_of(client, job)["n_answered"] == 6


def test_a_stopped_ingest_job_resubmitted_finishes_the_rest(client, model, tmp_path):
    ids = write_corpus(tmp_path / "corpus", 30, tokens=2000)
    args = [str(tmp_path / "corpus"), "--db", str(tmp_path / "db"), "--model", str(model), "--batch-size", "1"]
    job = submit(client, "jobs.ingest", *args, "--no-progress")
    store = SnapshotStore(tmp_path / "db")
    deadline = time.time() + 180
    while len(store.list()) < 3:
        assert time.time() < deadline and str(client.get_job_status(job).value) not in TERMINAL, client.get_job_logs(
            job
        )[-3000:]
        time.sleep(0.2)
    client.stop_job(job)
    assert wait(client, job) == "STOPPED"
    done = len(store.list())
    assert 3 <= done < 30, "stopped mid-way"
    job = submit(client, "jobs.ingest", *args, "--no-progress")
    assert wait(client, job) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    report = report_of(client, job)
    # stored before the stop: skipped up front, or (if the stopped driver never saw them) found stored by an actor
    assert report["n_skipped"] + report["n_stored"] >= done and report["n_condensed"] <= 30 - done
    assert report["n_skipped"] + report["n_stored"] + report["n_condensed"] == 30
    assert [i.doc_id for i in store.list()] == ids  # every document, exactly once
    fingerprint = store.show(ids[0]).fingerprint
    assert all(store.get(d, fingerprint=fingerprint).n_tokens == 2000 for d in ids)
