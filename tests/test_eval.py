"""`beacon eval` (pipelines/evaluate.py, eval_tasks.py, beacon_cli/eval_cmd.py) on a tiny model with a byte tokenizer.

The tiny qwen2 checkpoint has beacon_window 16 and 512 native positions, so small lengths already
cross every boundary the command reports: ratio 2 reaches (512 - 16) * 2 + 16 = 1008 tokens and
`full` stops at 512.
"""

from __future__ import annotations

import json
import math
import random
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import beacon
from beacon_cli.main import main
from pipelines.eval_tasks import (
    NEAR_LINE_END,
    draw_needle,
    needle_document,
    read_texts,
    special_tokens,
    token_stream,
)
from pipelines.evaluate import EvalConfig, fixed_ratio, write_plots

from ._pipelines_helpers import byte_tokenizer, tiny_model
from .conftest import REPO, tiny_path

WORDS = "apple river stone cloud maple quartz ember lantern harbor meadow orbit".split()


def held_out(path, n_chars: int, *, words: tuple[int, int] = (3, 9), seed: int = 0):
    """A text file of lines of `words` words (~n_chars bytes = tokens of the byte tokenizer)."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < n_chars:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
        lines.append(line)
        size += len(line) + 1
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's matrices are too small to split: a second thread only waits (and spins, on a
    busy machine, making a test ~10x slower). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("eval") / "tiny")


def run_cli(*args: str):
    return CliRunner().invoke(main, ["eval", *args, "--no-progress"])


SMALL = [
    "--lengths", "128,1000", "--continuation", "32", "--ppl-samples", "2", "--ratios", "2,8",
    "--needle-lengths", "128,256", "--depths", "2", "--needle-samples", "1",
    "--qa-docs", "2", "--qa-doc-tokens", "160", "--qa-samples", "2", "--batch-size", "2", "--max-new-tokens", "4",
]  # fmt: skip


def test_cli_reports_every_cell_and_scores_the_continuation(model_dir, tmp_path):
    text = held_out(tmp_path / "heldout.txt", 6000)
    out = tmp_path / "res" / "eval.json"
    result = run_cli("--model", str(model_dir), "--text", str(text), "--out", str(out), *SMALL)
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["fingerprint"] and res["device"] == "cpu" and res["dtype"] == "float32"
    assert {"torch", "transformers"} <= set(res["versions"]) and res["command"].startswith("beacon eval --text")
    assert {"load", "ppl", "needle", "qa", "total"} <= set(res["seconds"])

    ppl = res["ppl"]
    methods = ["beacon-r2", "beacon-r8", "truncation", "sliding-r2", "sliding-r8", "full"]
    assert ppl["methods"] == methods
    for m in methods:  # every cell is there: a number or null with a reason
        assert set(ppl["ppl"][m]) == {"128", "1000"}
        for n, v in ppl["ppl"][m].items():
            assert (v is None) == (n in ppl["skipped"].get(m, {})), (m, n)
    assert ppl["ppl"]["full"]["128"] is not None  # 160 tokens fit the native 512
    assert ppl["ppl"]["full"]["1000"] is None
    assert "context + continuation (1032 tokens) exceed the native window (512)" in ppl["skipped"]["full"]["1000"]
    assert ppl["ppl"]["beacon-r2"]["128"] is not None and ppl["ppl"]["beacon-r2"]["1000"] is None  # reach 1008
    assert "reaches 1008" in ppl["skipped"]["beacon-r2"]["1000"]
    assert ppl["ppl"]["beacon-r8"]["1000"] is not None
    # the base reads what it may: 512 - 32 context tokens for truncation, 1000/8 + 16 for sliding-r8
    assert ppl["context_tokens_read"]["truncation"]["1000"] == 480
    assert ppl["context_tokens_read"]["sliding-r8"]["1000"] == 1000 // 8 + 16

    # the same numbers computed here, straight from the engine, one stream at a time
    lm = beacon.load(model_dir)
    stream = token_stream(lm.tokenizer, read_texts(text))
    k = 32
    for length, ratio in ((128, 2), (1000, 8)):
        ids = [torch.from_numpy(stream[o : o + length + k])[None] for o in ppl["offsets"][str(length)]]
        with fixed_ratio(lm, ratio):
            nll = torch.cat([lm.nll(x)[:, -k:] for x in ids])
        assert nll.shape == (2, k)
        assert ppl["ppl"][f"beacon-r{ratio}"][str(length)] == pytest.approx(math.exp(float(nll.mean())), rel=1e-3)
    full = []
    for o in ppl["offsets"]["128"]:
        x = torch.from_numpy(stream[o : o + 128 + k])[None]
        logits = lm.model(input_ids=x).logits[0]  # every position, no logits_to_keep
        full.append(F.cross_entropy(logits[:-1], x[0, 1:], reduction="none")[-k:])
    assert ppl["ppl"]["full"]["128"] == pytest.approx(math.exp(float(torch.cat(full).mean())), rel=1e-3)
    assert lm.config.beacon_ratio == [2, 4, 8]  # fixed_ratio gave the model's ratios back

    needle = res["needle"]
    assert needle["lengths"] == [128, 256] and needle["depths"] == [0.25, 0.75]
    assert len(needle["accuracy"]) == 2 and all(len(row) == 2 for row in needle["accuracy"])
    assert all(v is not None and 0.0 <= v <= 1.0 for row in needle["accuracy"] for v in row)
    assert len(needle["records"]) == 4
    assert {"length", "depth", "expected", "got", "correct"} <= set(needle["records"][0])
    qa = res["qa"]
    assert len(qa["records"]) == 2 and qa["accuracy"] is not None and qa["documents"] == 2
    assert (out.parent / "eval_ppl.png").exists() and (out.parent / "eval_needle.png").exists()
    assert "wrote" in result.output


def test_needle_document_has_the_length_and_the_depth(model_dir, tmp_path):
    tok = byte_tokenizer()
    # lines of <= 3 words (< 25 bytes): a line end is always within NEAR_LINE_END tokens
    stream = token_stream(tok, read_texts(held_out(tmp_path / "t.txt", 3000, words=(1, 3))))
    rng = np.random.default_rng(0)
    for length in (100, 257, 1000):
        for depth in (0.05, 0.5, 0.95):
            doc = needle_document(tok, stream, rng, length=length, depth=depth)
            needle_ids = tok(doc.needle.text, add_special_tokens=False)["input_ids"]
            assert len(doc.ids) == length
            assert doc.ids[doc.at : doc.at + doc.n_needle] == needle_ids
            n_hay = length - len(needle_ids)
            assert abs(doc.actual_depth - depth) <= NEAR_LINE_END / n_hay
            assert tok.decode([doc.ids[doc.at - 1]]).endswith("\n")
            hay = doc.ids[: doc.at] + doc.ids[doc.at + doc.n_needle :]  # the rest is one slice of the stream
            starts = np.nonzero(stream[: len(stream) - len(hay) + 1] == hay[0])[0]
            assert any(stream[s : s + len(hay)].tolist() == hay for s in starts)
    assert special_tokens(tok) == ([], [])
    with pytest.raises(ValueError, match="no room"):
        needle_document(tok, stream, rng, length=10, depth=0.5)


def test_the_toy_model_end_to_end(tmp_path):
    """models/beacon-tiny-code (a real BPE tokenizer with a chat template, small enough for a test)."""
    text = held_out(tmp_path / "code.txt", 12000)
    out = tmp_path / "eval.json"
    args = ["--lengths", "256", "--continuation", "32", "--ppl-samples", "1", "--ratios", "8", "--depths", "2",
            "--needle-lengths", "256,512", "--needle-samples", "1", "--qa-samples", "2", "--qa-doc-tokens", "200",
            "--max-new-tokens", "8"]  # fmt: skip
    toy = str(REPO / "models" / "beacon-tiny-code")
    result = run_cli("--model", toy, "--text", str(text), "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["model"].endswith("models/beacon-tiny-code") and res["model_config"]["beacon_ratio_mix"] == "adapt-128"
    assert all(isinstance(r["got"], str) for r in res["needle"]["records"] + res["qa"]["records"])
    assert res["ppl"]["ppl"]["full"]["256"] is not None
    tok = beacon.load(res["model"]).tokenizer
    stream = token_stream(tok, read_texts(text))
    doc = needle_document(tok, stream, np.random.default_rng(0), length=512, depth=0.5)
    assert len(doc.ids) == 512 and tok.decode(doc.ids[doc.at - 1]).endswith("\n")


def test_needles_use_eval_phrasings_and_stay_distinct():
    rng = np.random.default_rng(1)
    avoid: set[str] = set()
    for _ in range(50):
        n = draw_needle(rng, frozenset(avoid))
        assert n.key not in avoid and n.answer in n.text and "pass key" not in n.text and " = " not in n.text
        assert n.text.endswith("\n") and n.question.endswith("?")
        avoid |= {n.key, n.answer}


def test_too_short_stream_is_reported_and_skipped(model_dir, tmp_path):
    text = held_out(tmp_path / "short.txt", 700)
    out = tmp_path / "eval.json"
    args = ["--lengths", "128,4096", "--continuation", "32", "--ppl-samples", "1", "--ratios", "8", "--depths", "1",
            "--needle-lengths", "128,4096", "--needle-samples", "1", "--parts", "ppl,needle"]  # fmt: skip
    result = run_cli("--model", str(model_dir), "--text", str(text), "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    size = res["text"]["stream_tokens"]
    assert 600 < size < 4096
    assert f"needs 4128 held-out tokens but the --text stream has only {size}" in result.stderr
    assert f"the needle test at 4096 tokens needs 4096 held-out tokens but the --text stream has only {size}" in (
        result.stderr
    )
    assert all(res["ppl"]["ppl"][m]["4096"] is None for m in res["ppl"]["methods"])
    assert res["ppl"]["ppl"]["beacon-r8"]["128"] is not None
    assert res["needle"]["accuracy"][0][1] is None and res["needle"]["accuracy"][0][0] is not None
    assert "4096" in res["needle"]["skipped"] and "qa" not in res


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "/nonexistent/heldout"], "held-out text '/nonexistent/heldout' does not exist"),
        (["--lengths", "16,4096"], "context length(s) [16] are smaller than the continuation (256 tokens)"),
        (["--parts", "ppl,bogus"], "unknown part(s) ['bogus']"),
        (["--lengths", "4k"], "'4k': give integers"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    text = held_out(tmp_path / "t.txt", 100)
    result = run_cli("--text", str(text), *args)
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit)
    assert message in result.output and "Traceback" not in result.output


def test_config_and_inputs(tmp_path):
    assert EvalConfig(text="x", depths=10).depth_values[:2] == [0.05, 0.15]
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.md").write_text("second")
    (folder / "a.txt").write_text("first")
    (folder / "sub" / "c.py").write_text("third")
    (folder / "skip.bin").write_text("not text")
    assert read_texts(folder) == ["first", "second", "third"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert read_texts(rows) == ["one", "two"]
    rows.write_text('{"body": "one"}\n')
    with pytest.raises(ValueError, match='line 1 has no string "text"'):
        read_texts(rows)
    tok = byte_tokenizer()
    assert token_stream(tok, ["ab", "c"]).tolist() == [97, 98, tok.eos_token_id, 99]


def test_fixed_ratio_restores_and_refuses():
    lm = beacon.load(tiny_path("qwen2"))
    with pytest.raises(RuntimeError), fixed_ratio(lm, 8):
        assert lm.config.beacon_ratio == [8] and lm.config.beacon_ratio_mix == "step-random"
        raise RuntimeError
    assert lm.config.beacon_ratio == [2, 4, 8] and lm.config.beacon_ratio_mix == "step-random"
    with pytest.raises(ValueError, match="does not divide beacon_stride"), fixed_ratio(lm, 32):
        pass


def test_plots_skipped_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    notes = []
    plots = write_plots({"ppl": {}}, tmp_path, notes.append)
    assert "plots skipped" in plots["skipped"] and notes == [plots["skipped"]]
    assert not list(tmp_path.iterdir())
