"""Snapshot stores on object storage (`--db s3://bucket/prefix`) against a real S3 server: moto's, in
this process on a free port. Ingest, list, show, verify, qa and ask through the CLI with memories
equal to a local store's; a second ingest that does nothing, damage found and condensed again;
Lance's conditional-put commits and a staged lost race; a staged race of two creators of one
store; two writer processes at once; a writer killed mid-put and a rerun; unreachable endpoints,
missing buckets and stores, unknown schemes as one-line errors before Ray starts."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import unquote

import pytest
from click.testing import CliRunner

from beacon_actors.columns import DOCUMENTS, table
from beacon_actors.condenser import Condenser
from beacon_actors.tokenize import tokenize_documents
from beacon_cli.main import main as cli
from pipelines.cluster import RayOptions, ensure_ray
from pipelines.corpus import scan_corpus
from snapshots import SnapshotStore

from ._pipelines_helpers import REPO, assert_close_memory, free_port, tiny_model, write_corpus
from ._snapshots_helpers import CONFIGS
from .conftest import load_tiny, tokens
from .test_snapshots_concurrency import two_writers_lose_nothing

ray = pytest.importorskip("ray")
pytest.importorskip("moto", reason="the S3 server of these tests: pip install 'moto[server]' (the dev extra)")

BUCKET = "beacon"
N_DOCS = 4


class S3Server:
    """moto's S3 on 127.0.0.1:`port`, recording (method, key, If-None-Match, status) of every write.

    Requests are served one at a time: moto checks If-None-Match and then stores the object in two
    steps (moto/s3/responses.py: put_object), so two threads could both pass the check; S3 does the
    check and the write atomically, and a lock makes moto do the same. `hold` stages races.
    """

    def __init__(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        app, one_at_a_time = DomainDispatcherApplication(create_backend_app), threading.Lock()
        self.writes: list[tuple[str, str, str | None, int]] = []
        self._holds: list[Hold] = []

        def serve(environ, start_response):
            method, status = environ["REQUEST_METHOD"], []
            key = environ["PATH_INFO"].removeprefix(f"/{BUCKET}").removeprefix("/")
            conditional = environ.get("HTTP_IF_NONE_MATCH")
            target = f"{key}?{unquote(environ.get('QUERY_STRING', ''))}"  # a listing names its prefix in the query
            for hold in list(self._holds):
                hold.wait_if(method, target)

            def record(s, headers, *exc_info):
                status.append(int(s.split()[0]))
                return start_response(s, headers, *exc_info)

            with one_at_a_time:
                out = app(environ, record)
                if method in ("PUT", "POST", "DELETE"):
                    self.writes.append((method, key, conditional, status[0]))
            return out

        self.server = make_server("127.0.0.1", free_port(), serve, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self, method: str, prefix: str, nth: int = 1) -> Hold:
        """Hold the `nth` `method` request (from now on) for a key or listing under `prefix` until released."""
        hold = Hold(method, prefix, nth)
        self._holds.append(hold)
        return hold

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing")  # fmt: skip


class Hold:
    """One request held by S3Server.hold: `held` is set while it waits, `release()` lets it go."""

    def __init__(self, method: str, prefix: str, nth: int):
        self.method, self.prefix, self.left = method, prefix, nth
        self.held, self._go, self._lock = threading.Event(), threading.Event(), threading.Lock()

    def wait_if(self, method: str, target: str) -> None:
        with self._lock:
            if self.left == 0 or method != self.method or not target.startswith(self.prefix):
                return
            self.left -= 1
            if self.left:
                return
        self.held.set()
        self._go.wait(timeout=60)

    def release(self) -> None:
        self._go.set()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server with bucket BUCKET, and this process's environment pointing Lance (and the Ray
    workers and subprocesses started from here, which inherit it) at it."""
    server = S3Server()
    server.client().create_bucket(Bucket=BUCKET)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", server.endpoint)
        mp.setenv("AWS_ALLOW_HTTP", "true")  # the server speaks plain http
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))  # the fingerprint cache of URI stores
        yield server
    server.server.shutdown()


@pytest.fixture(scope="module")
def local_ray(s3):
    """Ray for this module, started after `s3`: its workers inherit the environment. Quiet, so that
    the CLI's --json output is all there is on stdout."""
    ensure_ray(RayOptions(num_cpus=2, include_dashboard=False, log_to_driver=False, quiet=True))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "qwen2")


@pytest.fixture(scope="module")
def stores(s3, local_ray, model, tmp_path_factory):
    """The same corpus ingested into s3://BUCKET/store (through the CLI, on Ray) and into a local
    folder (by ingestion's writer, the Condenser, here: the same bytes, without a second Ray job)."""
    root = tmp_path_factory.mktemp("stores")
    ids = write_corpus(root / "corpus", N_DOCS, tokens=200)
    uri = f"s3://{BUCKET}/store"
    out = CliRunner().invoke(cli, ["ingest", str(root / "corpus"), "--db", uri, "--model", str(model),
                                   "--no-progress", "--json"])  # fmt: skip
    written = Condenser(str(model), str(root / "db"))(tokenized(root / "corpus", model))
    assert written.column("status").to_pylist() == ["condensed"] * N_DOCS
    return {"ids": ids, "uri": uri, "local": str(root / "db"), "corpus": str(root / "corpus"), "ingest": out}


def tokenized(corpus, model):
    """The corpus's documents with their token ids, as ingestion hands them to a Condenser."""
    rows = table(scan_corpus(corpus).documents, DOCUMENTS)
    return tokenize_documents(rows, tokenizer=str(model))


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_ingest_list_show_verify_qa_ask_on_s3_equal_a_local_store(stores, model, s3, tmp_path):
    out, uri, ids = stores["ingest"], stores["uri"], stores["ids"]
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["condensed"] == ids and report["n_failed"] == 0 and report["db"] == uri
    keys = {k for _, k, _, _ in s3.writes}
    assert any(k.startswith("store/snapshots.lance/data/") for k in keys)  # the bytes went to the bucket
    assert any(k.startswith("store/search.lance/") for k in keys)

    listed = json.loads(run("snapshots", "list", "--db", uri, "--json").output)
    assert [d["doc_id"] for d in listed] == ids
    shown = json.loads(run("snapshots", "show", ids[1], "--db", uri).output)
    assert shown["doc_id"] == ids[1] and shown["n_tokens"] == 200
    out = run("snapshots", "verify", "--db", uri)
    assert out.exit_code == 0 and f"{N_DOCS} documents checked, 0 damaged" in out.output, out.output

    s3_store, local_store = SnapshotStore(uri), SnapshotStore(stores["local"])
    fp = local_store.show(ids[0]).fingerprint
    for d in ids:  # what comes back from S3 is what a local store of the same corpus holds
        assert_close_memory(s3_store.get(d, fingerprint=fp), local_store.get(d, fingerprint=fp))

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "searched", "question": "What is KEY_002?"}\n'
                         f'{{"id": "named", "question": "What is KEY_001?", "doc_ids": ["{ids[1]}"]}}\n')  # fmt: skip
    common = ["--db", uri, "--model", str(model), "--max-new-tokens", "4"]
    out = run("qa", str(questions), "-o", str(tmp_path / "a.jsonl"), *common, "--no-progress")
    assert out.exit_code == 0 and "2 answered, 0 failed" in out.output, out.output
    answers = {a["question_id"]: a for a in map(json.loads, (tmp_path / "a.jsonl").read_text().splitlines())}
    assert answers["named"]["doc_ids"] == [ids[1]] and answers["searched"]["doc_ids"] == [ids[2]]  # search on S3
    out = run("ask", "What is KEY_001?", "--doc-id", ids[1], *common, "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["answer"] == answers["named"]["answer"]
    out = run("ask", "What is KEY_001?", "--doc-id", ids[1], *common[2:], "--db", stores["local"], "--json")
    assert json.loads(out.output)["answer"] == answers["named"]["answer"]  # and the local store answers the same


def test_a_second_ingest_does_nothing_and_damage_is_found_and_repaired(stores, model, s3):
    uri, ids = stores["uri"], stores["ids"]
    again = json.loads(run("ingest", stores["corpus"], "--db", uri, "--model", str(model), "--json").output)
    assert (again["n_stored"], again["n_condensed"], again["ray_started"]) == (N_DOCS, 0, False)

    store = SnapshotStore(uri)
    with store.tables.snapshot_view() as view:  # flip one bit of a row's bytes in its S3 object
        (row,) = view.rows(f"doc_id = '{ids[3]}' AND row = 0", ["row"])
    fragment = store.tables.open("snapshots").get_fragment(row["_rowaddr"] >> 32)
    (data_file,) = fragment.data_files()
    key, client = f"store/snapshots.lance/data/{data_file.path}", s3.client()
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[row["_blob"]["position"] + 3] ^= 0x10
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    out = run("snapshots", "verify", "--db", uri)
    assert out.exit_code == 3 and f"{ids[3]}: CorruptSnapshotError" in out.output, out.output

    # what `ingest --repair` then has its actors do (its driver's part is the store's verify, above;
    # the whole command is tested locally in test_reliability_ray): condense the damaged one again
    done = Condenser(str(model), uri, replace_ids=[ids[3]])(tokenized(stores["corpus"], model)).to_pylist()
    assert {r["doc_id"]: r["status"] for r in done} == {d: "condensed" if d == ids[3] else "stored" for d in ids}
    assert run("snapshots", "verify", "--db", uri).exit_code == 0
    fp = store.show(ids[3]).fingerprint
    local = SnapshotStore(stores["local"])
    assert_close_memory(store.get(ids[3], fingerprint=fp), local.get(ids[3], fingerprint=fp))


def test_lance_commits_with_conditional_puts_and_a_lost_race_is_retried(s3):
    """Lance 14 commits a table version by writing its manifest with `If-None-Match: *` (no lock,
    no DynamoDB): of two writers committing one version, the server refuses the second (412), which
    then commits on top of the first; both appends stand."""
    import lance
    import pyarrow as pa

    uri, prefix = f"s3://{BUCKET}/race/t.lance", "race/t.lance/_versions/"
    lance.write_dataset(pa.table({"a": [0]}), uri)
    hold = s3.hold("PUT", prefix)  # the next commit
    first = threading.Thread(target=lance.write_dataset, args=(pa.table({"a": [1]}), uri), kwargs={"mode": "append"})
    first.start()
    assert hold.held.wait(timeout=60), "the first writer never committed"
    lance.write_dataset(pa.table({"a": [2]}), uri, mode="append")  # read the same version: commits it first
    hold.release()
    first.join(timeout=60)
    assert sorted(lance.dataset(uri).to_table()["a"].to_pylist()) == [0, 1, 2]  # nothing lost
    commits = [(status, inm) for _, k, inm, status in s3.writes if k.startswith(prefix)]
    assert {inm for _, inm in commits} == {"*"}  # every commit is a conditional put
    assert sorted(status for status, _ in commits) == [200, 200, 200, 412]  # versions 1-3, one refused


def test_two_writers_creating_one_store_lose_nothing(s3):
    """Lance commits a create that finds its table made meanwhile as an overwrite on top of it; a
    store's tables are created so that it fails instead (tables.create_empty_table). Staged: the
    second creator is held after finding no table, while the first creates the store and puts."""
    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp, memory = lm.fingerprint(), lm.condense(tokens(20, 1))
    uri = f"s3://{BUCKET}/created-twice"
    # the late creator's listings of the documents table: opening it, write_dataset's check, its commit
    hold = s3.hold("GET", "?list-type=2&prefix=created-twice/documents.lance/_versions/", nth=3)
    late: dict = {}
    creator = threading.Thread(target=lambda: late.setdefault("store", SnapshotStore(uri)))
    creator.start()
    assert hold.held.wait(timeout=60), "the late creator never committed its table (did Lance's requests change?)"
    SnapshotStore(uri).put("first", memory, fingerprint=fp)
    hold.release()
    creator.join(timeout=60)
    late["store"].put("late", memory, fingerprint=fp)
    assert [i.doc_id for i in SnapshotStore(uri).list()] == ["first", "late"]


def test_two_writer_processes_on_s3_lose_nothing(s3, tmp_path):
    two_writers_lose_nothing(f"s3://{BUCKET}/concurrent", tmp_path, n_docs=2)


_KILLED_WRITER = """
import sys
from beacon_actors.columns import DOCUMENTS, table
from beacon_actors.condenser import Condenser
from beacon_actors.tokenize import tokenize_documents
from pipelines.corpus import scan_corpus

corpus, db, model = sys.argv[1:4]  # ingestion's own writer, the Condenser, without Ray: one document per put
rows = tokenize_documents(table(scan_corpus(corpus).documents, DOCUMENTS), tokenizer=model)
writer = Condenser(model, db, batch_size=1, return_text=False)
for i in range(rows.num_rows):
    print("put", flush=True)
    writer(rows.slice(i, 1))
"""


def test_a_writer_killed_mid_ingest_leaves_whole_documents_and_a_rerun_completes(stores, model, s3):
    uri, ids = f"s3://{BUCKET}/killed", stores["ids"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, stores["corpus"], uri, str(model)], cwd=REPO,
                             env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert child.stdout.readline() == "put\n" and child.stdout.readline() == "put\n"  # the second put began
    time.sleep(random.uniform(0.0, 0.3))
    child.send_signal(signal.SIGKILL)
    child.wait()

    store = SnapshotStore(uri)
    kept = [i.doc_id for i in store.list()]
    assert kept and set(kept) <= set(ids)  # the first put finished before the second began
    assert store.verify() == {}  # every document listed is whole; one cut off mid-put is not listed
    # the same writer again (a Ray ingest runs it on actors: test_a_second_ingest_... covers the driver's side)
    rerun = Condenser(str(model), uri, batch_size=1)(tokenized(stores["corpus"], model)).to_pylist()
    status = {r["doc_id"]: r["status"] for r in rerun}
    assert status == {d: "stored" if d in kept else "condensed" for d in ids}
    local = SnapshotStore(stores["local"])
    fp = local.show(ids[0]).fingerprint
    assert [i.doc_id for i in store.list()] == ids
    for d in ids:
        assert_close_memory(store.get(d, fingerprint=fp), local.get(d, fingerprint=fp))


def test_unreachable_endpoint_or_missing_bucket_is_one_line_before_ray(s3, model, tmp_path, monkeypatch):
    def no_ray(*_args, **_kwargs):
        raise AssertionError("Ray started for a store that cannot be reached")

    for where in ("pipelines.ingest.ensure_ray", "pipelines.answer.ensure_ray", "pipelines.cluster.ensure_ray"):
        monkeypatch.setattr(where, no_ray)
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 1, tokens=60)
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "x?"}\n')
    missing, empty = "s3://no-such-bucket/p", f"s3://{BUCKET}/nothing-here"
    cases = [
        (["ingest", str(corpus), "--model", str(model)], missing, "bucket 'no-such-bucket' does not exist"),
        (["serve", "--model", str(model)], missing, "bucket 'no-such-bucket' does not exist"),
        (["snapshots", "show", "x"], empty, "no snapshot store at"),  # the bucket is there, the store is not
        (["ask", "x?", "--model", str(model)], empty, "no snapshot store at"),
    ]
    for args, uri, says in cases:
        out = run(*args, "--db", uri)
        assert out.exit_code == 1 and says in out.output and uri in out.output, (args, out.output)
        assert out.output.strip().count("\n") == 0 and "Traceback" not in out.output, out.output
    assert not any(k.startswith("nothing-here/") for _, k, _, _ in s3.writes)  # asking created no store
    out = run("snapshots", "list", "--db", "nosuch://bucket/p")
    assert out.exit_code == 1 and "Lance knows no object store for nosuch://" in out.output, out.output
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    out = run("snapshots", "list", "--db", f"s3://{BUCKET}/store")
    assert out.exit_code == 1 and "is plain http: set AWS_ALLOW_HTTP=true" in out.output, out.output
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    out = run("qa", str(questions), "--model", str(model), "--db", f"s3://{BUCKET}/store")
    assert out.exit_code == 1 and "does not answer" in out.output and f"s3://{BUCKET}/store" in out.output, out.output
    assert out.output.strip().count("\n") == 0 and "Traceback" not in out.output
