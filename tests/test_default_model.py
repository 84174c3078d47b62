"""bench.default_model: token streams wide enough for a base's vocabulary, and a WORK folder that
stays with the base it was made for (its text is tokenized with that base's tokenizer)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.default_model.run import SMOKE, model_dir, probe, run
from bench.default_model.text import read_tokens, token_suffix, tokenize


class Tokenizer:
    """A tokenizer of `n` ids whose tokens are fixed ids per character (enough for tokenize)."""

    def __init__(self, n: int):
        self.n, self.eos_token_id = n, n - 1

    def __len__(self) -> int:
        return self.n

    def __call__(self, rows, add_special_tokens=False):
        return {"input_ids": [[self.n - 2 - ord(c) for c in row] for row in rows]}


@pytest.mark.parametrize(("n", "suffix"), [(49152, ".u16"), (151936, ".u32")])
def test_token_streams_hold_every_id_of_the_vocabulary(tmp_path, n, suffix):
    tok = Tokenizer(n)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("ab", "c")))
    assert token_suffix(tok) == suffix
    assert tokenize(tmp_path / "train.jsonl", tok, tmp_path / f"train{suffix}") == 5
    expected = [n - 2 - ord("a"), n - 2 - ord("b"), n - 1, n - 2 - ord("c"), n - 1]
    assert read_tokens(tmp_path, "train").tolist() == expected and read_tokens(tmp_path, "train").dtype == np.int64
    with pytest.raises(ValueError, match="no heldout.u16 or heldout.u32"):
        read_tokens(tmp_path, "heldout")


def test_a_work_folder_stays_with_its_base(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "base").write_text(json.dumps({"base": "smollm2-135m-instruct", "folder": "x"}))
    with pytest.raises(ValueError, match="was made for base smollm2-135m-instruct, not qwen2.5-coder-0.5b-instruct"):
        run(tmp_path, "base", smoke=True, base_name="qwen2.5-coder-0.5b-instruct")
    assert model_dir(tmp_path, "smollm2-135m-instruct").name == "smollm2-135m-beacon"
    assert model_dir(tmp_path, "qwen2.5-coder-0.5b-instruct").name == "qwen2.5-coder-0.5b-beacon"


def test_the_finalized_ratios_keep_a_document_that_fits_raw_and_condense_a_longer_one():
    from beacon.config import BeaconConfig
    from beacon.windows import WindowState, choose_ratio
    from bench.default_model.run import INFERENCE_MIX, INFERENCE_RATIOS, WINDOW

    cfg = BeaconConfig(beacon_window=WINDOW, beacon_stride=WINDOW, beacon_ratio=INFERENCE_RATIOS,
                       beacon_ratio_mix=INFERENCE_MIX)  # fmt: skip
    picked = {n: choose_ratio(cfg, WindowState(seed=0), window_start=0, known_length=n, max_positions=32768,
                              training=False)[0] for n in (1_000, 31_744, 31_745, 64_000, 200_000)}  # fmt: skip
    # 1,024 positions stay free for the question: 31,744 tokens fit the 32K window raw, one more is condensed
    assert picked == {1_000: 0, 31_744: 0, 31_745: 2, 64_000: 4, 200_000: 8}


def test_compact_cost_scores_each_delta_form_and_restores_the_trained_weights():
    import torch

    from bench.default_model.run import compact_cost

    from .test_bases import trained

    lm = trained()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    stream = np.random.default_rng(0).integers(3, 250, 400)
    cost = compact_cost(lm, stream, samples=2, length=96, continuation=16, ratios=(2, 8))
    assert set(cost) == {"fp32", "int8", "int4"} and all(set(c) == {"2", "8"} for c in cost.values())
    assert all(np.isfinite(v) for c in cost.values() for v in c.values())
    assert abs(cost["int8"]["8"] - cost["fp32"]["8"]) < 0.02  # int8 rounding costs next to nothing
    assert cost["int4"] != cost["fp32"]  # the forms are really scored, not the trained weights thrice
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    with pytest.raises(ValueError, match="fewer than one span of 96"):
        compact_cost(lm, stream[:50], samples=1, length=96)


def test_the_speed_knobs_change_the_speed_not_the_loss(tmp_path):
    """--parallel-window, --attn-mode and --checkpoint-layers reach the training run (the probe records
    them) and compute the same first step as one window a pass under the dense mask."""
    from .conftest import REPO

    first = {}
    for knobs in ({"parallel_window": 1, "attn_mode": "dense", "checkpoint_layers": False},
                  {"parallel_window": 3, "attn_mode": "auto", "checkpoint_layers": True}):  # fmt: skip
        p = SMOKE | {"lm_max": 2048, "qa_max": 2048} | knobs
        facts = probe(tmp_path / str(knobs["parallel_window"]), str(REPO / "models" / "beacon-tiny-code"), p, 0.01)
        assert {k: facts[k] for k in knobs} == knobs and facts["step"] >= 1
        assert facts["windows_per_pass"] == knobs["parallel_window"]  # what the run read a pass, as asked
        first[knobs["parallel_window"]] = facts["log"][0]
    assert first[1]["step"] == first[3]["step"] == 1
    assert first[3]["loss"] == pytest.approx(first[1]["loss"], abs=1e-4)
    assert first[3]["grad_norm"] == pytest.approx(first[1]["grad_norm"], rel=1e-3)
