"""BeaconLM on tiny random models: base equivalence, piece invariance, parallel windows, generation."""

from __future__ import annotations

import pytest
import torch

from beacon import Memory

from .conftest import DEVICE, FAMILIES, load_tiny, tokens

ATOL = 2e-5


@torch.no_grad()
def all_logits(lm, ids, memory=None, pieces=None):
    """Logits of every token, reading `ids` at once or in `pieces` (sizes); returns (memory, logits)."""
    memory = memory if memory is not None else lm.new_memory(ids.shape[0])
    out, at = [], 0
    for n in pieces or [ids.shape[1]]:
        memory, lg = lm.forward(ids[:, at : at + n], memory, logits="all")
        out.append(lg)
        at += n
    assert at == ids.shape[1]
    return memory, torch.cat(out, dim=1)


def assert_same_memory(a: Memory, b: Memory, atol=ATOL):
    assert a.state == b.state
    ta, _ = a.export()
    tb, _ = b.export()
    for key in ("keys", "values"):
        assert ta[key].shape == tb[key].shape
        torch.testing.assert_close(ta[key], tb[key], atol=atol, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_beacon_off_matches_plain_hf(family):
    """Append mode within one window reads no beacons: logits equal the base model's."""
    lm = load_tiny(family, beacon_pos="append", beacon_window=64, beacon_stride=64, beacon_ratio=[4])
    ids = tokens(40, seed=1, batch=2)
    _, ours = all_logits(lm, ids)
    with torch.no_grad():
        ref = lm.model(input_ids=ids.to(lm.device)).logits.float()
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    # and in pieces (a KV-cache-like continuation)
    _, pieces = all_logits(lm, ids, pieces=[1, 10, 29])
    torch.testing.assert_close(pieces, ref, atol=ATOL, rtol=0)


CONFIGS = [
    (
        "qwen2",
        dict(beacon_pos="interleave", beacon_attn="full-coverage", beacon_ratio=[2, 4, 8], beacon_ratio_mix="sequence"),
    ),
    ("qwen3", dict(beacon_pos="interleave", beacon_attn="full-coverage", beacon_ratio=[4], beacon_sink_size=5)),
    ("qwen2", dict(beacon_pos="interleave", beacon_attn="step-expansion", beacon_ratio=[2], beacon_attend_prev=False)),
    ("llama", dict(beacon_pos="interleave", beacon_attn="segmentation", beacon_ratio=[4], beacon_attend_prev=False)),
    ("mistral", dict(beacon_pos="append", beacon_attn="full-coverage", beacon_ratio=[4])),
    ("llama", dict(beacon_pos="append", beacon_attn="step-expansion", beacon_ratio=[2], beacon_sink_size=3)),
    ("qwen3", dict(beacon_pos="append", beacon_attn="segmentation", beacon_ratio=[4], beacon_attend_prev=False)),
    ("mistral", dict(beacon_pos="append", beacon_attn="full-coverage", beacon_stride=8, beacon_ratio=[4])),
    (
        "llama",
        dict(
            beacon_pos="append",
            beacon_attn="step-expansion",
            beacon_stride=8,
            beacon_ratio=[2, 8],
            beacon_ratio_mix="step-random",
            beacon_attend_prev=False,
        ),
    ),
    (
        "qwen2",
        dict(
            beacon_pos="append",
            beacon_attn="segmentation",
            beacon_stride=4,
            beacon_ratio=[2],
            beacon_sink_size=2,
            beacon_param=["q", "k", "v", "o"],
        ),
    ),
    (
        "mistral",
        dict(beacon_pos="append", beacon_attn="full-coverage", beacon_ratio=[0, 4], beacon_ratio_mix="sequence"),
    ),
    (
        "qwen2",
        dict(beacon_pos="interleave", beacon_attn="full-coverage", beacon_ratio=[0, 2], beacon_ratio_mix="sequence"),
    ),
    (
        "llama",
        dict(
            beacon_pos="interleave",
            beacon_attn="full-coverage",
            beacon_ratio=[2, 4, 8],
            beacon_ratio_mix="instance-random",
            beacon_param=[],
        ),
    ),
]
IDS = [f"{f}-{c['beacon_pos']}-{c['beacon_attn']}-{c['beacon_ratio']}-{i}" for i, (f, c) in enumerate(CONFIGS)]


@pytest.mark.parametrize("family, overrides", CONFIGS, ids=IDS)
def test_pieces_of_any_size_give_the_same_memory_and_logits(family, overrides):
    lm = load_tiny(family, **overrides)
    ids = tokens(75, seed=2)
    whole_mem, whole = all_logits(lm, ids)
    pieces = [1, 1, 3, 16, 5, 1, 7, 20, 2, 19]
    piece_mem, piece = all_logits(lm, ids, pieces=pieces)
    torch.testing.assert_close(piece, whole, atol=ATOL, rtol=0)
    assert_same_memory(piece_mem, whole_mem)
    one_by_one_mem, one = all_logits(lm, ids, pieces=[1] * 75)
    torch.testing.assert_close(one, whole, atol=ATOL, rtol=0)
    assert_same_memory(one_by_one_mem, whole_mem)


@pytest.mark.parametrize("family, overrides", CONFIGS, ids=IDS)
def test_condensing_trims_the_last_two_layers_to_the_kept_rows(family, overrides):
    """Without logits a pass needs the last layer's keys/values of the rows the memory keeps only:
    the layer before the last runs o_proj and MLP on those rows, the last projects only them. The
    memory equals that of passes asked for every logit (nothing trimmed), in pieces that leave
    windows half-read (carried raw rows are kept), with parallel windows and in a batch of two."""
    lm = load_tiny(family, **overrides, beacon_parallel_window=2)
    fed = {"mlp": [], "last": []}
    hooks = [
        lm.parts.layers[-2].mlp.register_forward_pre_hook(lambda m, a: fed["mlp"].append(a[0].shape[1])),
        lm.parts.layers[-1].self_attn.k_proj.register_forward_pre_hook(lambda m, a: fed["last"].append(a[0].shape[1])),
    ]
    try:
        for batch in (1, 2):
            ids = tokens(75, seed=24, batch=batch)
            full_mem, _ = all_logits(lm, ids, pieces=[30, 25, 20])
            n_untrimmed = len(fed["mlp"])
            memory = lm.new_memory(batch)
            with torch.no_grad():
                for at, n in ((0, 30), (30, 25), (55, 20)):
                    memory = lm.condense(ids[:, at : at + n], memory)
            assert_same_memory(memory, full_mem)
            trimmed, last = fed["mlp"][n_untrimmed:], fed["last"][n_untrimmed:]
            # every beaconed pass was trimmed: fewer rows reached the MLP before the last layer
            assert len(trimmed) == len(last) and sum(trimmed) < sum(fed["mlp"][:n_untrimmed])
            fed["mlp"].clear()
            fed["last"].clear()
    finally:
        for h in hooks:
            h.remove()


def test_pass_plans_are_reused_and_never_stale():
    """The engine plans a pass once (forward.PlanCache): the same document again reuses every plan
    and gives the same memory bit for bit; an edited config, another mode or batch size plans anew
    (a stale plan would condense with the old ratio); the cache stays bounded."""
    import beacon
    from beacon.forward import PlanCache

    from .conftest import tiny_path

    def fresh(ratio: int = 2):
        return beacon.load(tiny_path("qwen2"), device=DEVICE, beacon_pos="interleave", beacon_ratio=[ratio],
                           beacon_parallel_window=2)  # fmt: skip

    lm = fresh()
    ids = tokens(70, seed=30)
    with torch.no_grad():
        first = lm.condense(ids)
        misses, hits = lm._plans.misses, lm._plans.hits
        again = lm.condense(ids)
        assert lm._plans.misses == misses and lm._plans.hits > hits  # every plan of the call reused
        for a, b in zip(first.keys + first.values, again.keys + again.values, strict=True):
            assert torch.equal(a, b)
        lm.config.beacon_ratio = [4]  # edited in place: must not reuse the ratio-2 plans
        edited = lm.condense(ids)
        assert_same_memory(edited, fresh(4).condense(ids))
        assert edited.state.n_beacons != first.state.n_beacons
        lm.attn_mode = "dense"
        misses = lm._plans.misses
        assert_same_memory(lm.condense(ids), edited)
        assert lm._plans.misses > misses
        both = lm.condense(torch.cat([ids, ids]))  # a batch of two: plans of their own
        assert_same_memory(both.select([1]), edited)
        if DEVICE == "cpu":  # flex-outer, inference only, runs on the CPU's reference kernels
            lm.attn_mode = "flex-outer"
            assert_same_memory(lm.condense(ids), edited)
            with torch.enable_grad(), pytest.raises(ValueError, match="for inference"):
                lm.forward(ids)  # the same pass with gradients: its no-grad plan must not be reused
        assert_same_memory(lm.condense(torch.cat([ids, ids])).select([1]), edited)
        for n in range(20, 80, 3):
            lm.condense(ids[:, :n])
        assert len(lm._plans._entries) <= lm._plans.size
        entries = list(lm._plans._entries)
        lm.parallel_window = 1  # one window a pass on every device (a GPU otherwise reads ~8K rows a pass)
        lm.condense(tokens(4 * lm._plans.size * 16 + 5, seed=31))  # more passes than the cache holds
        assert list(lm._plans._entries) == entries  # planned afresh: no plan of the call evicts another
    lm.attn_mode, lm.parallel_window = "auto", None
    cache = PlanCache(size=2)
    assert [cache.get(k, lambda k=k: k * 10) for k in (1, 2, 1, 3, 2)] == [10, 20, 10, 30, 20]
    assert (cache.hits, cache.misses, list(cache._entries)) == (1, 4, [3, 2])

    class Big:
        nbytes = cache.max_entry_bytes + 1

    big = cache.get("big", Big)
    assert isinstance(big, Big) and "big" not in cache._entries  # made, not kept


def test_tail_rows_are_the_rows_the_memory_keeps():
    from beacon.windows import build_chunk, group_steps, plan_steps

    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_attn="full-coverage", beacon_ratio=[4],
                   beacon_parallel_window=3, beacon_stride=16)  # fmt: skip
    cfg = lm.config
    memory = lm.condense(tokens(40, seed=23))  # 8 raw entries cached
    steps = plan_steps(cfg, memory.state, 45, max_positions=lm.parts.max_positions)
    chunk = build_chunk(cfg, group_steps(cfg, steps)[0])
    c, n = chunk.n_cached, chunk.n_rows
    tail = chunk.tail_rows()
    rows, compact, beacons = tail["tail_rows"], tail["tail_compact"], tail["tail_beacon_rows"]
    assert 0 < len(rows) < n and (rows[1:] > rows[:-1]).all()
    # compact_src re-counted over [cached | kept rows] picks the same entries
    slots = torch.cat([torch.arange(c), c + rows])
    assert torch.equal(slots[compact], chunk.compact_src)
    assert set(rows.tolist()) == {s - c for s in chunk.compact_src.tolist() if s >= c}
    assert torch.equal(chunk.cols.beacon[c:][rows][beacons], torch.ones(len(beacons), dtype=torch.long))
    assert int(chunk.cols.beacon[c:][rows].sum()) == len(beacons) > 0


@pytest.mark.parametrize("family, overrides", [c for c in CONFIGS if c[1].get("beacon_stride", 16) == 16][:6])
def test_parallel_windows_equal_sequential_windows(family, overrides):
    seq = load_tiny(family, **overrides)
    par = load_tiny(family, **overrides, beacon_parallel_window=3)
    ids = tokens(90, seed=3)
    mem_s, log_s = all_logits(seq, ids)
    mem_p, log_p = all_logits(par, ids)
    torch.testing.assert_close(log_p, log_s, atol=ATOL, rtol=0)
    assert_same_memory(mem_p, mem_s)
    mem_p2, log_p2 = all_logits(par, ids, pieces=[5, 40, 45])
    torch.testing.assert_close(log_p2, log_s, atol=ATOL, rtol=0)
    assert_same_memory(mem_p2, mem_s)


def test_a_batch_reads_like_its_sequences_alone():
    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[2], beacon_param=["q", "k", "v"])
    ids = tokens(50, seed=4, batch=3)
    mem, logits = all_logits(lm, ids)
    for i in range(3):
        mem_i, log_i = all_logits(lm, ids[i : i + 1])
        torch.testing.assert_close(logits[i : i + 1], log_i, atol=ATOL, rtol=0)
        torch.testing.assert_close(mem.keys[1][i : i + 1], mem_i.keys[1], atol=ATOL, rtol=0)


def test_future_tokens_do_not_change_earlier_beacons():
    """Step-expansion and segmentation: beacon j reads raw tokens up to the end of its chunk only."""
    for attn in ("step-expansion", "segmentation"):
        lm = load_tiny("llama", beacon_pos="append", beacon_attn=attn, beacon_ratio=[4], beacon_attend_prev=False)
        a = tokens(16, seed=5)
        b = a.clone()
        b[0, 13] = (b[0, 13] + 1) % 250 + 3  # a token of the last chunk (raw 12..15)
        ka, kb = lm.condense(a).keys[1], lm.condense(b).keys[1]  # (1, h_kv, 4 beacons, d)
        torch.testing.assert_close(ka[:, :, :3], kb[:, :, :3], atol=ATOL, rtol=0)
        assert (ka[:, :, 3] - kb[:, :, 3]).abs().max() > 1e-3
    se = load_tiny(
        "llama", beacon_pos="append", beacon_attn="step-expansion", beacon_ratio=[4], beacon_attend_prev=False
    )
    seg = load_tiny(
        "llama", beacon_pos="append", beacon_attn="segmentation", beacon_ratio=[4], beacon_attend_prev=False
    )
    ids = tokens(16, seed=6)
    assert (se.condense(ids).keys[1][:, :, 1:] - seg.condense(ids).keys[1][:, :, 1:]).abs().max() > 1e-3


def test_stride_below_window_condenses_every_stride_and_keeps_the_overlap():
    lm = load_tiny("mistral", beacon_pos="append", beacon_attn="full-coverage", beacon_stride=8, beacon_ratio=[4])
    mem = lm.condense(tokens(40, seed=7))
    # windows close at 16, 24, 32, 40: 4 windows x 8/4 beacons; the last 8 raw tokens stay raw
    assert mem.sizes() == (0, 8, 8) and mem.state.n_windows == 4
    nll = lm.nll(tokens(40, seed=7))
    assert torch.isfinite(nll).all()


def test_generate_forks_the_memory_and_is_repeatable():
    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[2], beacon_param=["q", "k", "v"])
    doc = tokens(45, seed=8)
    mem = lm.condense(doc)
    before, state = mem.export()[0], mem.state
    q = tokens(6, seed=9)
    first = lm.generate(q, memory=mem, max_new_tokens=20)
    second = lm.generate(q, memory=mem, max_new_tokens=20)
    assert torch.equal(first, second) and first.shape == (1, 20)
    assert mem.state == state and torch.equal(mem.export()[0]["keys"], before["keys"])
    # the same as reading document and question in one pass
    assert torch.equal(lm.generate(torch.cat([doc, q], 1), max_new_tokens=20), first)
    # sampling: seeded and repeatable; top_k=1 is greedy
    s1 = lm.generate(q, memory=mem, max_new_tokens=12, do_sample=True, seed=3, temperature=1.5)
    s2 = lm.generate(q, memory=mem, max_new_tokens=12, do_sample=True, seed=3, temperature=1.5)
    s3 = lm.generate(q, memory=mem, max_new_tokens=12, do_sample=True, seed=4, temperature=1.5)
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    k1 = lm.generate(q, memory=mem, max_new_tokens=12, do_sample=True, top_k=1, seed=5)
    assert torch.equal(k1, first[:, :12])
    p = lm.generate(q, memory=mem, max_new_tokens=12, do_sample=True, top_p=1e-6, seed=5)
    assert torch.equal(p, first[:, :12])


def test_generate_stops_at_eos_and_pads_finished_sequences():
    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[2], beacon_param=["q", "k", "v"])
    q = tokens(10, seed=10)
    free = lm.generate(q, max_new_tokens=15)[0].tolist()
    eos = free[4]
    stopped = lm.generate(q, max_new_tokens=15, eos_token_id=eos)[0].tolist()
    assert stopped == free[: free.index(eos) + 1]


def test_export_and_import_continue_exactly():
    lm = load_tiny("llama", beacon_pos="append", beacon_attn="step-expansion", beacon_ratio=[2], beacon_sink_size=3)
    ids = tokens(70, seed=11)
    mem = lm.condense(ids[:, :41])
    tensors, meta = mem.export()
    assert tensors["keys"].shape == (2, 1, 2, mem.state.size, 16)
    back = Memory.from_export({k: v.clone() for k, v in tensors.items()}, meta)
    _, a = lm.forward(ids[:, 41:], mem.fork(), logits="all")
    _, b = lm.forward(ids[:, 41:], back, logits="all")
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    bad = dict(meta, version=99)
    with pytest.raises(ValueError, match="version"):
        Memory.from_export(tensors, bad)
    broken = dict(tensors, keys=tensors["keys"][:, :, :, :-1])
    with pytest.raises(ValueError, match="do not hold"):
        Memory.from_export(broken, meta)


def test_rope_cache_is_only_a_cache():
    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[2], beacon_param=["q", "k", "v"])
    ids = tokens(60, seed=12)
    mem = lm.condense(ids[:, :37])
    cold = mem.fork()
    cold.rot_keys = None
    _, a = lm.forward(ids[:, 37:], mem, logits="all")
    _, b = lm.forward(ids[:, 37:], cold, logits="all")
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_nll_after_a_memory_equals_reading_everything():
    lm = load_tiny("mistral", beacon_pos="append", beacon_ratio=[4], beacon_param=["q", "k", "v"])
    doc, q = tokens(50, seed=13), tokens(20, seed=14)
    whole = lm.nll(torch.cat([doc, q], 1))
    after = lm.nll(q, memory=lm.condense(doc))
    torch.testing.assert_close(after, whole[:, 50:], atol=ATOL, rtol=0)


def test_concat_of_a_closed_memory_continues_as_reading_after_it():
    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[4], beacon_param=["q", "k", "v"])
    a, b = tokens(32, seed=15), tokens(21, seed=16)  # 32 = two whole windows: nothing left open
    mem_a = lm.condense(a)
    joined = Memory.concat([mem_a, lm.new_memory()])
    _, direct = lm.forward(b, mem_a.fork(), logits="all")
    _, via = lm.forward(b, joined, logits="all")
    torch.testing.assert_close(via, direct, atol=ATOL, rtol=0)
    # two documents with open windows: everything of the first becomes outer memory
    mem_b = lm.condense(b)
    both = Memory.concat([lm.condense(b), mem_b])
    assert both.sizes() == (0, mem_b.state.size + mem_b.state.n_outer, mem_b.state.n_window)
    assert both.n_tokens == 42
    assert lm.generate(tokens(3, seed=17), memory=both, max_new_tokens=4).shape == (1, 4)


def test_bad_input_is_refused_with_a_clear_error():
    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[2], beacon_param=["q", "k", "v"])
    with pytest.raises(ValueError, match="empty"):
        lm.condense([])
    with pytest.raises(ValueError, match="must lie in"):
        lm.condense([5, 300])
    with pytest.raises(ValueError, match="1-D or 2-D"):
        lm.condense(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        lm.condense(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="does not fit"):
        lm.condense(tokens(5, batch=2), memory=lm.new_memory(1))
    with pytest.raises(ValueError, match="logits"):
        lm.forward([5, 6], logits="some")
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.generate([5, 6], max_new_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate([5, 6], do_sample=True, temperature=0)


@pytest.mark.parametrize("family, overrides", [c for c in CONFIGS if c[1].get("beacon_stride", 16) == 16][:8])
def test_attention_modes_compute_the_same_function(family, overrides):
    """auto (flash-able causal/split layouts) == dense boolean mask, reading at once and in pieces."""
    lm = load_tiny(family, **overrides)
    ids = tokens(70, seed=18)
    results = {}
    for mode in ("dense", "auto"):
        lm.attn_mode = mode
        try:
            results[mode] = all_logits(lm, ids, pieces=[9, 1, 30, 30])
        finally:
            lm.attn_mode = "auto"
    torch.testing.assert_close(results["auto"][1], results["dense"][1], atol=ATOL, rtol=0)
    assert_same_memory(results["auto"][0], results["dense"][0])
    with pytest.raises(ValueError, match="attention mode"):
        lm.attn_mode = "flashy"
        try:
            lm.condense(ids)
        finally:
            lm.attn_mode = "auto"


@pytest.mark.parametrize(
    "family, overrides", [CONFIGS[0], CONFIGS[2], CONFIGS[6]], ids=["fc-interleave", "se-interleave", "seg-append"]
)
def test_flex_block_mask_attention_equals_dense(family, overrides):
    """FlexAttention with our block mask (its eager reference, on the CPU) == the dense mask, and so
    does flex-outer (O through the unmasked fused kernel, the window through FlexAttention, merged
    by log-sum-exp).

    Compiled FlexAttention (CUDA) has no kernel for the tiny models' head_dim 16: there the engine
    refuses it (tested here) and tests/test_attention_gpu.py runs it at a real head dim."""
    lm = load_tiny(family, **overrides, beacon_parallel_window=2)
    if DEVICE == "cuda":
        for mode in ("flex", "flex-outer"):
            lm.attn_mode = mode
            try:
                with pytest.raises(ValueError, match="head_dim >= 64"):
                    lm.condense(tokens(70, seed=19))
            finally:
                lm.attn_mode = "auto"
        return
    atol = ATOL
    ids = tokens(150, seed=19)
    results = {}
    for mode in ("dense", "flex", "flex-outer"):
        lm.attn_mode = mode
        try:
            results[mode] = all_logits(lm, ids, pieces=[70, 80])
        finally:
            lm.attn_mode = "auto"
    assert results["dense"][0].state.n_outer > 0  # the second piece's passes attend a memory
    for mode in ("flex", "flex-outer"):
        torch.testing.assert_close(results[mode][1], results["dense"][1], atol=atol, rtol=0)
        assert_same_memory(results[mode][0], results["dense"][0], atol=atol)
    batch = {}
    for mode in ("dense", "flex-outer"):  # two sequences per pass: O's values are a strided slice
        lm.attn_mode = mode
        try:
            batch[mode] = all_logits(lm, tokens(150, seed=20, batch=2), pieces=[70, 80])
        finally:
            lm.attn_mode = "auto"
    torch.testing.assert_close(batch["flex-outer"][1], batch["dense"][1], atol=atol, rtol=0)
    lm.attn_mode = "flex-outer"
    try:
        with pytest.raises(ValueError, match="for inference"):
            lm.forward(ids, logits="all")  # gradients on: its kernels' backward ignores the log-sum-exp
    finally:
        lm.attn_mode = "auto"


@pytest.mark.slow
def test_compiled_layers_equal_eager():
    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[2, 4], beacon_ratio_mix="sequence")
    ids = tokens(80, seed=20)
    eager = all_logits(lm, ids, pieces=[37, 43])
    lm.compile_layers = True
    try:
        compiled = all_logits(lm, ids, pieces=[37, 43])
    finally:
        lm.compile_layers = False
    torch.testing.assert_close(compiled[1], eager[1], atol=ATOL, rtol=0)
    assert_same_memory(compiled[0], eager[0])


@pytest.mark.parametrize(
    "family, overrides", [CONFIGS[0], CONFIGS[5], CONFIGS[7]], ids=["interleave", "append-sink", "stride"]
)
def test_condense_many_in_lockstep_equals_one_by_one(family, overrides):
    lm = load_tiny(family, **overrides)
    lengths = [5, 40, 41, 100, 16, 3, 64, 32, 32, 48]
    docs = [tokens(n, seed=30 + i) for i, n in enumerate(lengths)]
    together = lm.condense_many(docs, batch_size=3)
    for doc, mem in zip(docs, together, strict=True):
        assert_same_memory(mem, lm.condense(doc))
    with pytest.raises(ValueError, match="non-empty"):
        lm.condense_many([tokens(3, batch=2)])


def test_condense_many_groups_adapt_choices():
    lm = load_tiny("qwen2", beacon_ratio=[2, 4, 8], beacon_ratio_mix="adapt-16", beacon_param=["q", "k", "v"])
    docs = [tokens(n, seed=40 + n) for n in (30, 200, 600, 31)]
    for doc, mem in zip(docs, lm.condense_many(docs, batch_size=4), strict=True):
        assert_same_memory(mem, lm.condense(doc))


def test_run_time_knobs_survive_calls():
    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[2], beacon_param=["q", "k", "v"])
    lm.parallel_window = 3
    lm.condense(tokens(20, seed=50))
    assert lm.parallel_window == 3 and lm.windows_per_pass() == 3
    lm.parallel_window = None


def test_tokenizer_output_is_accepted_as_input():
    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[2], beacon_param=["q", "k", "v"])
    ids = tokens(30, seed=60)
    from_mapping = lm.condense({"input_ids": ids[0].tolist(), "attention_mask": [1] * 30})
    assert_same_memory(from_mapping, lm.condense(ids))
    with pytest.raises(ValueError, match="without 'input_ids'"):
        lm.condense({"ids": [1, 2]})


def test_auto_attends_a_long_memory_apart_only_at_inference(monkeypatch):
    """attention.plan_attention's choice for parallel windows: flex-outer once |O| reaches
    OUTER_APART_MIN with gradients off and FlexAttention usable; flex under gradients; dense where
    FlexAttention is not (the CPU, float32)."""
    from beacon import attention
    from beacon.windows import build_chunk, group_steps, plan_steps

    lm = load_tiny("qwen2", beacon_pos="interleave", beacon_ratio=[2], beacon_parallel_window=2)
    memory = lm.condense(tokens(70, seed=23))
    cfg = lm.config
    steps = plan_steps(cfg, memory.state, 40, max_positions=lm.parts.max_positions)
    chunk = build_chunk(cfg, group_steps(cfg, steps)[0])
    assert len(chunk.steps) > 1 and chunk.n_outer > 0 and cfg.beacon_attn == "full-coverage"
    monkeypatch.setattr(attention, "OUTER_APART_MIN", chunk.n_outer)
    with torch.no_grad():
        assert attention.plan_attention(cfg, chunk, "auto", flex_ok=True).mode == "flex-outer"
        assert attention.plan_attention(cfg, chunk, "auto", flex_ok=False).mode == "dense"
    with torch.enable_grad():
        assert attention.plan_attention(cfg, chunk, "auto", flex_ok=True).mode == "flex"
    monkeypatch.setattr(attention, "OUTER_APART_MIN", chunk.n_outer + 1)
    with torch.no_grad():
        assert attention.plan_attention(cfg, chunk, "auto", flex_ok=True).mode == "flex"
    first = build_chunk(cfg, group_steps(cfg, plan_steps(cfg, lm.new_memory(1).state, 40,
                        max_positions=lm.parts.max_positions))[0])  # fmt: skip
    assert first.n_outer == 0
    with torch.no_grad():  # a pass over an empty O: nothing to attend apart
        assert attention.plan_attention(cfg, first, "flex-outer", flex_ok=True).mode == "flex"


def test_reading_on_from_a_share_leaves_the_memory_as_it_was():
    """Memory.share copies no tensor: forward replaces tensors, never writes into them — so the
    shared memory is bit for bit what it was, and a second share reads on exactly like the first."""
    lm = load_tiny(CONFIGS[0][0], **CONFIGS[0][1])
    memory = lm.condense(tokens(45, seed=24))
    before = memory.fork()
    first, second = memory.share(), memory.share()
    assert first.keys[0] is memory.keys[0]  # nothing copied
    _, a = lm.forward(tokens(30, seed=25), first, logits="all")
    _, b = lm.forward(tokens(30, seed=25), second, logits="all")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert_same_memory(memory, before, atol=0)
    assert first.n_tokens == second.n_tokens == memory.n_tokens + 30


def test_unmasked_math_kernel_equals_the_fused_one():
    """attend_unmasked's float32 "math" kernel (CUDA float32 runs take it) == the fused CPU kernel,
    output and log-sum-exp, with GQA and values a strided slice as the engine passes them."""
    from beacon.attention import attend_unmasked

    g = torch.Generator().manual_seed(24)
    q = torch.randn(2, 6, 9, 16, generator=g)
    k = torch.randn(2, 2, 13, 16, generator=g)
    v = torch.randn(2, 2, 15, 16, generator=g)[:, :, :13]
    out, lse = attend_unmasked(q, k, v, 0.25, "math")
    ref, ref_lse = attend_unmasked(q, k, v, 0.25, "cpu")
    assert lse.shape == (2, 6, 9)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=ATOL, rtol=0)
