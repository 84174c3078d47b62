"""StaticDecoder (static buffers / CUDA graphs) against the general forward, token by token."""

from __future__ import annotations

import pytest
import torch

import beacon
from beacon.decode import StaticDecoder, step_together

from .conftest import DEVICE, load_tiny, tokens
from .test_engine import ATOL, CONFIGS, IDS, assert_same_memory

GRAPHS = DEVICE == "cuda"  # on a GPU the same tests hold the captured CUDA graphs to the general path


def _step_alongside(lm, fast: StaticDecoder, slow, new: torch.Tensor) -> None:
    """Step `fast` and the general path on `slow` through `new` (b, n) one token at a time: same
    logits at every step, same memory after."""
    for t in range(new.shape[1]):
        got = fast.step(new[:, t : t + 1].to(lm.device))
        _, want = lm.forward(new[:, t : t + 1], slow, logits="last")
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert_same_memory(fast.memory(), slow)


@pytest.mark.parametrize("family, overrides", CONFIGS, ids=IDS)
def test_static_steps_equal_general_steps(family, overrides):
    """Logits of every decode step and the memory after them, across several window closes
    (handed to the general path) and interleaved beacons (static steps of two rows)."""
    lm = load_tiny(family, **overrides)
    memory = lm.condense(tokens(29, seed=4, batch=2))
    fast = StaticDecoder(lm, memory.fork(), graphs=GRAPHS)
    slow = memory.fork()
    _step_alongside(lm, fast, slow, tokens(50, seed=5, batch=2))
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
    _step_alongside(lm, fast, memory.fork(), tokens(40, seed=5))


def _roomy(overrides: dict) -> dict:
    """The config with a 64-token window (stride halved where it was shorter), so questions fit."""
    stride = overrides.get("beacon_stride")
    return overrides | {"beacon_window": 64, "beacon_stride": 32 if stride else 64}


@pytest.mark.parametrize(
    "family, overrides",
    [CONFIGS[0], CONFIGS[1], CONFIGS[3], CONFIGS[4], CONFIGS[7]],
    ids=["interleave", "interleave-sink", "segmentation", "append", "append-stride8"],
)
def test_a_question_read_at_once_equals_the_general_path(family, overrides):
    """read(): a question in one static step (raw and beacon rows padded to ROW_GRAIN) gives the
    general path's logits and memory, in a batch of 2; then decoding goes on from it exactly; a
    question that closes the window is handed to the general path."""
    lm = load_tiny(family, **_roomy(overrides))
    memory = lm.condense(tokens(140, seed=4, batch=2))
    assert memory.state.n_outer > 0 and memory.state.window_raw + 17 < lm.config.beacon_window
    for n_question in (5, 17):
        q = tokens(n_question, seed=20 + n_question, batch=2)
        fast = StaticDecoder(lm, memory.share(), graphs=GRAPHS)
        slow = memory.fork()
        got = fast.read(q.to(lm.device))
        _, want = lm.forward(q, slow, logits="last")
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        assert fast.stats["reads"] == 1 and fast.stats["general_steps"] == 0, fast.stats
        assert_same_memory(fast.memory(), slow)
        _step_alongside(lm, fast, slow, tokens(12, seed=9, batch=2))
        fast.close()
    long_q = tokens(lm.config.beacon_window + 3, seed=30, batch=2)  # closes the open window
    fast = StaticDecoder(lm, memory.share(), graphs=GRAPHS)
    got = fast.read(long_q.to(lm.device))
    slow = memory.fork()
    _, want = lm.forward(long_q, slow, logits="last")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert fast.stats["general_steps"] == 1 and fast.stats["reads"] == 0
    assert_same_memory(fast.memory(), slow)
    fast.close()
    assert_same_memory(memory, lm.condense(tokens(140, seed=4, batch=2)))  # the shared memory is untouched


def test_a_read_after_some_steps_drops_the_half_read_block():
    """Steps plan a block of tokens ahead; a read in the middle of it starts from where reading is."""
    lm = load_tiny(CONFIGS[4][0], **CONFIGS[4][1])  # append: blocks from the first step
    memory = lm.condense(tokens(21, seed=2))
    fast = StaticDecoder(lm, memory.share(), graphs=GRAPHS)
    slow = memory.fork()
    for t in range(3):
        fast.step(torch.tensor([[40 + t]], device=lm.device))
    assert fast.stats["blocks"] == 1
    q = tokens(6, seed=3)
    got = fast.read(q.to(lm.device))
    lm.forward(torch.tensor([[40, 41, 42]]), slow)
    _, want = lm.forward(q, slow, logits="last")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert_same_memory(fast.memory(), slow)


def test_buffers_and_graphs_serve_the_next_memory_from_the_pool():
    """A closed decoder's buffers go to the model's pool; a later memory of a size in the same
    bucket reads from them (stale slots hidden by the mask) exactly, and on a GPU replays the
    graphs captured for the first (no capture for a question of a length in the same bucket)."""
    lm = load_tiny(CONFIGS[0][0], **_roomy(CONFIGS[0][1]))
    lm.decode_buffers.clear()
    first, second = lm.condense(tokens(150, seed=1)), lm.condense(tokens(90, seed=2))
    fast = StaticDecoder(lm, first.share(), graphs=GRAPHS)
    fast.read(tokens(9, seed=3).to(lm.device))
    fast.step(torch.tensor([[5]], device=lm.device))
    fast.close()
    assert len(lm.decode_buffers) == 1
    with pytest.raises(RuntimeError, match="closed"):
        fast.step(torch.tensor([[5]], device=lm.device))
    kept = lm.decode_buffers._free[0]
    fast = StaticDecoder(lm, second.share(), graphs=GRAPHS)
    q = tokens(11, seed=4)  # 11 and 9 raw rows both pad to ROW_GRAIN
    got = fast.read(q.to(lm.device))
    assert fast._buf is kept and len(lm.decode_buffers) == 0
    slow = second.fork()
    _, want = lm.forward(q, slow, logits="last")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert fast.stats["captures"] == 0
    assert_same_memory(fast.memory(), slow)
    fast.close()
    lm.decode_buffers.clear()
    assert len(lm.decode_buffers) == 0


def test_the_pool_keeps_only_a_few_free_sets():
    from beacon.decode import BufferPool
    from beacon.decode_pool import Buffers

    lm = load_tiny(CONFIGS[0][0], **CONFIGS[0][1])
    pool = BufferPool(keep=2)
    like = lm.new_memory().keys[0]
    bufs = [Buffers.allocate(lm.parts, cap, like) for cap in (4096, 8192, 12288)]
    for b in bufs:
        pool.give(b)
    assert len(pool) == 2 and pool.take(4096, like) is None  # the oldest went first
    assert pool.take(8192, like) is bufs[1] and pool.take(8192, like) is None
    other = torch.zeros(like.shape[0] + 1, *like.shape[1:], dtype=like.dtype, device=like.device)
    assert pool.take(12288, other) is None  # another batch size never takes them


def test_bad_token_ids_are_refused_before_the_device_sees_them():
    """The static path checks ids as the general forward does (on a GPU an id out of range would be a
    device-side assert that poisons the process)."""
    lm = load_tiny(CONFIGS[0][0], **_roomy(CONFIGS[0][1]))
    memory = lm.condense(tokens(70, seed=1))
    vocab = lm.parts.vocab_size
    for bad in (vocab + 5, -1):
        q = torch.tensor([[5, 6, bad, 7]])
        fast = StaticDecoder(lm, memory.share(), graphs=GRAPHS)
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, "):
            fast.read(q.to(lm.device))
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, "):
            fast.step(torch.tensor([[bad]]))
        fast.close()
        for mode in ("eager", "static", "auto"):
            lm.decode_mode = mode
            try:
                with pytest.raises(ValueError, match=r"token ids must lie in \[0, "):
                    lm.generate(q, memory=memory, max_new_tokens=3)
            finally:
                lm.decode_mode = "auto"


def test_a_failed_general_step_leaves_the_decoder_whole(monkeypatch):
    """A question handed to the general path that fails there leaves the decoder on what it had read
    (state and memory agree), and reading goes on exactly."""
    lm = load_tiny(CONFIGS[0][0], **_roomy(CONFIGS[0][1]))
    memory = lm.condense(tokens(140, seed=4))
    fast = StaticDecoder(lm, memory.share(), graphs=GRAPHS)
    slow = memory.fork()
    q = tokens(9, seed=5)
    fast.read(q.to(lm.device))
    lm.forward(q, slow)
    with monkeypatch.context() as m:
        m.setattr(lm, "forward", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
        with pytest.raises(RuntimeError, match="out of memory"):
            fast.read(tokens(lm.config.beacon_window + 3, seed=6).to(lm.device))  # closes: general path
    assert fast.state == fast.memory().state == slow.state
    assert_same_memory(fast.memory(), slow)
    _step_alongside(lm, fast, slow, tokens(10, seed=7))
    fast.close()


def _pairs_after_questions(lm, ref, sizes, lanes: bool = False) -> tuple[list[StaticDecoder], list[StaticDecoder]]:
    """Per (memory tokens, batch, question tokens) of `sizes`: a decoder on `ref` (alone) and one on
    `lm` (together; in lanes of its arena where `lanes`) over the same memory, each after reading the
    same question (same logits)."""
    memories = [lm.condense(tokens(n, seed=s, batch=b)) for s, (n, b, _) in enumerate(sizes)]
    alone = [StaticDecoder(ref, m.fork(), graphs=GRAPHS) for m in memories]
    together = [StaticDecoder(lm, m.fork(), graphs=GRAPHS, lanes=lanes) for m in memories]
    for k, (a, t, (_, b, q)) in enumerate(zip(alone, together, sizes, strict=True)):
        question = tokens(q, seed=10 + k, batch=b).to(lm.device)
        torch.testing.assert_close(t.read(question), a.read(question), atol=ATOL, rtol=0)
    return alone, together


@pytest.mark.parametrize(
    "family, overrides",
    [CONFIGS[0], CONFIGS[1], CONFIGS[4], CONFIGS[9]],
    ids=["interleave-mix", "interleave-sink", "append", "stride4"],
)
def test_steps_together_equal_each_decoder_stepping_alone(family, overrides, monkeypatch):
    """Decoders over different memories (lengths, batches, window states) stepped together give
    each one's own logits and memory, through window closes (those steps go alone) and beacon rows;
    decoders of one shape (the last two pairs) attend stacked, in one call."""
    import beacon.layer

    stacked = []
    attend_slots = beacon.layer.attend_slots

    def spy(q, k, v, mask, scale):  # counts the stacked calls (a mask per batch row), computes as ever
        stacked.append(mask.dim() == 3)
        return attend_slots(q, k, v, mask, scale)

    monkeypatch.setattr(beacon.layer, "attend_slots", spy)
    lm = load_tiny(family, **overrides)
    sizes = ((29, 1, 5), (45, 2, 3), (12, 1, 7), (29, 1, 5), (45, 2, 3), (29, 2, 5))  # memory tokens, batch, question
    alone, together = _pairs_after_questions(lm, lm, sizes)
    new = [tokens(40, seed=20 + k, batch=b).to(lm.device) for k, (_, b, _) in enumerate(sizes)]
    for step in range(40):
        picks = [n[:, step : step + 1] for n in new]
        for a, tok, got in zip(alone, picks, step_together(together, picks), strict=True):
            assert isinstance(got, torch.Tensor), got
            torch.testing.assert_close(got, a.step(tok), atol=ATOL, rtol=0)
    for a, t in zip(alone, together, strict=True):
        assert_same_memory(t.memory(), a.memory())
        assert t.stats["together_steps"] >= 10 and t.stats["general_steps"] >= 2, t.stats  # both kinds ran
    assert sum(stacked) >= 10 * len(lm.parts.layers), sum(stacked)


def test_a_decoder_that_fails_alone_fails_alone():
    """A bad token, a closed decoder: that decoder's result is its exception, the others step on."""
    lm = load_tiny(CONFIGS[4][0], **_roomy(CONFIGS[4][1]))
    memories = [lm.condense(tokens(n, seed=n)) for n in (20, 30, 40)]
    decs = [StaticDecoder(lm, m.share(), graphs=GRAPHS) for m in memories]
    refs = [StaticDecoder(lm, m.fork(), graphs=GRAPHS) for m in memories]
    for d, r in zip(decs, refs, strict=True):
        q = tokens(4, seed=1).to(lm.device)
        d.read(q)
        r.read(q)
    decs[2].close()
    got = step_together(decs, [torch.tensor([[5]]), torch.tensor([[lm.parts.vocab_size + 1]]), torch.tensor([[5]])])
    assert isinstance(got[1], ValueError) and "token ids must lie in" in str(got[1])
    assert isinstance(got[2], RuntimeError) and "closed" in str(got[2])
    torch.testing.assert_close(got[0], refs[0].step(torch.tensor([[5]]).to(lm.device)), atol=ATOL, rtol=0)
    got = step_together(decs[:2], [torch.tensor([[6]]), torch.tensor([[6]])])  # the refused token was not read
    torch.testing.assert_close(got[1], refs[1].step(torch.tensor([[6]]).to(lm.device)), atol=ATOL, rtol=0)


def test_steps_together_refuse_a_decoder_given_twice():
    lm = load_tiny(CONFIGS[4][0], **_roomy(CONFIGS[4][1]))
    dec = StaticDecoder(lm, lm.condense(tokens(20, seed=1)), graphs=GRAPHS)
    with pytest.raises(ValueError, match="appears twice"):
        step_together([dec, dec], [torch.tensor([[5]]), torch.tensor([[6]])])
    with pytest.raises(ValueError, match=r"tokens must be \(batch 1, 1\)"):
        dec.step(torch.tensor([[5, 6]]))


def test_a_shared_pass_that_fails_midway_steps_each_decoder_alone(monkeypatch):
    """A step together that fails after some layers wrote their rows (out of device memory, say)
    is taken by each decoder alone: the same logits as stepping alone, nobody closed; stacking cut
    into several calls (STACK_BYTES) changes nothing either."""
    import beacon.decode
    import beacon.layer

    lm = load_tiny(CONFIGS[0][0], **_roomy(CONFIGS[0][1]))
    memories = [lm.condense(tokens(30, seed=s)) for s in range(4)]
    alone = [StaticDecoder(lm, m.fork(), graphs=GRAPHS) for m in memories]
    together = [StaticDecoder(lm, m.fork(), graphs=GRAPHS) for m in memories]
    for a, t in zip(alone, together, strict=True):
        q = tokens(5, seed=9).to(lm.device)
        torch.testing.assert_close(t.read(q), a.read(q), atol=ATOL, rtol=0)
    one = together[0]._buf.k_rot[0]
    monkeypatch.setattr(beacon.layer, "STACK_BYTES", 2 * 2 * one.numel() * one.element_size())  # two per call
    real = beacon.layer.step_layer_together
    failing = {"steps": {3, 4}}

    def fail_at_layer_one(parts, i, *args):
        if i == 1 and step in failing["steps"]:
            raise torch.OutOfMemoryError("injected: no room for the stacked slots")
        return real(parts, i, *args)

    monkeypatch.setattr(beacon.decode, "step_layer_together", fail_at_layer_one)
    new = tokens(12, seed=3).to(lm.device)
    for step in range(12):
        tok = new[:, step : step + 1]
        for a, got in zip(alone, step_together(together, [tok] * len(together)), strict=True):
            assert isinstance(got, torch.Tensor), got
            torch.testing.assert_close(got, a.step(tok), atol=ATOL, rtol=0)
    for a, t in zip(alone, together, strict=True):
        assert not t._closed
        assert t.stats["shared_pass_failures"] == 2 and t.stats["together_steps"] >= 8, t.stats
        assert_same_memory(t.memory(), a.memory())


@pytest.mark.parametrize(
    "family, overrides", [CONFIGS[0], CONFIGS[1], CONFIGS[4]], ids=["interleave-mix", "interleave-sink", "append"]
)
def test_lanes_step_as_each_decoder_alone(family, overrides):
    """Decoders in lanes of one arena step as one pass over the arena (a pad row for those without a
    beacon row this token, scratch rows for lanes not stepping: a decoder that sits a step out keeps
    its memory), through window closes (its lane handed back, another taken); more decoders than
    lanes, and a batch of two, take buffers of their own and the shared pass beside it. Each gets
    the logits and memory of stepping alone."""
    from .conftest import tiny_path

    lm = beacon.load(tiny_path(family), device=DEVICE, **overrides)  # its own: lanes change its pool
    ref = beacon.load(tiny_path(family), device=DEVICE, **overrides)
    lm.decode_buffers.enable_lanes(lm.parts, 4, 512, lm.dtype, lm.device)
    sizes = ((29, 1, 5), (45, 1, 3), (12, 1, 7), (29, 1, 6), (45, 1, 3), (29, 2, 5))  # memory tokens, batch, question
    alone, together = _pairs_after_questions(lm, ref, sizes, lanes=True)
    new = [tokens(40, seed=20 + k, batch=b).to(lm.device) for k, (_, b, _) in enumerate(sizes)]
    for step in range(40):
        sit_out = {step % 5} if step % 3 == 0 else set()  # now and then a decoder skips a step
        which = [k for k in range(len(sizes)) if k not in sit_out]
        if step in (30, 31, 32):  # only lanes 0 and 1 step: a step over the arena's front two lanes
            front = [k for k in which if together[k]._buf is not None and together[k]._buf.lane in (0, 1)]
            which = front if len(front) == 2 else which
        picks = [new[k][:, step : step + 1] for k in which]
        for k, tok, got in zip(which, picks, step_together([together[k] for k in which], picks), strict=True):
            assert isinstance(got, torch.Tensor), got
            torch.testing.assert_close(got, alone[k].step(tok), atol=ATOL, rtol=0)
    for a, t in zip(alone, together, strict=True):
        assert_same_memory(t.memory(), a.memory())
    lane_steps = [t.stats["lane_steps"] for t in together]
    assert min(sorted(lane_steps)[-4:]) >= 10 and lane_steps[5] == 0, lane_steps  # four lanes; the pair beside
    assert sum(t.stats["general_steps"] for t in together) >= 2  # window closes ran too
    assert 2 in lm.decode_buffers.lanes._fronts  # a step ran over lanes 0 and 1 only
    for t in together:
        t.close()
    assert lm.decode_buffers.lanes.busy == 0


def test_lanes_are_taken_only_by_memories_that_fit():
    """A lane takes a memory of batch 1 whose slots fit; others get buffers of their own; a lane
    comes back to the arena when its decoder closes."""
    from .conftest import tiny_path

    family, overrides = CONFIGS[4][0], _roomy(CONFIGS[4][1])
    lm = beacon.load(tiny_path(family), device=DEVICE, **overrides)
    lm.decode_buffers.enable_lanes(lm.parts, 2, 256, lm.dtype, lm.device)
    fits = StaticDecoder(lm, lm.condense(tokens(30, seed=1)), graphs=GRAPHS, lanes=True)
    fits.read(tokens(3, seed=2).to(lm.device))
    big = StaticDecoder(lm, lm.condense(tokens(300, seed=3)), graphs=GRAPHS, lanes=True)  # more slots than a lane
    big.read(tokens(3, seed=4).to(lm.device))
    pair = StaticDecoder(lm, lm.condense(tokens(30, seed=5, batch=2)), graphs=GRAPHS, lanes=True)
    pair.read(tokens(3, seed=6, batch=2).to(lm.device))
    plain = StaticDecoder(lm, lm.condense(tokens(30, seed=7)), graphs=GRAPHS)  # not asking for a lane
    plain.read(tokens(3, seed=8).to(lm.device))
    assert (fits._buf.lane, big._buf.lane, pair._buf.lane, plain._buf.lane) == (0, -1, -1, -1)
    assert lm.decode_buffers.lanes.busy == 1
    like = fits.memory().keys[0]
    assert lm.decode_buffers.free_lanes(256 - 2, like) == 1 and lm.decode_buffers.free_lanes(256 - 1, like) == 0
    fits.close()
    assert lm.decode_buffers.lanes.busy == 0
    with pytest.raises(ValueError, match="n_lanes >= 1"):
        lm.decode_buffers.enable_lanes(lm.parts, 0, 256, lm.dtype, lm.device)


def test_a_lane_step_that_fails_steps_each_alone_and_loses_no_lane(monkeypatch):
    """A pass over lanes that fails is run again as each decoder's step alone (the same logits as
    alone); a decoder whose own step fails closes and its lane goes back to the arena."""
    import beacon.decode

    from .conftest import tiny_path

    family, overrides = CONFIGS[0][0], _roomy(CONFIGS[0][1])
    lm = beacon.load(tiny_path(family), device=DEVICE, **overrides)
    ref = beacon.load(tiny_path(family), device=DEVICE, **overrides)
    lm.decode_buffers.enable_lanes(lm.parts, 3, 512, lm.dtype, lm.device)
    alone, together = _pairs_after_questions(lm, ref, [(30, 1, 5)] * 3, lanes=True)
    assert lm.decode_buffers.lanes.busy == 3
    arena_pass = beacon.decode._arena_pass

    def fails(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(beacon.decode, "_arena_pass", fails)
    picks = [torch.tensor([[7]]).to(lm.device)] * 3
    for a, tok, got in zip(alone, picks, step_together(together, picks), strict=True):
        torch.testing.assert_close(got, a.step(tok), atol=ATOL, rtol=0)
    assert [t.stats["shared_pass_failures"] for t in together] == [1, 1, 1]
    monkeypatch.setattr(beacon.decode, "_arena_pass", arena_pass)
    monkeypatch.setattr(beacon.decode, "step_layer", fails)  # every step fails, together and alone
    got = step_together(together, picks)
    assert all(isinstance(g, RuntimeError) for g in got), got
    assert lm.decode_buffers.lanes.busy == 0  # each failed decoder closed and gave its lane back
