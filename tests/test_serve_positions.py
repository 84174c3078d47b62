"""pipelines.serve.answer_positions: the length check's bound on the positions an answer reaches,
held to what the engine's memory really holds while the prompt and answer are read after it."""

from __future__ import annotations

import pytest

import beacon
from pipelines.serve import answer_positions

from .conftest import DEVICE, tiny_path, tokens


@pytest.mark.parametrize("ratio", [2, 8])
def test_the_bound_holds_and_is_tight(ratio):
    """Documents ending anywhere in a window, then tokens read one at a time (as decoding does):
    the memory never holds more entries than the bound, and the bound is at most two windows'
    beacons above the peak (it counts the last window's beacons as closed and its raw tokens as
    open at once; the check before added a whole window of raw tokens on top)."""
    lm = beacon.load(tiny_path("qwen2"), device=DEVICE, beacon_ratio=[ratio])
    window = lm.config.beacon_window
    for n_doc in (3 * window, 3 * window + 1, 3 * window + window // 2, 4 * window - 1):
        memory = lm.condense(tokens(n_doc, seed=n_doc))
        n_new = window + window // 2 + 3  # closes the open window and part of the next
        bound = answer_positions(lm.config, [memory.state], n_new)
        peak = memory.state.size
        for token in tokens(n_new, seed=1)[0]:
            memory = lm.condense(token.view(1, 1), memory)
            peak = max(peak, memory.state.size)
        assert peak <= bound, (n_doc, peak, bound)
        assert bound - peak <= 2 * -(-window // ratio), (n_doc, peak, bound)


def test_the_last_document_continues_and_the_others_count_whole():
    lm = beacon.load(tiny_path("qwen2"), device=DEVICE, beacon_ratio=[4])
    a, b = lm.condense(tokens(100, seed=1)), lm.condense(tokens(70, seed=2))
    alone = answer_positions(lm.config, [b.state], 10)
    assert answer_positions(lm.config, [a.state, b.state], 10) == a.state.size + alone
