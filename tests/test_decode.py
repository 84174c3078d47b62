"""StaticDecoder (static buffers / CUDA graphs) against the general forward, token by token."""

from __future__ import annotations

import pytest
import torch

from beacon.decode import StaticDecoder

from .conftest import DEVICE, load_tiny, tokens
from .test_engine import ATOL, CONFIGS, IDS, assert_same_memory

GRAPHS = DEVICE == "cuda"  # on a GPU the same tests hold the captured CUDA graphs to the general path


@pytest.mark.parametrize("family, overrides", CONFIGS, ids=IDS)
def test_static_steps_equal_general_steps(family, overrides):
    """Logits of every decode step and the memory after them, across several window closes
    (handed to the general path) and interleaved beacons (static steps of two rows)."""
    lm = load_tiny(family, **overrides)
    memory = lm.condense(tokens(29, seed=4, batch=2))
    fast = StaticDecoder(lm, memory.fork(), graphs=GRAPHS)
    slow = memory.fork()
    new = tokens(50, seed=5, batch=2)
    for t in range(new.shape[1]):
        got = fast.step(new[:, t : t + 1].to(lm.device))
        _, want = lm.forward(new[:, t : t + 1], slow, logits="last")
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert_same_memory(fast.memory(), slow)
    stats = fast.stats
    assert stats["static_steps"] > 30 and stats["general_steps"] >= 2 and stats["blocks"] >= 2, stats


def test_static_decoder_continues_after_its_memory_is_taken():
    """memory() mid-run is a full Memory: the general path can go on from it exactly."""
    lm = load_tiny(CONFIGS[0][0], **CONFIGS[0][1])
    memory = lm.condense(tokens(20, seed=6))
    fast = StaticDecoder(lm, memory.fork(), graphs=GRAPHS)
    for t in range(7):
        fast.step(torch.tensor([[10 + t]], device=lm.device))
    mid = fast.memory()
    ref = memory.fork()
    lm.forward(torch.arange(10, 17)[None], ref)
    assert_same_memory(mid, ref)
    _, a = lm.forward(torch.tensor([[3]]), mid, logits="last")
    b = fast.step(torch.tensor([[3]], device=lm.device))
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "family, overrides",
    [CONFIGS[0], CONFIGS[2], CONFIGS[5], CONFIGS[9]],
    ids=["interleave", "se-interleave", "append-sink", "stride4"],
)
def test_generate_is_the_same_in_every_decode_mode(family, overrides):
    lm = load_tiny(family, **overrides)
    doc, q = tokens(41, seed=7), tokens(5, seed=8)
    memory = lm.condense(doc)
    outs = {}
    try:
        for mode in ("eager", "static", "auto"):
            lm.decode_mode = mode
            outs[mode] = (
                lm.generate(q, memory=memory, max_new_tokens=45),
                lm.generate(q, memory=memory, max_new_tokens=30, do_sample=True, seed=2, temperature=1.3, top_k=50),
            )
    finally:
        lm.decode_mode = "auto"
    assert torch.equal(outs["eager"][0], outs["static"][0]) and torch.equal(outs["eager"][0], outs["auto"][0])
    assert torch.equal(outs["eager"][1], outs["static"][1]) and torch.equal(outs["eager"][1], outs["auto"][1])
    assert outs["eager"][0].shape == (1, 45)


def test_eos_checked_every_few_tokens_gives_the_same_tokens():
    """generate() tests for eos once per 8 tokens; what it returns is still cut where all ended."""
    lm = load_tiny(CONFIGS[0][0], **CONFIGS[0][1])
    q = tokens(9, seed=11, batch=2)
    free = lm.generate(q, max_new_tokens=30)
    eos = int(free[0, 2])
    stopped = lm.generate(q, max_new_tokens=30, eos_token_id=eos)
    for row in range(2):
        seq = free[row].tolist()
        end = seq.index(eos) + 1 if eos in seq else len(seq)
        assert stopped[row, :end].tolist() == seq[:end]
        assert all(t == eos for t in stopped[row, end:].tolist())
    ends = [(free[r].tolist() + [eos]).index(eos) + 1 for r in range(2)]
    assert stopped.shape[1] == min(30, max(ends))


def test_bad_decode_mode_is_refused():
    lm = load_tiny(CONFIGS[0][0], **CONFIGS[0][1])
    lm.decode_mode = "fast"
    try:
        with pytest.raises(ValueError, match="decode_mode"):
            lm.generate(tokens(3), max_new_tokens=2)
    finally:
        lm.decode_mode = "auto"
    if DEVICE != "cuda":
        with pytest.raises(ValueError, match="CUDA"):
            StaticDecoder(lm, lm.new_memory(), graphs=True)


@pytest.mark.slow
def test_compiled_steps_equal_general_steps():
    """decode_mode="compiled": the step through torch.compile (and CUDA graphs on a GPU)."""
    lm = load_tiny(CONFIGS[0][0], **CONFIGS[0][1])
    memory = lm.condense(tokens(29, seed=4))
    fast = StaticDecoder(lm, memory.fork(), graphs=GRAPHS, compiled=True)
    slow = memory.fork()
    new = tokens(40, seed=5)
    for t in range(new.shape[1]):
        got = fast.step(new[:, t : t + 1].to(lm.device))
        _, want = lm.forward(new[:, t : t + 1], slow, logits="last")
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert_same_memory(fast.memory(), slow)
