"""Shared pieces of the snapshot tests: beacon configs, memory comparison, child-process scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from beacon import Memory

REPO = Path(__file__).resolve().parent.parent

# beacon settings the tiny checkpoints (window 16) are run with
CONFIGS = {
    "append": dict(beacon_pos="append", beacon_attn="full-coverage", beacon_ratio=[4], beacon_param=["q", "k", "v"]),
    "interleave": dict(
        beacon_pos="interleave", beacon_attn="full-coverage", beacon_ratio=[2, 4], beacon_param=["q", "k", "v"]
    ),
    # overlapping stride (8 raw tokens carried), a sink, step-expansion, two ratios drawn per window
    "append-stride-sink": dict(
        beacon_pos="append",
        beacon_attn="step-expansion",
        beacon_ratio=[2, 8],
        beacon_stride=8,
        beacon_sink_size=2,
        beacon_param=["q", "k", "v"],
    ),
}


def assert_same_memory(got: Memory, want: Memory) -> None:
    """Bit-identical tensors, same dtype and the same window state."""
    assert got.state == want.state
    assert got.dtype == want.dtype and got.n_layers == want.n_layers
    for a, b in zip(got.keys + got.values, want.keys + want.values, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a.cpu(), b.cpu())


def run_child(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python process at the repo root (raises with its output if it fails)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"child failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out
