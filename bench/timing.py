"""One timing rule for every condensing benchmark (ours, full prefill, the official code).

Each (implementation, length, ratio) is a first call — the cold one a user meets on a new length,
after the process's own warm-up — and then warm calls; the two are reported apart.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

# warm calls after the first: SHORT_RUNS - 1 for a first call under SHORT_S (a short call is noisy, up
# to 2x seen at 8K), WARM_RUNS_LONG for a longer one. BENCH_SHORT_S / BENCH_RUNS change them (the
# official code's subprocess inherits the environment).
SHORT_S = float(os.environ.get("BENCH_SHORT_S", "2.0"))
SHORT_RUNS = int(os.environ.get("BENCH_RUNS", "5"))
WARM_RUNS_LONG = 2


def median_time(time_once: Callable[[], float]) -> tuple[float, list[float]]:
    """(median seconds of the warm calls, every time: the first call's, then the warm ones) of
    `time_once()`, which returns the seconds of one timed call."""
    times = [time_once()]
    warm_runs = SHORT_RUNS - 1 if times[0] < SHORT_S else WARM_RUNS_LONG
    times += [time_once() for _ in range(max(1, warm_runs))]
    return statistics.median(times[1:]), times
