"""`beacon --version` and `beacon info MODEL` (the other commands are tested with the pipelines)."""

from __future__ import annotations

import json

from click.testing import CliRunner

import beacon
from beacon_cli.main import main

from .conftest import tiny_path


def test_version():
    out = CliRunner().invoke(main, ["--version"])
    assert out.exit_code == 0 and beacon.__version__ in out.output


def test_info_describes_a_checkpoint_without_loading_it():
    out = CliRunner().invoke(main, ["info", str(tiny_path("qwen3")), "--json"])
    assert out.exit_code == 0, out.output
    facts = json.loads(out.output)
    assert facts["family"] == "qwen3" and facts["layers"] == 2 and facts["heads (q/kv)"] == "4/2"
    assert facts["beacon_weights_stored"] == 1 + 2 * 4  # embedding + q,k,v,o weights (no biases) x 2 layers
    assert facts["kv_bytes_per_entry_bf16"] == 2 * 2 * 2 * 16 * 2
    human = CliRunner().invoke(main, ["info", str(tiny_path("llama"))])
    assert human.exit_code == 0 and "beacon_window" in human.output


def test_info_on_a_missing_model_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = CliRunner().invoke(main, ["info", str(tmp_path / "nope")])
    assert out.exit_code != 0 and "not a local folder" in out.output
