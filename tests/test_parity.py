"""Parity with the official implementation, held to golden outputs it produced.

tests/fixtures/parity/golden.json was made by tests/parity/ref_harness.py (see its docstring for
the reference commit, versions and command) on the tiny checkpoints in tests/fixtures/tiny.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import beacon

from .conftest import DEVICE, FIXTURES, patched_checkpoint, tiny_path

sys.path.insert(0, str(Path(__file__).parent / "parity"))
import cases  # noqa: E402

GOLDEN = json.loads((FIXTURES / "parity" / "golden.json").read_text())


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory):
    return tmp_path_factory.mktemp("parity")


def _load(case: dict, tmp: Path) -> beacon.BeaconLM:
    folder = tiny_path(case["family"])
    if case.get("hf_config"):
        folder = patched_checkpoint(tmp / case["name"], case["family"], **case["hf_config"])
    return beacon.load(folder, device=DEVICE, **case["beacon"])


def test_golden_file_records_its_provenance():
    assert GOLDEN["versions"]["transformers"] == "4.44.2"
    assert len(GOLDEN["reference_commit"]) == 40
    assert set(GOLDEN["cases"]) == {c["name"] for c in cases.CASES}


@pytest.mark.parametrize("index", range(len(cases.CASES)), ids=[c["name"] for c in cases.CASES])
def test_matches_reference(index, tmp_module):
    case = cases.CASES[index]
    gold = GOLDEN["cases"][case["name"]]
    lm = _load(case, tmp_module)
    ids = torch.tensor([cases.token_ids(index, cases.NLL_LEN)])

    nll = lm.nll(ids)[0].cpu()
    ref = torch.tensor(gold["nll"])
    assert nll.shape == ref.shape
    assert (nll - ref).abs().max().item() < 1e-4
    assert abs(nll.mean().item() - gold["nll_mean"]) < 1e-4

    prompt = ids[:, : cases.PROMPT_LEN]
    memory = lm.condense(prompt)
    assert list(memory.sizes()) == gold["sizes_after_prompt"]

    new = lm.generate(prompt, max_new_tokens=cases.NEW_TOKENS)[0].cpu().tolist()
    assert new == gold["tokens"]  # generation crosses window boundaries at 64 and 80
    read = torch.cat([prompt, torch.tensor([new[:-1]])], dim=1)  # the last token is never read
    assert list(lm.condense(read).sizes()) == gold["sizes_after_generate"]
