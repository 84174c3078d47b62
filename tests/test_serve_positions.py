"""beacon.windows.answer_positions: the length check's bound on the positions an answer reaches,
held to what the engine's memory really holds while the prompt and answer are read after it."""

from __future__ import annotations

import pytest

import beacon
from beacon.windows import answer_positions

from .conftest import DEVICE, tiny_path, tokens

SETTINGS = {
    "ratio 2": dict(beacon_ratio=[2]),
    "ratio 8": dict(beacon_ratio=[8]),
    "sink": dict(beacon_ratio=[8], beacon_sink_size=4),
    "append, stride < window": dict(beacon_ratio=[4], beacon_pos="append", beacon_stride=4),
    "mix with 0, none fixed": dict(beacon_ratio=[0, 2], beacon_ratio_mix="step-random"),
}
FIXED = {"ratio 2", "ratio 8", "sink", "append, stride < window"}  # one ratio: the bound is also tight


@pytest.mark.parametrize("name", SETTINGS)
def test_the_bound_holds_and_is_tight(name):
    """Documents ending before their first window closes and anywhere in a later one, then tokens
    read one at a time (as decoding does): the memory never holds more entries than the bound; at
    one ratio the bound is at most two windows' beacons (and the sink) above the peak (the
    bound counts the last window's beacons as closed and its raw tokens as open at once)."""
    lm = beacon.load(tiny_path("qwen2"), device=DEVICE, **SETTINGS[name])
    cfg = lm.config
    for n_doc in (10, 3 * cfg.beacon_window, 3 * cfg.beacon_window + 1, 4 * cfg.beacon_window - 3):
        memory = lm.condense(tokens(n_doc, seed=n_doc))
        n_new = 2 * cfg.beacon_window + 5  # closes the open window and the next
        bound = answer_positions(cfg, [memory.state], n_new)
        peak = memory.state.size
        for token in tokens(n_new, seed=1)[0]:
            memory = lm.condense(token.view(1, 1), memory)
            peak = max(peak, memory.state.size)
        assert peak <= bound, (n_doc, peak, bound)
        if name in FIXED:
            slack = 2 * -(-cfg.beacon_window // cfg.beacon_ratio[0]) + cfg.beacon_sink_size
            assert bound - peak <= slack, (n_doc, peak, bound)


def test_the_last_document_continues_and_the_others_count_whole():
    lm = beacon.load(tiny_path("qwen2"), device=DEVICE, beacon_ratio=[4])
    a, b = lm.condense(tokens(100, seed=1)), lm.condense(tokens(70, seed=2))
    alone = answer_positions(lm.config, [b.state], 10)
    assert answer_positions(lm.config, [a.state, b.state], 10) == a.state.size + alone
