"""Window/beacon/mask arithmetic (beacon/windows.py): layouts, positions, masks, ratio choice."""

from __future__ import annotations

import dataclasses

import torch

from beacon import BeaconConfig, WindowState
from beacon.windows import (
    build_chunk,
    choose_ratio,
    group_steps,
    max_length_for_ratio,
    plan_steps,
    window_entries,
    window_mask,
)

MAXPOS = 4096


def cfg(**kw) -> BeaconConfig:
    base = dict(beacon_window=8, beacon_stride=8, beacon_ratio=[2], beacon_param=["q", "k", "v"])
    return BeaconConfig(**(base | kw))


def mask_of(c: BeaconConfig, n: int, state: WindowState | None = None) -> torch.Tensor:
    steps = plan_steps(c, state or WindowState(), n, max_positions=MAXPOS)
    chunk = build_chunk(c, group_steps(c, steps)[0])
    return window_mask(c, chunk.host_meta(), chunk.n_cached).int(), chunk


def test_interleave_reading_order_puts_a_beacon_after_every_ratio_raw_tokens():
    ent = window_entries(cfg(beacon_pos="interleave"), 2, 0, 0, 8, True)
    assert ent.beacon.tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert ent.idx.tolist() == [0, 1, 0, 2, 3, 1, 4, 5, 2, 6, 7, 3]
    assert ent.e.tolist() == list(range(12))
    # pieces: raw 3..5 of a window -> x3 b1 x4 x5 b2 (beacon after x3 and x5)
    part = window_entries(cfg(beacon_pos="interleave"), 2, 0, 3, 6, False)
    assert part.beacon.tolist() == [0, 1, 0, 0, 1] and part.e.tolist() == [4, 5, 6, 7, 8]


def test_append_puts_beacons_after_the_window_only_when_it_closes():
    c = cfg(beacon_pos="append", beacon_attn="full-coverage")
    assert window_entries(c, 2, 5, 0, 8, False).beacon.sum() == 0
    closed = window_entries(c, 2, 5, 0, 8, True)
    assert closed.beacon.tolist() == [0] * 8 + [1] * 4
    assert closed.pos.tolist() == list(range(5, 17))  # full-coverage: p0 + e


def test_step_expansion_positions_follow_the_last_covered_raw_token():
    c = cfg(beacon_pos="append", beacon_attn="step-expansion", beacon_attend_prev=False)
    ent = window_entries(c, 2, 10, 0, 8, True)
    assert ent.pos.tolist() == list(range(10, 18)) + [12, 14, 16, 18]
    c = cfg(beacon_pos="append", beacon_attn="step-expansion", beacon_attend_prev=True)
    assert window_entries(c, 2, 10, 0, 8, True).pos.tolist()[8:] == [12, 15, 18, 21]
    c = cfg(beacon_pos="interleave", beacon_attn="step-expansion", beacon_attend_prev=False)
    ent = window_entries(c, 2, 0, 0, 4, True)  # x0 x1 b0 x2 x3 b1
    assert ent.pos.tolist() == [0, 1, 2, 2, 3, 4]


def test_mask_grid_of_the_module_docstring():
    c = cfg(
        beacon_window=4, beacon_stride=4, beacon_pos="append", beacon_attn="step-expansion", beacon_attend_prev=False
    )
    m, chunk = mask_of(c, 4)
    expect = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [1, 1, 1, 1, 0, 1],
    ]
    assert m.tolist() == expect


def test_segmentation_beacons_see_only_their_chunk():
    c = cfg(beacon_window=6, beacon_stride=6, beacon_pos="append", beacon_attn="segmentation", beacon_attend_prev=False)
    m, _ = mask_of(c, 6)
    beacons = m[6:, :6]
    assert beacons.tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]]
    assert m[6:, 6:].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    c = cfg(beacon_window=6, beacon_stride=6, beacon_pos="append", beacon_attn="segmentation", beacon_attend_prev=True)
    m, _ = mask_of(c, 6)
    assert m[6:, 6:].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_interleave_full_coverage_raw_tokens_see_earlier_beacons_of_their_window():
    c = cfg(beacon_window=4, beacon_stride=4, beacon_pos="interleave", beacon_attn="full-coverage")
    m, chunk = mask_of(c, 4)
    # rows are stored raw first: x0 x1 x2 x3 b0 b1 ; reading order x0 x1 b0 x2 x3 b1
    assert chunk.cols.beacon.tolist() == [0, 0, 0, 0, 1, 1]
    assert m[2].tolist() == [1, 1, 1, 0, 1, 0]  # x2 sees x0 x1 b0
    c = cfg(
        beacon_window=4,
        beacon_stride=4,
        beacon_pos="interleave",
        beacon_attn="step-expansion",
        beacon_attend_prev=False,
    )
    m, _ = mask_of(c, 4)
    assert m[2].tolist() == [1, 1, 1, 0, 0, 0]  # x2 does not see b0
    assert m[5].tolist() == [1, 1, 1, 1, 0, 1]  # b1 sees x0..x3 and itself


def test_raw_rows_of_a_later_piece_see_the_cached_window():
    c = cfg(beacon_window=8, beacon_stride=8, beacon_pos="interleave", beacon_attn="full-coverage")
    state = plan_steps(c, WindowState(), 3, max_positions=MAXPOS)[-1].after
    assert (state.window_raw, state.window_beacons) == (3, 1)
    m, chunk = mask_of(c, 2, state)
    assert chunk.n_cached == 4  # x0 x1 b0 x2
    assert m.shape == (3, 7)  # rows x3 x4 b1 ; cols 4 cached + 3 rows


def test_parallel_windows_see_copies_of_earlier_windows_beacons_only():
    c = cfg(beacon_window=4, beacon_stride=4, beacon_pos="append", beacon_parallel_window=2)
    steps = plan_steps(c, WindowState(), 8, max_positions=MAXPOS)
    groups = group_steps(c, steps)
    assert len(groups) == 1 and len(groups[0]) == 2
    chunk = build_chunk(c, groups[0])
    assert chunk.n_copies == 2 and chunk.copy_pos.tolist() == [0, 1]
    m = window_mask(c, chunk.host_meta(), 0).int()
    # rows: 8 raw (x0..x3 of w0, x0..x3 of w1) then 4 beacons; cols: 12 entries + 2 copies
    w1_raw = m[4:8]
    assert w1_raw[:, :4].sum() == 0 and w1_raw[:, 8:10].sum() == 0  # nothing of window 0 but copies
    assert w1_raw[:, 12:].tolist() == [[1, 1]] * 4
    assert m[:4, 12:].sum() == 0  # window 0 does not see its own copies


def test_stride_below_window_keeps_the_overlap_raw():
    c = cfg(beacon_window=8, beacon_stride=4, beacon_pos="append", beacon_ratio=[2])
    steps = plan_steps(c, WindowState(), 20, max_positions=MAXPOS)
    assert [s.n_raw for s in steps] == [8, 4, 4, 4]
    after = steps[-1].after
    assert (after.n_beacons, after.window_raw, after.n_windows) == (8, 4, 4)
    chunk = build_chunk(c, [steps[1]])
    assert chunk.n_cached == 4 and chunk.cols.idx[:4].tolist() == [0, 1, 2, 3]
    # the carried overlap is the window's raw tokens 4..7
    assert steps[1].carried_sources(c).tolist() == [4, 5, 6, 7]


def test_sink_is_taken_once_from_the_first_window():
    c = cfg(beacon_window=8, beacon_stride=8, beacon_pos="append", beacon_sink_size=3)
    steps = plan_steps(c, WindowState(), 24, max_positions=MAXPOS)
    assert [s.after.n_sink for s in steps] == [3, 3, 3]
    assert steps[0].outer_sources(c).tolist() == [0, 1, 2, 8, 9, 10, 11]


def test_pieces_and_whole_reach_the_same_state():
    for pos, attn, prev in [("interleave", "full-coverage", True), ("append", "step-expansion", False)]:
        c = cfg(
            beacon_window=8,
            beacon_stride=8,
            beacon_pos=pos,
            beacon_attn=attn,
            beacon_attend_prev=prev,
            beacon_ratio=[2, 4, 8],
            beacon_ratio_mix="sequence",
        )
        whole = plan_steps(c, WindowState(), 37, max_positions=MAXPOS)[-1].after
        state = WindowState()
        for n in [1, 5, 3, 8, 2, 9, 9]:
            state = plan_steps(c, state, n, max_positions=MAXPOS, known_length=37)[-1].after
        assert state == whole


def test_adapt_picks_the_smallest_ratio_whose_reach_covers_the_sequence_once():
    c = cfg(beacon_window=16, beacon_stride=16, beacon_ratio=[2, 4, 8], beacon_ratio_mix="adapt-16")
    assert [max_length_for_ratio(r, 16, 64) for r in (2, 4, 8)] == [112, 208, 400]

    def pick(n):
        return choose_ratio(c, WindowState(), window_start=0, known_length=n, max_positions=64, training=False)

    assert pick(96)[0] == 2 and pick(97)[0] == 4 and pick(384)[0] == 8 and pick(10_000)[0] == 8
    ratio, state = pick(150)
    assert state.sequence_ratio == 4
    # fixed once: a later window keeps it whatever the length
    again, _ = choose_ratio(c, state, window_start=64, known_length=10, max_positions=64, training=False)
    assert again == 4


def test_sequence_and_random_mixes():
    c = cfg(beacon_window=8, beacon_stride=8, beacon_ratio=[2, 4, 8], beacon_ratio_mix="sequence")
    s = WindowState()
    got = [
        choose_ratio(
            c, dataclasses.replace(s, n_windows=k), window_start=0, known_length=0, max_positions=MAXPOS, training=False
        )[0]
        for k in range(5)
    ]
    assert got == [2, 4, 8, 2, 4]
    c = c.replace(beacon_ratio_mix="step-random")
    draws = [
        choose_ratio(
            c, dataclasses.replace(s, n_windows=k), window_start=0, known_length=0, max_positions=MAXPOS, training=False
        )[0]
        for k in range(40)
    ]
    assert set(draws) == {2, 4, 8}  # all ratios drawn
    again = [
        choose_ratio(
            c, dataclasses.replace(s, n_windows=k), window_start=0, known_length=0, max_positions=MAXPOS, training=False
        )[0]
        for k in range(40)
    ]
    assert draws == again  # counter-based: the same window always draws the same ratio
    c = c.replace(beacon_ratio_mix="instance-random")
    firsts = {
        choose_ratio(
            c, dataclasses.replace(s, seed=seed), window_start=0, known_length=0, max_positions=MAXPOS, training=False
        )[1].sequence_ratio
        for seed in range(30)
    }
    assert firsts == {2, 4, 8}


def test_training_draws_ratio_zero_at_most_once_and_never_for_the_last_windows():
    c = cfg(beacon_window=8, beacon_stride=8, beacon_ratio=[0, 2], beacon_ratio_mix="step-random", beacon_pos="append")
    for seed in range(20):
        steps = plan_steps(c, WindowState(seed=seed), 80, max_positions=MAXPOS, training=True)
        ratios = [s.ratio for s in steps if s.closes]
        assert ratios.count(0) <= 1
        assert ratios[-1] != 0  # a later window must read what it kept
        assert steps[-1].keep_raw_only and not steps[-1].closes


def test_flex_mask_mod_is_window_mask_pair_by_pair():
    """attention._mask_mod (FlexAttention's per-pair form) and window_mask (the grid) both call
    windows.visible: over every scheme, attend_prev, parallel windows and a cached part they agree
    on every (row, key), and O columns are always visible."""
    from beacon.attention import _mask_mod

    settings = [
        dict(beacon_pos="interleave", beacon_attn="full-coverage"),
        dict(beacon_pos="interleave", beacon_attn="step-expansion", beacon_attend_prev=False),
        dict(beacon_pos="append", beacon_attn="step-expansion", beacon_attend_prev=True),
        dict(beacon_pos="append", beacon_attn="segmentation", beacon_attend_prev=False),
        dict(beacon_pos="append", beacon_attn="segmentation", beacon_attend_prev=True),
    ]
    for kw in settings:
        c = cfg(beacon_parallel_window=3, beacon_sink_size=1, **kw)
        state = WindowState()
        seen_outer = False
        for n in (5, 20, 30):  # a half-read window, then passes that continue it over parallel windows
            steps = plan_steps(c, state, n, max_positions=MAXPOS)
            chunk = build_chunk(c, group_steps(c, steps)[0])
            meta = chunk.host_meta()
            grid = window_mask(c, meta, chunk.n_cached)  # (n_rows, k + p)
            m = chunk.n_outer
            seen_outer |= m > 0
            mod = _mask_mod(c, meta, chunk, with_outer=True)
            q = torch.arange(chunk.n_rows)[:, None]
            kv = torch.arange(m + grid.shape[1])[None, :]
            pairs = mod(0, 0, q.expand(-1, kv.shape[1]), kv.expand(q.shape[0], -1))
            assert pairs[:, :m].all(), kw
            assert torch.equal(pairs[:, m:], grid), kw
            state = steps[-1].after
        assert seen_outer, kw
