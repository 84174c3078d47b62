"""`beacon serve`: the batcher in-process (batched rows = each answered alone), then one real server
per module — `beacon serve` in a child process (embedded Ray, Ray Serve, a real LanceDB store, a
tiny random model) — answered through the official `openai` client and plain HTTP."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch

import beacon
from beacon_actors.batcher import STEP_RESERVE, Batcher, Job, Overloaded, Sampling
from beacon_actors.columns import DOCUMENTS, table
from beacon_actors.condenser import Condenser
from beacon_actors.generation import greedy_answer
from beacon_actors.text import question_ids, stop_ids
from beacon_actors.tokenize import tokenize_documents
from pipelines.openai_api import TextStream
from pipelines.serve_config import DEPLOYMENT, INGRESS, ROUTER, ServeConfig, serve_config
from pipelines.serve_router import rendezvous_order
from snapshots import SnapshotStore
from snapshots.records import text_digest
from snapshots.search import SearchIndex

from ._pipelines_helpers import REPO, free_port, tiny_model

KEY = "test-key-0123"
REPLICA_HEADER = "x-beacon-replica"  # the BeaconServer replica that answered
SERVER_LOG: list[Path] = []  # the module's server's output (its metrics address)
TEXTS = {
    "alpha.md": "# Alpha\n\nORBIT_CEDAR = 'amber'\n" + "alpha notes on the orbit " * 6,
    "beta.md": "# Beta\n\nRIVER_STONE = 'birch'\n" + "beta survey of the river " * 7,
    "gamma.md": "# Gamma\n\nGLACIER_MOSS = 'cabin'\n" + "gamma glacier moss " * 5,
    "broken.md": "# Broken\n\nsome text that will be damaged " * 3,
}


def _ingest(model: Path, db: Path) -> None:
    rows = [{"doc_id": d, "text": t, "title": d, "text_sha256": text_digest(t, d)} for d, t in TEXTS.items()]
    Condenser(str(model), str(db))(tokenize_documents(table(rows, DOCUMENTS), tokenizer=str(model)))
    SearchIndex(db).upsert(rows)
    from .test_snapshots_store import _flip_a_byte

    _flip_a_byte(SnapshotStore(db), "doc_id = 'broken.md' AND row = 0", offset=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = tiny_model(root / "qwen2")
    config = json.loads((model / "config.json").read_text())  # room for long answers (the overload test's)
    (model / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 65536}))
    _ingest(model, root / "db")
    lm = beacon.load(model)
    return model, root / "db", lm


def _expected(lm, db, doc_ids, question, max_tokens):
    memory = SnapshotStore(db).get(doc_ids, fingerprint=lm.fingerprint())
    stops = stop_ids(lm)
    return greedy_answer(lm, question_ids(lm.tokenizer, question), memory, max_new_tokens=max_tokens, stops=stops)


# ---- the batcher, in this process ------------------------------------------------------------------
def _collect(events: queue.Queue) -> tuple[list[int], str, dict]:
    tokens, start = [], {}
    while True:
        kind, value = events.get(timeout=60)
        if kind == "start":
            start = value
        elif kind == "token":
            tokens.append(value)
        elif kind == "error":
            raise value
        else:
            return tokens, value, start


def test_batched_rows_answer_as_each_alone(setup):
    model, db, lm = setup
    questions = ["orbit?", "cedar?", "amber?", "long question here?"]  # 3 of one length, one longer
    batcher = Batcher(lm, SnapshotStore(db), stops=stop_ids(lm), max_batch=4, start=False)
    outs = []
    for q in questions:
        events = queue.Queue()
        batcher.submit(Job(("alpha.md",), question_ids(lm.tokenizer, q), Sampling(max_tokens=24),
                           lambda k, v, e=events: e.put((k, v))))  # fmt: skip
        outs.append(events)
    seeded = queue.Queue()  # sampling: the same seed gives the same answer, batched or alone
    batcher.submit(Job(("alpha.md",), question_ids(lm.tokenizer, "orbit?"), Sampling(24, 1.0, 0.9, seed=5),
                       lambda k, v: seeded.put((k, v))))  # fmt: skip
    batcher.start()
    try:
        results = [_collect(e) for e in outs]
        sampled = _collect(seeded)[0]
        assert [r[2]["batch"] for r in results] == [4, 4, 4, 1]  # equal lengths share a group (seeded one too)
        for q, (tokens, finish, _) in zip(questions, results, strict=True):
            want = _expected(lm, db, ["alpha.md"], q, 24)
            assert tokens == want.token_ids and finish in ("stop", "length")
        alone = queue.Queue()
        batcher.submit(Job(("alpha.md",), question_ids(lm.tokenizer, "orbit?"), Sampling(24, 1.0, 0.9, seed=5),
                           lambda k, v: alone.put((k, v))))  # fmt: skip
        tokens, _, start = _collect(alone)
        assert start["batch"] == 1 and start["cache_hit"] and tokens == sampled
        assert batcher.stats["max_group_rows"] == 4 and batcher.held() == 0
    finally:
        batcher.close()


def test_a_question_past_the_models_positions_is_refused_and_its_group_mates_answer(setup):
    """The positions rule (windows.check_answer_room) is the batcher's, so `beacon qa` refuses what
    `beacon serve` refuses: an answer of up to 140,000 tokens at ratio 2 needs more than 65,536
    positions; the question beside it (same memory, same prompt length) answers as alone."""
    _, db, lm = setup
    batcher = Batcher(lm, SnapshotStore(db), stops=stop_ids(lm), max_batch=4, start=False)
    long, short = queue.Queue(), queue.Queue()
    prompt = question_ids(lm.tokenizer, "orbit?")
    batcher.submit(Job(("alpha.md",), prompt, Sampling(max_tokens=140_000), lambda k, v: long.put((k, v))))
    batcher.submit(Job(("alpha.md",), prompt, Sampling(max_tokens=8), lambda k, v: short.put((k, v))))
    batcher.start()
    try:
        with pytest.raises(ValueError, match="over this model's limit of 65536 positions"):
            _collect(long)
        tokens, _, start = _collect(short)
        assert start["batch"] == 1 and tokens == _expected(lm, db, ["alpha.md"], "orbit?", 8).token_ids
        assert batcher.stats["errors"] == 1 and batcher.held() == 0
    finally:
        batcher.close()


@pytest.mark.parametrize("lanes", [0, 3], ids=["own-buffers", "lanes"])
def test_groups_over_different_documents_step_together_and_answer_as_each_alone(setup, lanes):
    """Groups over four memories answer as each alone, in one pass a token; with 3 lanes, three
    groups decode in an arena's lanes and the fourth beside them, and the lanes come back."""
    model, db, lm = setup
    own = beacon.load(model) if lanes else lm  # lanes change the model's buffer pool: not the module's model
    asks = [(("alpha.md",), "orbit?"), (("beta.md",), "river stone?"), (("gamma.md",), "moss?"),
            (("beta.md", "alpha.md"), "which?")]  # fmt: skip
    # no stops: every answer runs 20 tokens
    batcher = Batcher(own, SnapshotStore(db), stops=[], max_batch=4, lanes=lanes, lane_slots=1024, start=False)
    arena = own.decode_buffers.lanes
    outs = []
    for doc_ids, q in asks:
        events = queue.Queue()
        batcher.submit(Job(doc_ids, question_ids(lm.tokenizer, q), Sampling(max_tokens=20),
                           lambda k, v, e=events: e.put((k, v))))  # fmt: skip
        outs.append(events)
    batcher.start()
    try:
        for (doc_ids, q), events in zip(asks, outs, strict=True):
            tokens, finish, start = _collect(events)
            memory = SnapshotStore(db).get(list(doc_ids), fingerprint=lm.fingerprint())
            want = greedy_answer(lm, question_ids(lm.tokenizer, q), memory, max_new_tokens=20, stops=[])
            assert tokens == want.token_ids and finish == "length" and start["batch"] == 1, (doc_ids, q)
        stats = batcher.stats
        assert stats["groups"] == 4 and stats["max_rows_per_pass"] == 4, stats  # four memories in one pass
        assert stats["passes"] < stats["steps"] / 2, stats  # not one pass per group per token
        assert stats["lane_steps"] >= (3 * 10 if lanes else 0), stats
        assert (stats["lane_steps"] == 0) == (not lanes), stats
    finally:
        batcher.close()
    if lanes:  # every lane back; the arena goes with the batcher
        assert arena.busy == 0 and own.decode_buffers.lanes is None


def test_a_batcher_loop_that_fails_ends_every_job_with_its_error(setup, monkeypatch):
    _, db, lm = setup
    batcher = Batcher(lm, SnapshotStore(db), stops=[], start=False)
    monkeypatch.setattr(batcher, "_step_all", lambda: (_ for _ in ()).throw(RuntimeError("device fault (injected)")))
    events = [queue.Queue() for _ in range(2)]
    for e in events:
        batcher.submit(Job(("alpha.md",), [5, 6], Sampling(max_tokens=8), lambda k, v, e=e: e.put((k, v))))
    batcher.start()
    for e in events:
        with pytest.raises(RuntimeError, match="device fault"):
            _collect(e)
    batcher._thread.join(timeout=30)
    assert not batcher.alive and batcher.held() == 0
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(Job(("alpha.md",), [5], Sampling(), lambda k, v: None))


def test_a_group_without_device_room_waits_for_the_running_ones(setup, monkeypatch):
    _, db, lm = setup
    batcher = Batcher(lm, SnapshotStore(db), stops=[], start=False)
    memory = SnapshotStore(db).get(["alpha.md"], fingerprint=lm.fingerprint())
    need = batcher.decoder_bytes(memory, 1)
    dec = lm.decoder(memory.share())  # the estimate bounds what a decoder really allocates
    dec.read(torch.tensor([[5, 6]], device=lm.device))
    buffers = dec._buf.k_rot + dec._buf.values + dec._buf.k_win
    assert 0.5 * need - (256 << 20) < sum(t.numel() * t.element_size() for t in buffers) <= need
    dec.close()
    monkeypatch.setattr(batcher, "_free_bytes", lambda: need + STEP_RESERVE - 1)  # a byte short of a decoder + reserve
    assert not batcher._fits(memory, 1)
    monkeypatch.setattr(batcher, "_free_bytes", lambda: need + STEP_RESERVE)  # room for one decoder at a time
    assert batcher._fits(memory, 1)
    starts = []
    events = [queue.Queue() for _ in range(2)]
    for doc, e in zip(("alpha.md", "beta.md"), events, strict=True):

        def emit(k, v, e=e, doc=doc):
            if k == "start":
                starts.append(doc)
            elif k == "end":
                starts.append(f"end {doc}")
            e.put((k, v))

        batcher.submit(Job((doc,), [5, 6], Sampling(max_tokens=6), emit))
    monkeypatch.setattr(batcher, "decoder_bytes", lambda m, b: need if not batcher._groups else need + 1)
    batcher.start()
    try:
        for e in events:
            tokens, finish, _ = _collect(e)
            assert len(tokens) == 6 and finish == "length"
        assert starts == ["alpha.md", "end alpha.md", "beta.md", "end beta.md"]  # beta waited, then ran
    finally:
        batcher.close()


def test_batcher_bounds_and_cancel(setup):
    _, db, lm = setup
    batcher = Batcher(lm, SnapshotStore(db), stops=[], max_batch=2, max_running=1, max_waiting=1, start=False)
    events = [queue.Queue() for _ in range(2)]
    jobs = [Job(("beta.md",), [5, 6, 7], Sampling(max_tokens=500), lambda k, v, e=e: e.put((k, v))) for e in events]
    for j in jobs:
        batcher.submit(j)
    with pytest.raises(Overloaded, match="retry later"):
        batcher.submit(Job(("beta.md",), [5], Sampling(), lambda k, v: None))
    jobs[1].cancel()  # a client gone away frees its slot at once, before its job even started
    batcher.submit(Job(("beta.md",), [5], Sampling(max_tokens=1), lambda k, v: None))
    batcher.start()
    try:
        assert events[0].get(timeout=60)[0] == "start"
        jobs[0].cancel()
        assert _collect(events[0])[1] == "cancelled"
        assert _collect(events[1])[1] == "cancelled"
        deadline = time.time() + 30
        while batcher.held() and time.time() < deadline:
            time.sleep(0.05)
        assert batcher.held() == 0
    finally:
        batcher.close()


def test_text_stream_holds_back_stop_strings(setup):
    tok = setup[2].tokenizer
    ids = list(tok("hello world, stop here", add_special_tokens=False)["input_ids"])
    stream = TextStream(tok, ["stop"])
    sent = "".join(stream.add(t) for t in ids) + stream.finish()
    assert sent == "hello world, " and stream.stopped


def test_an_answers_end_read_alone_ends_it(setup):
    """The batcher's thread pushes an answer's last token and its end one after the other, so the
    replica's loop can read the end alone: the answer ends there (a metric's inc(0) once raised,
    failing the stream; found by the soak below)."""
    import asyncio

    from pipelines.serve import BeaconServer, _Answer, _Inbox

    class Counter:  # Ray's Counter.inc refuses values <= 0
        def inc(self, value=1.0):
            assert value > 0, value

    replica = object.__new__(BeaconServer.func_or_class)  # no model: _deltas reads these two only
    replica.stops, replica.m_tokens = set(), Counter()
    tok = setup[2].tokenizer

    async def answer() -> tuple[list[str], str]:
        events = _Inbox(asyncio.get_running_loop())
        context = _Answer(None, "id", "m", ["alpha.md"], 1, {}, 0.0, TextStream(tok, []))
        deltas = replica._deltas(context, None, events)
        events.push("token", tok("a", add_special_tokens=False)["input_ids"][0])
        got = [await anext(deltas)]
        events.push("end", "length")  # read on its own
        got += [d async for d in deltas]
        return got, context.finish

    assert asyncio.run(answer()) == (["a"], "length")


def test_serve_yaml_is_a_valid_ray_serve_config():
    from ray.serve.schema import ServeDeploySchema

    config = serve_config(ServeConfig(min_replicas=1, max_replicas=4, gpus_per_replica=1, api_key="secret"))
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    ingress, server = app.deployments
    assert (ingress.name, server.name) == (INGRESS, DEPLOYMENT) and ingress.num_replicas == 1
    assert server.autoscaling_config["max_replicas"] == 4 and server.ray_actor_options.num_gpus == 1
    assert server.request_router_config["request_router_class"] == ROUTER
    assert server.request_router_config["request_router_kwargs"] == {"busy_at": 32 + 32}  # running + waiting
    assert ingress.backpressure_config.status_code == 429 and "secret" not in json.dumps(config)


def test_dry_run_writes_and_prints_serve_yaml(tmp_path):
    import yaml
    from click.testing import CliRunner

    from beacon_cli.main import main

    path = tmp_path / "serve.yaml"
    out = CliRunner().invoke(main, ["serve", "--dry-run", str(path), "--replicas", "2", "--gpus-per-replica", "1",
                                    "--port", "9000", "--api-key", "secret", "--lanes", "16",
                                    "--lane-slots", "8448"])  # fmt: skip
    assert out.exit_code == 0, out.output
    config = yaml.safe_load(path.read_text())
    ingress, server = config["applications"][0]["deployments"]
    args = config["applications"][0]["args"]
    assert (args["lanes"], args["lane_slots"]) == (16, 8448)
    assert ingress["name"] == INGRESS and ingress["ray_actor_options"] == {"num_cpus": 0}
    assert server["num_replicas"] == 2 and server["ray_actor_options"]["num_gpus"] == 1
    assert server["request_router_config"]["request_router_class"] == ROUTER
    assert config["http_options"]["port"] == 9000 and "secret" not in path.read_text()
    assert yaml.safe_load(out.stdout) == config


def test_rendezvous_order_is_stable_and_moves_only_a_lost_replicas_lists():
    lists = [[f"doc{i}.md", f"doc{j}.md"] for i in range(20) for j in range(3)]
    replicas = ["r1", "r2", "r3"]
    first = {tuple(d): rendezvous_order(d, replicas)[0] for d in lists}
    assert first == {tuple(d): rendezvous_order(d, list(reversed(replicas)))[0] for d in lists}  # not by position
    assert set(first.values()) == set(replicas)
    assert any(first[tuple(d)] != rendezvous_order(d[::-1], replicas)[0] for d in lists)  # [A, B] is not [B, A]
    without = {tuple(d): rendezvous_order(d, ["r1", "r3"])[0] for d in lists}
    assert all(without[k] == first[k] for k in first if first[k] != "r2")  # the others' lists stay put
    assert all(without[k] == rendezvous_order(list(k), replicas)[1] for k in first if first[k] == "r2")  # next in line


# ---- a real server ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _serving(model: Path, db: Path, log: Path, *options: str):
    """`beacon serve` in a child process (its own embedded Ray) until the block ends: (base URL, process)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               RAY_AUTH_MODE="disabled", BEACON_API_KEY=KEY, RAY_SERVE_HTTP_KEEP_ALIVE_TIMEOUT_S="5")  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "beacon_cli.main", "serve", "--model", str(model), "--db", str(db), "--port",
           str(port), "--num-cpus", "2", "--no-dashboard", "--max-tokens-limit", "1000000", *options]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300  # a busy 2-core machine takes a while to start Ray and Serve
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"beacon serve exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:  # up: /health answers, and the command says so (all replicas running, not just one)
                if requests.get(f"{base}/health", timeout=2).status_code == 200 and "Ctrl-C stops" in log.read_text():
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"beacon serve did not answer in 300 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGINT)  # the command takes the app down and stops its Ray
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == 0, log.read_text()[-4000:]


@pytest.mark.slow
def test_requests_go_to_the_replica_of_their_documents(setup, tmp_path):
    """Two replicas: the same documents always reach the same replica (its LRU holds their memory),
    different ones spread over both; a request whose replica is full, or gone, is answered by the
    other one."""
    import psutil

    model, db, _ = setup
    options = ["--replicas", "2", "--max-running", "1", "--max-waiting", "0", "--max-batch", "1"]  # 1 answer a replica
    docs = ["alpha.md", "beta.md", "gamma.md"]
    sets = [p for n in (1, 2, 3) for p in itertools.permutations(docs, n)]  # 15 lists ([A, B] != [B, A])

    def ask(documents, **extra):
        body = {"prompt": "abc", "max_tokens": 1, "documents": list(documents)} | extra
        return _post(base, "/v1/completions", body)

    with _serving(model, db, tmp_path / "serve.log", *options) as (base, proc):
        owner = {}
        for documents in sets:
            first, again = ask(documents), ask(documents)
            assert first.status_code == again.status_code == 200, first.text
            assert first.headers[REPLICA_HEADER] == again.headers[REPLICA_HEADER]
            assert again.json()["cache_hit"]  # the second one found the memory the first one loaded
            owner[documents] = first.headers[REPLICA_HEADER]
        assert len(set(owner.values())) == 2  # all 15 on one replica: chance 2^-14
        every = requests.get(f"{base}/health", params={"replicas": "all"}, timeout=30).json()["replicas"]
        assert sorted(h["replica"] for h in every) == sorted(set(owner.values()))  # each replica asked once
        found = _post(base, "/v1/completions", {"prompt": "RIVER_STONE river survey", "max_tokens": 1,
                                                "search": {"top_k": 1}})  # fmt: skip
        assert found.json()["documents"] == ["beta.md"]  # routed after the search, by what it found
        assert found.headers[REPLICA_HEADER] == owner[("beta.md",)] and found.json()["cache_hit"]

        # full: its replica busy with a long stream, the request goes to the other one
        documents = sets[0]
        held = requests.post(f"{base}/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                             stream=True, json={"prompt": "abc", "max_tokens": 100_000, "stream": True,
                                                "documents": list(documents)})  # fmt: skip
        try:
            assert held.status_code == 200 and held.headers[REPLICA_HEADER] == owner[documents]
            r = ask(documents)
            assert r.status_code == 200 and r.headers[REPLICA_HEADER] != owner[documents]
        finally:
            held.close()
        deadline = time.time() + 30  # once the stream is gone, the documents go back to their replica
        while ask(documents).headers[REPLICA_HEADER] != owner[documents] and time.time() < deadline:
            time.sleep(0.2)
        assert ask(documents).headers[REPLICA_HEADER] == owner[documents]

        # gone: one replica's process killed, every request is still answered (by the other one)
        processes = [p for p in psutil.Process(proc.pid).children(recursive=True)
                     if "ServeReplica:beacon:BeaconServer" in " ".join(p.cmdline())]  # fmt: skip
        assert len(processes) == 2, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
        processes[0].kill()
        after = {documents: ask(documents) for documents in sets}
        assert all(r.status_code == 200 for r in after.values()), [r.text for r in after.values()]
        answered = {r.headers[REPLICA_HEADER] for r in after.values()}
        (gone,) = set(owner.values()) - answered  # (Serve starts a replacement: it may answer some by now)
        assert any(owner[documents] == gone for documents in sets)


@pytest.fixture(scope="module")
def server(setup, tmp_path_factory):
    model, db, _ = setup
    log = tmp_path_factory.mktemp("log") / "serve.log"
    options = ["--max-running", "2", "--max-waiting", "0", "--max-batch", "2"]
    with _serving(model, db, log, *options) as (base, _):
        SERVER_LOG.append(log)
        yield base


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def _post(server, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{server}{path}", data=data, headers=headers | {"Content-Type": "application/json"},
                         timeout=60, **kw)  # fmt: skip


def test_chat_answers_as_beacon_ask_does_stream_or_not(setup, client):
    _, db, lm = setup
    want = _expected(lm, db, ["alpha.md"], "What is ORBIT_CEDAR?", 12)
    stops = stop_ids(lm)
    text = lm.tokenizer.decode([t for t in want.token_ids if t not in stops], skip_special_tokens=True)
    messages = [{"role": "user", "content": "What is ORBIT_CEDAR?"}]
    got = client.chat.completions.create(model="qwen2", messages=messages, max_tokens=12,
                                         extra_body={"documents": ["alpha.md"]})  # fmt: skip
    assert got.choices[0].message.content == text
    assert got.usage.completion_tokens == len(want.token_ids)
    assert got.choices[0].finish_reason == ("stop" if want.token_ids[-1] in stops else "length")
    chunks = list(client.chat.completions.create(model="qwen2", messages=messages, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"documents": ["alpha.md"]}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == got.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_completions_search_seed_and_stop(server, client):
    got = client.completions.create(model="qwen2", prompt="RIVER_STONE river survey", max_tokens=8,
                                    extra_body={"search": {"top_k": 1}})  # fmt: skip
    assert got.model_extra["documents"] == ["beta.md"] and got.usage.prompt_tokens == len("RIVER_STONE river survey")
    sample = dict(model="qwen2", prompt="abc", max_tokens=16, temperature=1.0, top_p=0.9, seed=11,
                  extra_body={"documents": ["gamma.md", "beta.md"]})  # fmt: skip
    a, b = (client.completions.create(**sample).choices[0].text for _ in range(2))
    assert a == b and len(a) > 0
    cut = a[len(a) // 2 :][:2]
    stopped = client.completions.create(**sample, stop=[cut]).choices[0]
    assert stopped.text == a[: a.index(cut)] and stopped.finish_reason == "stop"
    raw = _post(server, "/v1/completions", {"prompt": "abc", "max_tokens": 3, "stream": True, "documents": ["beta.md"]})
    events = [e for e in raw.text.split("\n\n") if e]
    assert raw.status_code == 200 and all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert raw.headers[REPLICA_HEADER] == requests.get(f"{server}/health").json()["replica"]  # the one replica


def test_models_documents_and_health(server, client):
    assert [m.id for m in client.models.list()] == ["qwen2"]
    page = requests.get(f"{server}/v1/documents?limit=2", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [d["id"] for d in page["data"]] == ["alpha.md", "beta.md"] and page["has_more"]
    rest = requests.get(f"{server}/v1/documents?after=beta.md", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [d["id"] for d in rest["data"]] == ["broken.md", "gamma.md"] and not rest["has_more"]
    assert requests.get(f"{server}/health").json()["status"] == "ok"


def test_bad_requests_get_the_right_status_and_name_the_field(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "documents": ["alpha.md"], "max_tokens": 4}
    assert _post(server, "/v1/chat/completions", body, key=None).status_code == 401
    assert _post(server, "/v1/chat/completions", body, key="wrong-key").status_code == 401
    assert requests.get(f"{server}/v1/models").status_code == 401
    r = _post(server, "/v1/chat/completions", body | {"documents": ["nope.md"]})
    assert r.status_code == 404 and "'nope.md'" in r.json()["error"]["message"]
    r = _post(server, "/v1/chat/completions", body | {"documents": ["alpah.md"]})  # a typo: the closest ids named
    assert r.status_code == 404 and "did you mean 'alpha.md'" in r.json()["error"]["message"]
    assert _post(server, "/v1/chat/completions", body | {"documents": ["alpha"]}).status_code == 200  # its stem
    r = _post(server, "/v1/chat/completions", body | {"documents": ["../../etc/passwd"]})
    assert r.status_code == 404  # ids are looked up in the store, never opened as paths
    r = _post(server, "/v1/chat/completions", b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = _post(server, "/v1/chat/completions", body | {"max_tokens": "ten"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = _post(server, "/v1/chat/completions", body | {"messages": [{"role": "user", "content": 3}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    r = _post(server, "/v1/chat/completions", {"messages": body["messages"]})
    assert r.status_code == 400 and "documents" in r.json()["error"]["message"]
    r = _post(server, "/v1/completions", {"prompt": "x", "documents": ["alpha.md"], "max_tokens": 140_000})
    assert r.status_code == 400 and "limit of 65536 positions" in r.json()["error"]["message"]  # 140000 / ratio 2
    r = _post(server, "/v1/chat/completions", body | {"model": "gpt-4"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_a_corrupt_snapshot_fails_only_its_request(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for stream in (False, True):
        r = _post(server, "/v1/chat/completions", body | {"documents": ["broken.md"], "stream": stream})
        assert r.status_code == 500 and "failed its checks" in r.json()["error"]["message"]
    assert _post(server, "/v1/chat/completions", body | {"documents": ["alpha.md"]}).status_code == 200


def test_overload_is_429_with_retry_after_and_disconnects_free_slots(server):
    """The server runs 2 answers at most and queues none: a third gets 429; closing the two streams
    mid-answer frees both slots."""
    body = {"prompt": "abc", "max_tokens": 120_000, "stream": True, "documents": ["gamma.md"]}  # minutes of tokens
    headers = {"Authorization": f"Bearer {KEY}"}
    streams, readers = [], []  # keep the line iterators: a dropped one closes its connection
    for _ in range(2):
        response = requests.post(f"{server}/v1/completions", json=body, headers=headers, timeout=60, stream=True)
        streams.append(response)
        readers.append(response.iter_lines())
        assert response.status_code == 200 and next(readers[-1]).startswith(b"data: ")
    try:
        assert requests.get(f"{server}/health").json()["running_or_waiting"] == 2
        r = _post(server, "/v1/completions", body | {"stream": False, "max_tokens": 2})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
    finally:
        for response in streams:
            response.close()  # the connection goes: the server sees the client leave
    deadline = time.time() + 30
    while requests.get(f"{server}/health").json()["running_or_waiting"] and time.time() < deadline:
        time.sleep(0.2)
    health = requests.get(f"{server}/health").json()
    assert health["running_or_waiting"] == 0
    r = _post(server, "/v1/completions", body | {"stream": False, "max_tokens": 2})
    assert r.status_code == 200


def test_concurrent_clients_all_get_answers(server, client):
    answers: list = [None] * 2  # the server runs 2 at most and queues none

    def ask(i):
        answers[i] = client.completions.create(model="qwen2", prompt="abc", max_tokens=6,
                                               extra_body={"documents": ["beta.md"]}).choices[0].text  # fmt: skip

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(set(answers)) == 1 and answers[0] is not None  # greedy: one answer, however they were grouped


def test_metrics_reach_rays_prometheus_endpoint(server):
    """The replica's counters and TTFT histogram appear on the node's metrics endpoint (Ray exports
    every few seconds: polled for up to a minute)."""
    import re

    (url,) = re.findall(r"Prometheus metrics of this node at (\S+)", SERVER_LOG[0].read_text())
    # each deployment's process (the ingress counts the 401s, the model replicas the rest) exports on
    # its own schedule: wait for every series, not the first to arrive
    wanted = [r'ray_beacon_requests_total\{[^}]*route="chat"[^}]*status="401"',
              r'ray_beacon_memory_cache_total\{[^}]*result="hit"',
              r"ray_beacon_generated_tokens_total\{", r"ray_beacon_ttft_seconds_bucket\{"]  # fmt: skip
    deadline, text = time.time() + 90, ""
    while time.time() < deadline:
        text = requests.get(url, timeout=10).text
        if all(re.search(pattern, text) for pattern in wanted):
            break
        time.sleep(2)
    missing = [pattern for pattern in wanted if not re.search(pattern, text)]
    assert missing == [], text[-2000:]


def test_soak_with_clients_walking_away_loses_no_replica_and_leaves_no_rows(server, tmp_path):
    """bench/serve_load.py --soak for a few seconds (after a 2 s warm-up), half the requests cut by
    their client (streams closed mid-answer, answers timed out): every replica still there, no answer
    left running or waiting once settled, and no failure but the cuts."""
    from bench.serve_load import main

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": d, "question": "What is it?", "doc_ids": [d]}) + "\n"
                                 for d in ("alpha.md", "beta.md", "gamma.md")))  # fmt: skip
    out = tmp_path / "soak.json"
    # one client: the server holds 2 answers, and a cut answer's slot frees once word of the cut arrives
    main(["--url", server, "--api-key", KEY, "--questions", str(questions), "--soak", "--clients", "1",
          "--warmup", "2", "--seconds", "5", "--sample-every", "1", "--disconnect", "0.5", "--seed", "3",
          "--max-tokens", "16", "--settle", "20", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    soak = result["soak"]
    assert result["command"].startswith("python -m bench.serve_load --url")
    assert len(soak["replicas_before"]) == 1 and soak["no_replica_lost"] and not soak["replicas_lost"]
    assert soak["settle_s"] is not None and soak["batch_empty_after"]
    assert all(s["running_or_waiting"] == s["waiting"] == 0 for s in soak["replicas_after"])
    counts = soak["requests"]
    assert counts["errors"] == {} and counts["disconnected"] > 0 and counts["ok"] > 0, counts
    assert counts["sent"] == counts["ok"] + counts["disconnected"]
    (memory,) = soak["memory"]
    assert memory["rss_before"] > 0 and "cuda_before" not in memory  # CPU: RSS judged, against --rss-limit
    assert soak["warmup"]["requests"]["errors"] == {} and soak["samples"]
    assert all(len(s["replicas"]) == 1 for s in soak["samples"]), soak["samples"]
