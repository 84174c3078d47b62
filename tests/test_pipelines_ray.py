"""Ingestion and batch QA on a real local Ray (4 logical CPUs): corpus formats, exact and idempotent
ingestion, batch answers equal to `ask` and to one pass over the raw text, and the `beacon` CLI."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

import beacon
from beacon_actors.text import document_ids
from beacon_cli.main import main as cli
from pipelines.answer import answer_questions
from pipelines.ask import ask, document_text, generate_from_text
from pipelines.config import AnswerConfig, IngestConfig
from pipelines.corpus import read_corpus
from pipelines.ingest import ingest
from snapshots import SnapshotStore
from snapshots.records import text_digest
from snapshots.search import SearchIndex

from ._pipelines_helpers import REPO, assert_close_memory, tiny_model, write_corpus

ray = pytest.importorskip("ray")
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "qwen2", max_positions=65536)  # the sample's memories


def test_corpus_formats_read_the_same_documents(tmp_path):
    ids = write_corpus(tmp_path / "files", 3, tokens=60)
    (tmp_path / "files" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    texts = {d: (tmp_path / "files" / f"{d}.md").read_text() for d in ids}
    records = [{"id": d, "text": t, "title": f"T{d}", "metadata": {"n": i}} for i, (d, t) in enumerate(texts.items())]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "c.parquet")
    for source in ("files", "c.jsonl", "c.parquet"):
        corpus = read_corpus(tmp_path / source)
        rows = {r["doc_id"]: r for r in corpus.dataset.take_all()}
        assert corpus.n_documents == len(rows) == 3
        for d, text in texts.items():
            assert rows[d]["text"] == text and rows[d]["text_sha256"] == text_digest(text, d)
        if source == "files":
            assert rows["doc000"]["title"] == "Note 0" and rows["doc000"]["source_uri"].startswith("file://")
            (skip,) = corpus.scan.skipped  # named, not read
            assert skip.doc_id == "latin1" and "not UTF-8" in skip.reason and skip.where.endswith("latin1.txt")
        else:
            assert rows["doc001"]["title"] == "Tdoc001" and rows["doc001"]["metadata_json"] == '{"n": 1}'
    with pytest.raises(ValueError, match="does not exist"):
        read_corpus(tmp_path / "nope")


def test_ingest_is_exact_and_idempotent(model, tmp_path):
    ids = write_corpus(tmp_path / "corpus", 12, tokens=150)
    (tmp_path / "corpus" / "empty.txt").write_text("")
    (tmp_path / "corpus" / "bad.txt").write_bytes(b"\xff\xfe bad")
    config = IngestConfig(corpus=str(tmp_path / "corpus"), db=str(tmp_path / "db"), model=str(model), batch_size=3,
                          min_actors=1, max_actors=2, progress=False)  # fmt: skip
    seen = []
    report = ingest(config, on_batch=seen.extend)
    assert (report.n_items, report.n_documents, report.n_condensed, report.n_empty) == (14, 13, 12, 1)
    assert (report.n_skipped, report.n_failed, report.empty, report.condensed) == (1, 0, ["empty"], ids)
    assert report.n_tokens == sum(r["n_tokens"] for r in seen if r["status"] == "condensed") > 0
    assert report.skipped[0]["doc_id"] == "bad" and report.tokens_per_s > 0 and not report.duplicates
    store = SnapshotStore(tmp_path / "db")
    assert [i.doc_id for i in store.list()] == ids
    assert set(SearchIndex(tmp_path / "db").known()) == set(ids)
    lm = beacon.load(model)
    for d in ids[:2]:  # the stored memory is what reading the document alone gives
        text = (tmp_path / "corpus" / f"{d}.md").read_text()
        assert_close_memory(store.get(d, fingerprint=lm.fingerprint()), lm.condense(torch.tensor(
            document_ids(lm.tokenizer, text))))  # fmt: skip
    generations = {i.doc_id: i.generation for i in store.list()}

    again = ingest(config)  # nothing to do: known before Ray is needed, nothing rewritten
    assert (again.n_stored, again.n_condensed, again.n_empty, again.n_skipped) == (12, 0, 1, 1)
    assert again.stored == ids and not again.ray_started
    assert {i.doc_id: i.generation for i in store.list()} == generations
    (tmp_path / "corpus" / f"{ids[4]}.md").write_text("# changed\n\nnew text")
    third = ingest(config)
    assert (third.n_stored, third.n_condensed, third.condensed) == (11, 1, [ids[4]])
    assert store.show(ids[4]).text_sha256 == text_digest("# changed\n\nnew text", ids[4])


def test_batch_qa_equals_ask_and_one_pass_over_the_text(model, tmp_path):
    db = str(tmp_path / "db")
    report = ingest(IngestConfig(corpus=str(SAMPLE / "corpus"), db=db, model=str(model), progress=False))
    assert report.n_condensed == 5
    config = AnswerConfig(questions=str(SAMPLE / "questions.jsonl"), output=str(tmp_path / "answers.parquet"), db=db,
                          model=str(model), max_new_tokens=6, max_actors=2, batch_size=2, progress=False)  # fmt: skip
    qa = answer_questions(config)
    assert (qa.n_questions, qa.n_answered, qa.n_failed, qa.n_with_expected) == (6, 6, 0, 6)
    assert set(qa.latency) == {"load_s", "first_token_s", "total_s"} and qa.latency["total_s"]["n"] == 6
    rows = {r["question_id"]: r for r in pq.read_table(tmp_path / "answers.parquet").to_pylist()}
    assert rows["orbit"]["doc_ids"] == ["orbit_config"] and rows["orbit"]["picked_by"] == "search"
    assert rows["river"]["doc_ids"] == ["river_survey"]
    assert rows["two-docs"]["doc_ids"] == ["river_survey", "lighthouse"]  # asked as river_survey.txt, lighthouse.md
    for r in rows.values():
        assert r["error"] is None and r["n_new_tokens"] >= 1 and r["first_token_s"] <= r["total_s"]
        assert ask(r["question"], config, doc_ids=r["doc_ids"])["answer"] == r["answer"]
        if len(r["doc_ids"]) == 1:  # same model, same document, same question -> same answer
            direct = generate_from_text(r["question"], document_text(db, r["doc_ids"][0]), config)
            assert direct["answer"] == r["answer"]


def test_cli_ingest_qa_ask_generate_snapshots(model, tmp_path, monkeypatch):
    run = CliRunner().invoke
    corpus = tmp_path / "corpus.jsonl"
    texts = {"alpha": 'ALPHA_KEY = "amber"\n' * 3, "beta": "# Beta\nthe beta document " * 4}
    corpus.write_text("".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in texts.items()))
    common = ["--db", str(tmp_path / "db"), "--model", str(model)]
    out = run(cli, ["ingest", str(corpus), *common, "--no-progress"], catch_exceptions=False)
    assert out.exit_code == 0 and "2 condensed" in out.output, out.output
    out = run(cli, ["ingest", str(corpus), *common, "--no-progress", "--json"])
    assert json.loads(out.output)["n_stored"] == 2
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What is ALPHA_KEY?", "answer": "zzz-never"}\n'
                         '{"question": "beta?", "doc_ids": ["beta"]}\n')  # fmt: skip
    out = run(cli, ["qa", str(questions), "-o", str(tmp_path / "a.jsonl"), *common, "--max-new-tokens", "4"])
    assert out.exit_code == 0 and "2 answered" in out.output and "0/1 correct" in out.output, out.output
    answers = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert f"wrong  q0: {answers[0]['answer']!r} (expected 'zzz-never')" in out.output  # each graded answer shown
    assert answers[0]["doc_ids"] == ["alpha"] and answers[1]["doc_ids"] == ["beta"]
    out = run(cli, ["ask", "What is ALPHA_KEY?", *common, "--max-new-tokens", "4", "--json"])
    asked = json.loads(out.output)
    assert asked["doc_ids"] == ["alpha"] and asked["answer"] == answers[0]["answer"]
    out = run(cli, ["generate", "What is ALPHA_KEY?", "--doc-id", "alpha", *common, "--max-new-tokens", "4", "--json"])
    assert json.loads(out.output)["answer"] == asked["answer"]
    (tmp_path / "alpha.txt").write_text(texts["alpha"])
    out = run(cli, ["generate", "What is ALPHA_KEY?", "--file", str(tmp_path / "alpha.txt"), "--model", str(model),
                    "--max-new-tokens", "4"])  # fmt: skip
    assert out.output.strip() == asked["answer"].strip()
    out = run(cli, ["snapshots", "list", "--db", str(tmp_path / "db"), "--json"])
    assert [d["doc_id"] for d in json.loads(out.output)] == ["alpha", "beta"]
    out = run(cli, ["snapshots", "show", "beta", "--db", str(tmp_path / "db")])
    assert json.loads(out.output)["n_tokens"] == len(texts["beta"].encode())
    out = run(cli, ["snapshots", "delete", "beta", "--db", str(tmp_path / "db")])
    assert out.exit_code == 0 and SearchIndex(tmp_path / "db").known().keys() == {"alpha"}
    out = run(cli, ["snapshots", "optimize", "--db", str(tmp_path / "db"), "--grace-s", "0"])
    assert out.exit_code == 0 and "rows_deleted" in out.output
    out = run(cli, ["ask", "x", "--doc-id", "beta", *common])
    assert out.exit_code == 1 and "no document 'beta'" in out.output
    out = run(cli, ["snapshots", "list", "--db", str(tmp_path / "nothing")])
    assert out.exit_code == 1 and "beacon ingest" in out.output

    monkeypatch.chdir(tmp_path)  # no default model here (nor in this fake repo root): say how to get it
    monkeypatch.setattr("pipelines.defaults.REPO_ROOT", tmp_path)
    for args in (["ingest", str(corpus)], ["qa", str(questions)], ["ask", "q?"], ["generate", "q", "--text", "t"]):
        out = run(cli, args)
        assert out.exit_code == 1 and "default model models/qwen2.5-coder-0.5b-beacon is not here" in out.output, args
    for args in ([], ["ingest"], ["ask"], ["qa"], ["generate"], ["snapshots"], *[["snapshots", c] for c in
                 ("list", "show", "delete", "optimize")]):  # fmt: skip
        out = run(cli, [*args, "--help"])
        assert out.exit_code == 0 and "Usage:" in out.output


@pytest.mark.parametrize("folder", ["sample", "sample_long"])
def test_sample_data_ships(folder):
    sample = SAMPLE.parent / folder
    assert len(list((sample / "corpus").iterdir())) == 5
    questions = [json.loads(x) for x in (sample / "questions.jsonl").read_text().splitlines()]
    docs = {p.name: p.read_text() for p in (sample / "corpus").iterdir()}
    for q in questions:  # every answer is in the corpus once; a list answer's items each in another named document
        items = q["answer"] if isinstance(q["answer"], list) else [q["answer"]]
        holders = [[name for name, text in docs.items() if item in text] for item in items]
        assert all(len(h) == 1 for h in holders), (q["id"], holders)
        assert all(h[0] in q.get("doc_ids", docs) for h in holders), q["id"]
    if folder == "sample_long":  # one question needs two documents
        assert any(isinstance(q["answer"], list) and len({h for h in q["doc_ids"]}) == 2 for q in questions)


def test_sample_generator_writes_the_committed_corpora():
    import importlib.util
    import random

    spec = importlib.util.spec_from_file_location("make_corpus", SAMPLE / "make_corpus.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    for scale, folder in make.SETS.items():
        assert sorted(p.name for p in folder.iterdir()) == sorted(make.DOCS)
        for i, (name, writer) in enumerate(make.DOCS.items()):
            assert (folder / name).read_text() == writer(random.Random(i), scale), (scale, name)


def test_bench_pipeline_smoke_on_cpu(model, tmp_path):
    from bench.pipeline import main as bench

    out = tmp_path / "pipeline_smoke.json"
    result = bench(["--gpus", "0", "--actors", "1", "--docs", "4", "--doc-chars", "1200", "--model", str(model),
                    "--max-new-tokens", "3", "--work", str(tmp_path / "work"), "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    assert result["ingest"]["condensed"] == 4 and result["ingest"]["tokens_per_s"] > 0
    assert result["qa"]["answered"] == 4 and result["qa"]["latency_s"]["total_s"]["n"] == 4


def test_bench_pipeline_mixed_lengths_breaks_the_wall_time_down_on_cpu(model, tmp_path, monkeypatch):
    """The mixed-length GPU run (docs/performance.md §5) in small: documents of 150-1600 tokens, the
    longer ones streamed on an actor of their own; the breakdown's parts come from real clocks and
    fit in the wall time; the baselines read the same documents."""
    from bench.pipeline import main as bench

    monkeypatch.setattr("bench.timing.SHORT_RUNS", 2)  # one warm pass per baseline (bench.timing), not four
    result = bench(["--gpus", "0", "--actors", "1", "--mixed-lengths", "--total-tokens", "4000", "--min-tokens",
                    "150", "--max-tokens", "1600", "--long-document-tokens", "800", "--piece-tokens", "128",
                    "--no-qa", "--baselines", "--model", str(model), "--work", str(tmp_path / "work")])  # fmt: skip
    ingest = result["ingest"]
    assert ingest["condensed"] == ingest["documents"] and ingest["long_documents"] >= 1  # 1600 and 150 are both there
    assert result["corpus"]["lengths"]["min"] < 200 and result["corpus"]["lengths"]["max"] > 1200
    b = result["breakdown"]
    parts = ["ray_start_s", "actor_load_s", "actor_warmup_s", "actor_tokenize_s", "condense_s", "put_s", "rest_s"]
    assert all(b[k] >= 0 for k in parts), b  # rest_s >= 0: the measured parts fit in the wall time
    assert b["wall_s"] == pytest.approx(sum(b[k] for k in parts))
    assert b["actor_load_s"] > 0 and b["condense_s"] > 0 and b["put_s"] > 0 and b["actor_tokenize_s"] > 0
    assert b["lanes"] == 2  # without GPUs the pool's actor and the long-document actor run side by side
    assert 0 <= b["rest_after_last_result_s"] <= b["rest_s"]
    base = result["baselines"]
    assert base["tokens"] == ingest["tokens"] and base["engine"]["streamed_documents"] == ingest["long_documents"]
    c = result["comparison"]
    assert c["job_tokens_per_s_per_gpu"] == pytest.approx(ingest["tokens"] / b["wall_s"])  # no GPUs: the whole job
    assert c["job_over_engine"] == pytest.approx(c["job_tokens_per_s_per_gpu"] / base["engine"]["tokens_per_s"])
    assert c["job_over_prefill"] > 0
