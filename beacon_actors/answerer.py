"""`Answerer` — the GPU actor of batch QA: load snapshots, answer questions from them.

Input columns: QUESTIONS. Output columns: ANSWERS (one row per input row, in order).

Every question of a batch goes to the actor's `Batcher` at once — the continuous-batching loop of
a `beacon serve` replica (batcher.py) — so questions over one memory share its load (an LRU of hot
memories on the device, else the store) and their prompt read when their prompts are of one length,
and every running question's next token comes from one pass through the model, whatever memory it
reads (decode.step_together). Answers are greedy and what each question gets alone
(`generation.greedy_answer`; token for token in the tests, on CPU in float32: on a GPU in bf16 a
product over more rows may round differently and flip a near tie). A single document loads in the background
(`SnapshotStore.get(..., background=True)`): the first read of a question overlaps the load; a
damaged row is raised there and the memory dropped. Timings per answer, from the moment the batch's
questions were handed to the batcher: load_s (the memory's load, 0 on a cache hit),
first_token_s, total_s — so they include the time a question waited for others.
"""

from __future__ import annotations

import queue
import time

import pyarrow as pa

import beacon
from snapshots import SnapshotStore
from snapshots.errors import SnapshotError

from .batcher import Batcher, Job, Sampling
from .columns import ANSWERS, table
from .device import resolve_device, worker_name
from .memory_cache import MemoryCache
from .text import decode_answer, load_tokenizer, question_ids, stop_ids

INPUT_COLUMNS = ("index", "question_id", "question", "doc_ids", "picked_by", "expected", "error")
OUTPUT_COLUMNS = ("answer", "n_prompt_tokens", "n_new_tokens", "load_s", "first_token_s", "total_s", "cache_hit")


class Answerer:
    """Load the model, tokenizer and store once, start a Batcher; then answer each batch of questions.

    Args:
        model: the beacon checkpoint the snapshots were condensed with (same dtype too).
        db: snapshot store folder.
        tokenizer: tokenizer folder / hub id (default: the model's own).
        dtype, device: as for the Condenser (the fingerprint must match the stored one).
        max_new_tokens: longest answer, in tokens.
        cache_bytes: device bytes of loaded memories kept for the next questions (LRU).
        max_batch: questions of one memory and prompt length read as one batch.
        max_running: questions decoding at once (the rest of a batch waits for room).
        lanes, lane_slots: one-row answers in lanes of one arena (Batcher; 0: none).
    """

    def __init__(
        self,
        model: str,
        db: str,
        *,
        tokenizer: str | None = None,
        dtype: str | None = None,
        device: str = "auto",
        max_new_tokens: int = 64,
        cache_bytes: int = 2 << 30,
        max_batch: int = 8,
        max_running: int = 64,
        lanes: int = 0,
        lane_slots: int = 16384,
    ):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.lm = beacon.load(model, device=resolve_device(device), dtype=dtype, tokenizer=tokenizer is None)
        if tokenizer is not None:
            self.lm.tokenizer = load_tokenizer(str(tokenizer))
        if self.lm.tokenizer is None:
            raise ValueError(f"model {model!r} has no tokenizer files: give the tokenizer folder (--tokenizer)")
        self.store = SnapshotStore(db)
        self.max_new_tokens = max_new_tokens
        self.stops = stop_ids(self.lm)
        self.worker = worker_name()
        # a batch waits whole in the batcher: no bound on waiting questions beyond the batch itself
        self.batcher = Batcher(self.lm, self.store, stops=self.stops, cache_bytes=cache_bytes, max_batch=max_batch,
                               max_running=max_running, max_waiting=1 << 30, lanes=lanes,
                               lane_slots=lane_slots)  # fmt: skip

    @property
    def cache(self) -> MemoryCache:
        """The batcher's LRU of loaded memories."""
        return self.batcher.cache

    def __del__(self):
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return table(self.answer_all(batch.to_pylist()), ANSWERS)

    def answer(self, row: dict) -> dict:
        """Answer one question row (QUESTIONS columns); failures come back in the row's `error`."""
        return self.answer_all([row])[0]

    def answer_all(self, rows: list[dict]) -> list[dict]:
        """Answer question rows (QUESTIONS columns) together, results in order. A snapshot that fails
        its checks, a missing document, or a question the model cannot take (ValueError, e.g. over
        its positions) is that row's `error`; anything else (out of device memory) is raised after
        every question has ended, so Ray retries the batch."""
        outs, jobs, events = [], [], queue.Queue()
        for k, row in enumerate(rows):  # every prompt first: a row that cannot be encoded submits nothing
            doc_ids = tuple(row.get("doc_ids") or ())
            out = {**row, "doc_ids": list(doc_ids), "n_prompt_tokens": 0, "n_new_tokens": 0, "n_memory_tokens": 0}
            out.update(load_s=0.0, first_token_s=None, total_s=0.0, cache_hit=False, worker=self.worker)
            outs.append(out)
            if row.get("error"):
                continue
            if not doc_ids:
                out["error"] = "no documents to read: give doc_ids"
                continue
            prompt = question_ids(self.lm.tokenizer, row["question"])
            out["n_prompt_tokens"], out["tokens"] = len(prompt), []
            emit = lambda kind, value, k=k: events.put((k, kind, value, time.perf_counter()))  # noqa: E731
            jobs.append(Job(doc_ids, prompt, Sampling(max_tokens=self.max_new_tokens), emit))
        started = time.perf_counter()
        self.batcher.submit_many(jobs)  # all at once: the batch's questions of one memory share a group
        pending, raised = len(jobs), None
        while pending:
            try:
                k, kind, value, at = events.get(timeout=5.0)
            except queue.Empty:  # its loop ends every job before it stops: a dead one with jobs left is a bug
                if not self.batcher.alive:
                    raise RuntimeError("the answering loop stopped with questions unanswered") from None
                continue
            out = outs[k]
            if kind == "start":
                out.update(load_s=value["load_s"], cache_hit=value["cache_hit"], n_memory_tokens=value["memory_tokens"])
            elif kind == "token":
                if not out["tokens"]:
                    out["first_token_s"] = at - started
                out["tokens"].append(value)
            else:  # "end" or "error": the job's last event
                pending -= 1
                out["total_s"] = at - started
                if kind == "error":
                    if not isinstance(value, SnapshotError | ValueError):
                        raised = raised or value
                    out["error"] = f"{type(value).__name__}: {value}"
                elif value == "cancelled":  # the batcher closed under it: no whole answer
                    raised = raised or RuntimeError("the answering loop was closed with questions unanswered")
                    out["error"] = "cancelled: the answering loop was closed"
        if raised is not None:
            raise raised
        for out in outs:
            tokens = out.pop("tokens", None)
            if tokens is not None and out.get("error") is None:
                out.update(answer=decode_answer(self.lm.tokenizer, tokens, self.stops), n_new_tokens=len(tokens))
        return outs
