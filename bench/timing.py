"""One timing rule for every condensing benchmark (ours, full prefill, the official code)."""

from __future__ import annotations

from collections.abc import Callable

SHORT_S = 2.0  # a call shorter than this is timed five times: one short call is noisy (up to 2x seen at 8K)
SHORT_RUNS = 5


def median_time(time_once: Callable[[], float]) -> tuple[float, list[float]]:
    """(median seconds, every time) of `time_once()` (which returns the seconds of one timed call):
    once, or SHORT_RUNS times when the first is under SHORT_S."""
    times = [time_once()]
    if times[0] < SHORT_S:
        times += [time_once() for _ in range(SHORT_RUNS - 1)]
    return sorted(times)[len(times) // 2], times
