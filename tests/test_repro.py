"""bench/repro: the pieces the GPU run relies on (split, samples, scoring windows) and a CPU smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import beacon
from beacon_actors.text import is_correct
from bench.repro import corpus, evaluate, tasks

from .conftest import tiny_path, tokens
from .test_train import char_tokenizer


def fake_site(root, packages: dict[str, dict[str, str]]):
    for top, files in packages.items():
        for rel, text in files.items():
            path = root / top / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return root


def code(n: int, tag: str) -> str:
    return "".join(f"def {tag}_{i}(x):\n    return x + {i}\n" for i in range(n))


def test_split_is_by_package_deterministic_and_dedups(tmp_path):
    shared = code(20, "shared")
    pkgs = {f"pkg{i}": {"a.py": code(30 + i, f"p{i}"), "b/c.py": code(5, f"q{i}")} for i in range(12)}
    pkgs["pkg0"]["dup.py"] = shared
    pkgs["pkg1"]["dup.py"] = shared
    pkgs["x.dist-info"] = {"skip.py": code(40, "meta")}
    site = fake_site(tmp_path / "site", pkgs)
    found = corpus.collect(site, max_bytes=10**9)
    assert "x.dist-info" not in found and len(found) == 12
    train, held = corpus.split(found, long_bytes=900, want_long=2, max_share=0.2)
    assert held and not set(train) & set(held) and sorted(train + held) == sorted(found)
    assert (train, held) == corpus.split(found, long_bytes=900, want_long=2, max_share=0.2)
    counts = corpus.write_split(found, train, held, tmp_path)
    rows = [json.loads(x) for name in ("train", "heldout") for x in (tmp_path / f"{name}.jsonl").open()]
    assert sum(r["text"] == shared for r in rows) == 1  # a vendored copy is kept once
    assert counts["train"]["files"] + counts["heldout"]["files"] == len(rows)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def test_samples_have_exact_length_a_needle_on_its_own_line_and_the_query(tok):
    hay = np.asarray(tok(code(200, "h"), add_special_tokens=False)["input_ids"])
    ends = tasks.line_ends(tok)
    rng = np.random.default_rng(0)
    for kind, style in (("passkey", "qa"), ("kv", "qa"), ("passkey", "code")):
        s = tasks.make_sample(tok, hay, ends, rng, length=600, kind=kind, style=style)
        text = tok.decode(s.prompt)
        assert len(s.prompt) == 600 and s.answer in text
        line = next(ln for ln in text.splitlines() if s.answer in ln)
        assert line.startswith(("PASSKEY", "# The pass key")) or line.split(" = ")[0].isupper()
        if style == "qa":
            assert text.endswith("\n# Answer:") and tok.decode(s.answer_ids[:-1]) == " " + s.answer
        else:
            assert text.endswith('assert PASSKEY == "')
    with pytest.raises(ValueError, match="leaves no room"):
        tasks.make_sample(tok, hay, ends, rng, length=20)


def test_answers_are_matched_exactly_and_the_chat_template_is_the_trained_prompt(tok):
    assert is_correct(' 48213"\n', "48213") and is_correct(" blue-moon", "blue-moon")
    assert is_correct("The pass key is 71942.", "71942") and is_correct("AMBER-FALCON", "amber-falcon")
    assert not is_correct(" 482130", "48213") and not is_correct(" 4821", "48213") and not is_correct(None, "1")
    assert is_correct("amber-falcon and 71942", ["71942", "Amber-Falcon"])  # a list: every item
    assert not is_correct("amber-falcon", ["amber-falcon", "71942"])
    assert not is_correct("anything", []) and not is_correct("x", ["x", ""])
    tok.chat_template = tasks.CHAT_TEMPLATE
    got = tok.apply_chat_template(
        [{"role": "user", "content": "What is X?"}], add_generation_prompt=True, tokenize=False
    )
    assert got == tasks.QA_PROMPT.format(question="What is X?")


def test_baseline_scoring_windows():
    model = beacon.load(tiny_path("llama")).model
    ids = tokens(300, batch=2)
    full = evaluate.nll_full(model, ids)
    torch.testing.assert_close(evaluate.nll_truncated(model, ids, 512), full)  # one block holds it all
    torch.testing.assert_close(evaluate.nll_sliding(model, ids, 512), full)
    trunc, slide = evaluate.nll_truncated(model, ids, 64), evaluate.nll_sliding(model, ids, 64)
    t = 130  # block of 64 starting at 126 (blocks overlap by one token)
    torch.testing.assert_close(trunc[:, t - 1], evaluate.logits_nll(model, ids[:, 126 : t + 1])[:, -1])
    t = 200  # scored by the block [160, 224): 40 tokens of context
    torch.testing.assert_close(slide[:, t - 1], evaluate.logits_nll(model, ids[:, 160 : t + 1])[:, -1])
    assert not (trunc == 0).any() and not (slide == 0).any()


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    work = tmp_path / "work"
    subprocess.run([sys.executable, "-m", "bench.repro.run", "--work", str(work), "--smoke"], check=True)
    assert (work / "status").read_text().strip() == "done"
    result = json.loads((work / "results" / "reproduction.json").read_text())
    assert set(result["eval_repro"]["perplexity"]) >= {"base-truncated", "base-sliding", "base-full", "beacon-32"}
    assert result["default_model_bytes"] < 16 * 2**20
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "bench.repro.run", "--work", str(work), "--collect", str(out)], check=True)
    assert {"reproduction.md", "beacon-tiny-code.tar", "logs.tar.gz"} <= {p.name for p in out.iterdir()}
