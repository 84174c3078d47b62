"""Shared fixtures: tiny random checkpoints of each family (committed under tests/fixtures/tiny)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import beacon

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny"
REPO = Path(__file__).parent.parent
FAMILIES = ["qwen2", "llama", "mistral", "qwen3"]
# BEACON_TEST_DEVICE=cuda runs the engine tests on a GPU (float32, TF32 off) — see docs/gpu.md
DEVICE = os.environ.get("BEACON_TEST_DEVICE", "cpu")
if DEVICE == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def tiny_path(family: str) -> Path:
    return TINY / family


def patched_checkpoint(tmp_path: Path, family: str, **config_changes) -> Path:
    """A copy of a tiny checkpoint with config.json fields changed."""
    dst = tmp_path / f"{family}-patched"
    shutil.copytree(tiny_path(family), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


_CACHE: dict = {}


def load_tiny(family: str, **overrides) -> beacon.BeaconLM:
    """A tiny model with beacon overrides (cached: tests must not mutate it)."""
    key = (family, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items())))
    if key not in _CACHE:
        _CACHE[key] = beacon.load(tiny_path(family), device=DEVICE, **overrides)
    return _CACHE[key]


def tokens(n: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 256, (batch, n), generator=g)


@pytest.fixture
def tiny():
    return load_tiny


@pytest.fixture(autouse=True)
def no_base_downloads(monkeypatch, tmp_path_factory):
    """No test downloads a base from PyPI (the default model's is 491 MB): an empty base cache and pip
    without an index, so a test that loaded the default model by mistake fails at once instead.
    Tests of beacon.bases point pip at their own local wheels (PIP_FIND_LINKS)."""
    monkeypatch.setenv("BEACON_CACHE", str(tmp_path_factory.getbasetemp() / "beacon-cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
