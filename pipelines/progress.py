"""A progress bar for the pipelines' drivers: items done, tokens, tokens/s."""

from __future__ import annotations

import sys
import time


class Progress:
    """tqdm bar over items (documents or questions) with tokens and tokens/s in its postfix.

    disabled: nothing is printed. Outside a terminal (jobs, logs) it prints a line every
    `log_every_s` seconds instead of redrawing.
    """

    def __init__(self, total: int | None, *, desc: str, unit: str, enabled: bool = True, log_every_s: float = 10.0):
        from tqdm.auto import tqdm

        self.start = time.perf_counter()
        self.tokens = 0
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.2 if sys.stderr.isatty() else log_every_s,
        )

    def update(self, items: int, tokens: int = 0) -> None:
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens:,} tok, {self.tokens / elapsed:,.0f} tok/s", refresh=False)
        self.bar.update(items)

    def close(self) -> None:
        self.bar.close()


class DocumentProgress:
    """A bar of one long document's tokens: done / total, tokens/s and the time left (ETA)."""

    def __init__(self, doc_id: str, n_tokens: int, *, enabled: bool = True, log_every_s: float = 10.0):
        from tqdm.auto import tqdm

        self.doc_id, self.n_tokens, self.done = doc_id, n_tokens, 0
        self.bar = tqdm(
            total=n_tokens,
            desc=f"  {doc_id[-40:]}",
            unit="tok",
            unit_scale=True,
            disable=not enabled,
            dynamic_ncols=True,
            leave=False,
            mininterval=0.5 if sys.stderr.isatty() else log_every_s,
        )

    def update(self, done: int, seconds: float) -> dict:
        """Move to `done` tokens after `seconds` of condensing; returns the progress event."""
        self.bar.update(done - self.done)
        self.done = done
        speed = done / seconds if seconds > 0 else 0.0
        eta = (self.n_tokens - done) / speed if speed > 0 else None
        return {"doc_id": self.doc_id, "done": done, "n_tokens": self.n_tokens, "seconds": seconds,
                "tokens_per_s": speed, "eta_s": eta}  # fmt: skip

    def close(self) -> None:
        self.bar.close()
