"""One timing rule for every condensing benchmark (ours, full prefill, the official code)."""

from __future__ import annotations

import os
from collections.abc import Callable

# a call shorter than this is timed five times: one short call is noisy (up to 2x seen at 8K), and the
# first full-length call of every implementation is slower than the next. BENCH_SHORT_S raises it,
# BENCH_RUNS times it more often (for the official code too: its subprocess inherits the environment).
SHORT_S = float(os.environ.get("BENCH_SHORT_S", "2.0"))
SHORT_RUNS = int(os.environ.get("BENCH_RUNS", "5"))


def median_time(time_once: Callable[[], float]) -> tuple[float, list[float]]:
    """(median seconds, every time) of `time_once()` (which returns the seconds of one timed call):
    once, or SHORT_RUNS times when the first is under SHORT_S."""
    times = [time_once()]
    if times[0] < SHORT_S:
        times += [time_once() for _ in range(SHORT_RUNS - 1)]
    return sorted(times)[len(times) // 2], times
