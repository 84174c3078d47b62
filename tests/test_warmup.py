"""warmup.py: after warm_up, documents of new lengths and memories of new sizes compile no graph.

The compiled layer is traced with backend="eager" (dynamo's graphs and guards, no code generation):
what recompiles is decided by the guards, the same for every backend, and tracing the tiny model
takes seconds where Inductor on 2 CPU cores takes minutes.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import beacon
from beacon import engine, layer
from beacon.forward import fits_graph
from beacon.warmup import warm_lengths, warm_up
from beacon.windows import build_chunk, group_steps, plan_steps

from .conftest import DEVICE, patched_checkpoint, tiny_path, tokens


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _traced(monkeypatch, path):
    """A fresh tiny model whose compiled layer is traced by dynamo only (dynamo's caches emptied
    first: its recompile limit counts every graph of pass_layer in the process)."""
    monkeypatch.setattr(engine, "compiled_layer", lambda: layer.compiled_layer("eager"))
    torch._dynamo.reset()
    lm = beacon.load(path, device=DEVICE, beacon_ratio=[2, 4], beacon_ratio_mix="step-random")
    lm.compile_layers = True
    lm.parallel_window = 4  # several windows per pass, as on a GPU; a document's last pass may hold one
    return lm


@pytest.fixture
def traced(monkeypatch):
    yield _traced(monkeypatch, tiny_path("qwen2"))
    torch._dynamo.reset()


@pytest.fixture
def traced_one_layer(monkeypatch, tmp_path):
    """As `traced` with one decoder layer, which as a pass's last computes keys and values only (no
    attention): 4 graphs to trace, seconds in CI; the slow tests below trace the two-layer model."""
    yield _traced(monkeypatch, patched_checkpoint(tmp_path, "qwen2", num_hidden_layers=1))
    torch._dynamo.reset()


def test_warm_lengths_take_every_kind_of_pass():
    """w = 16, 4 windows per pass: one open / closing window on an empty memory, two windows with
    the last open, then over a memory: one open, one closing, two with the last open, a full pass."""
    assert warm_lengths(16, 16, 4) == [15, 16, 31, 79, 80, 95, 128]
    assert warm_lengths(16, 16, 1) == [15, 16, 31, 32, 47]
    assert warm_lengths(16, 16, 4, whole_windows=True) == [16, 80, 128]
    assert warm_lengths(16, 8, 2) == [15, 16, 23, 31, 32, 39, 40]  # stride < window: windows close every 8


def test_passes_with_a_count_of_one_run_eager():
    """fits_graph: the last pass of a document whose open window holds one raw token (or one
    beacon) runs eager; a document's other passes, and open windows of several beacons, compile."""
    cfg = beacon.BeaconConfig(beacon_window=16, beacon_stride=16, beacon_ratio=[4], beacon_parallel_window=1)

    def fits(n: int) -> list[bool]:
        steps = plan_steps(cfg, beacon.WindowState(), n, max_positions=4096)
        return [fits_graph(build_chunk(cfg, g)) for g in group_steps(cfg, steps)]

    assert fits(33) == [True, True, False]  # 1 raw row
    assert fits(36) == [True, True, False]  # 4 raw rows, 1 beacon
    assert fits(40) == [True, True, True]  # 8 raw rows, 2 beacons
    assert fits(32) == [True, True]


def _read_new_lengths(lm) -> tuple[int, int]:
    """(graphs the warm-up compiled, graphs compiled after it) over new lengths and a memory read in pieces."""
    before = _graphs()
    warm_up(lm)
    warmed = _graphs()
    for n in (57, 130, 333, 517, 1001):  # remainders 9, 2, 13, 5, 9 tokens: open windows of 0-6 beacons
        lm.condense(tokens(n, seed=n))
    memory = None
    for n in (37, 100, 163, 5, 211):  # one memory read in pieces that end mid-window
        memory = lm.condense(tokens(n, seed=n), memory)
    assert warmed < torch._dynamo.config.recompile_limit  # none fell back to eager past the limit
    return warmed - before, _graphs() - warmed


def test_new_lengths_and_memory_sizes_compile_nothing_after_warm_up(traced_one_layer):
    """Lengths and memory sizes are symbols, never guards: a graph per length would compile here."""
    warmed, after = _read_new_lengths(traced_one_layer)
    assert warmed > 0 and after == 0, f"{after} graphs compiled after the warm-up"


@pytest.mark.slow
def test_new_lengths_compile_nothing_with_the_last_layers_trimmed(traced):
    """Two layers: the layer before the last is trimmed to the rows the memory keeps (its own graphs)."""
    warmed, after = _read_new_lengths(traced)
    assert warmed > 0 and after == 0, f"{after} graphs compiled after the warm-up"


@pytest.mark.slow
def test_batches_compile_nothing_after_warm_up(traced):
    """condense_many reads documents together (batch >= 2 has graphs of its own) and their last
    windows one at a time: warm_up(batch_sizes=(1, 8)) covers both."""
    lm = traced
    warm_up(lm, batch_sizes=(1, 8))
    warmed = _graphs()
    lm.condense_many([tokens(n, seed=n) for n in (70, 150, 230, 333, 41)], batch_size=8)
    lm.condense_many([tokens(n, seed=n) for n in (517, 999)], batch_size=8)
    assert _graphs() == warmed, f"{_graphs() - warmed} graphs compiled after the warm-up"


def test_eager_on_a_cpu_compiles_nothing_so_no_warm_up():
    """Eager layers off a GPU compile nothing (no FlexAttention there): warm_up returns at once."""
    from beacon.warmup import compiles

    lm = beacon.load(tiny_path("qwen2"), device="cpu")
    lm.parallel_window = 4
    assert not compiles(lm)
    assert warm_up(lm) == 0.0
    lm.compile_layers = True
    assert compiles(lm)


def test_warm_up_at_one_ratio_covers_documents_at_another(monkeypatch):
    """Whether "auto" reads a pass's memory apart (flex-outer) or with the window (flex) depends on
    the memory's size, so on the ratio: warmed up at ratio 2, where the warm-up's memory is large
    enough to be attended apart, documents at ratio 8 (smaller memories) compile nothing. (A warm-up
    that left flex over a memory out cost a 32K document at ratio 8 23.6 s on its first call against
    0.25 s after, on an H100; here it would be 1 graph.)

    FlexAttention's kinds on a CPU: flex_fits forced, dynamo traces FlexAttention's graphs as on a
    GPU; window 64 so that a pass spans several of its 128-row blocks, as real windows do."""
    from beacon import attention, forward, warmup

    monkeypatch.setattr(engine, "compiled_layer", lambda: layer.compiled_layer("eager"))
    monkeypatch.setattr(forward, "flex_fits", lambda *args: True)
    monkeypatch.setattr(warmup, "flex_fits", lambda *args: True)
    monkeypatch.setattr(attention, "OUTER_APART_MIN", 128)  # ratio 2 reaches it after a pass, ratio 8 not
    torch._dynamo.reset()
    lm = beacon.load(tiny_path("qwen2"), device=DEVICE, beacon_ratio=[2], beacon_window=64, beacon_stride=64)
    lm.compile_layers = True
    lm.parallel_window = 4
    try:
        warm_up(lm)
        warmed = _graphs()
        lm.config = lm.config.replace(beacon_ratio=[8])
        lm.condense(tokens(1300, seed=1))
        assert _graphs() == warmed, f"{_graphs() - warmed} graphs compiled after the warm-up"
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("content", [b"", b"not a compile cache" * 100])
def test_a_damaged_compile_cache_is_ignored_with_one_warning(tmp_path, content):
    """An empty, cut-short or foreign file: load_cache warns once, names the file, loads nothing and
    raises nothing (the warm-up compiles as without one; save_cache rewrites it)."""
    from beacon.warmup import load_cache

    path = tmp_path / "compile_cache.bin"
    path.write_bytes(content)
    with pytest.warns(UserWarning, match="compile_cache.bin ignored") as caught:
        assert load_cache(path) is False
    assert len(caught) == 1
    assert load_cache(tmp_path / "missing.bin") is False


def test_a_compiler_that_fails_falls_back_to_eager_with_one_warning(monkeypatch):
    """A backend that cannot compile (as on a GPU without the kernels): warm_up warns once and
    switches the model to what compiles nothing; its memories are then the eager model's."""

    def no_kernels(gm, example_inputs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(engine, "compiled_layer", lambda: layer.compiled_layer(no_kernels))
    torch._dynamo.reset()
    try:
        lm = beacon.load(tiny_path("qwen2"), device=DEVICE)
        lm.parallel_window = 4
        lm.compile_layers = True
        with pytest.warns(UserWarning, match="compiling failed during the warm-up") as caught:
            warm_up(lm)
        assert len(caught) == 1 and not lm.compile_layers
        eager = beacon.load(tiny_path("qwen2"), device=DEVICE)
        eager.parallel_window = 4
        ids = tokens(333, seed=3)
        got, want = lm.condense(ids).export()[0], eager.condense(ids).export()[0]
        for key in ("keys", "values"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
    finally:
        torch._dynamo.reset()
