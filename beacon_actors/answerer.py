"""`Answerer` — the GPU actor of batch QA: load snapshots, answer questions from them.

Input columns: QUESTIONS. Output columns: ANSWERS (one row per input row, in order).

Questions of a batch are grouped by their documents (first-seen order): each group's memory is
loaded once — from the actor's LRU cache of hot memories on the device, else from the store —
then every question of the group is answered greedily after it (`generation.greedy_answer`).
A single document loads in the background (`SnapshotStore.get(..., background=True)`): the first
question's forward pass reads each layer as soon as it has arrived, so reading the question
overlaps the load (docs/performance.md §2); a damaged row is raised there and the memory dropped.
Timings per answer: load_s (until the store returned: planning, and for several documents the
whole load; 0 on a cache hit), first_token_s (from the start of the load), total_s = load +
generation.
"""

from __future__ import annotations

import time

import pyarrow as pa
import torch

import beacon
from beacon import Memory
from snapshots import SnapshotStore
from snapshots.errors import SnapshotError

from .columns import ANSWERS, table
from .device import resolve_device, worker_name
from .generation import greedy_answer
from .memory_cache import MemoryCache
from .text import decode_answer, load_tokenizer, question_ids, stop_ids

INPUT_COLUMNS = ("index", "question_id", "question", "doc_ids", "picked_by", "expected", "error")
OUTPUT_COLUMNS = ("answer", "n_prompt_tokens", "n_new_tokens", "load_s", "first_token_s", "total_s", "cache_hit")


class Answerer:
    """Load the model, tokenizer and store once; then answer each batch of questions.

    Args:
        model: the beacon checkpoint the snapshots were condensed with (same dtype too).
        db: snapshot store folder.
        tokenizer: tokenizer folder / hub id (default: the model's own).
        dtype, device: as for the Condenser (the fingerprint must match the stored one).
        max_new_tokens: longest answer, in tokens.
        cache_bytes: device bytes of loaded memories kept for the next questions (LRU).
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
    ):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.lm = beacon.load(model, device=resolve_device(device), dtype=dtype, tokenizer=tokenizer is None)
        if tokenizer is not None:
            self.lm.tokenizer = load_tokenizer(str(tokenizer))
        if self.lm.tokenizer is None:
            raise ValueError(f"model {model!r} has no tokenizer files: give the tokenizer folder (--tokenizer)")
        self.fingerprint = self.lm.fingerprint()
        self.store = SnapshotStore(db)
        self.cache = MemoryCache(cache_bytes)
        self.max_new_tokens = max_new_tokens
        self.stops = stop_ids(self.lm)
        self.worker = worker_name()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(tuple(row["doc_ids"] or ()), []).append(i)
        results: list[dict | None] = [None] * len(rows)
        for doc_ids, members in groups.items():
            for i in members:
                results[i] = self.answer(rows[i], doc_ids)
        return table(results, ANSWERS)

    def answer(self, row: dict, doc_ids: tuple[str, ...] | None = None) -> dict:
        """Answer one question row (QUESTIONS columns); failures come back in the row's `error`."""
        doc_ids = tuple(row.get("doc_ids") or ()) if doc_ids is None else doc_ids
        out = {**row, "doc_ids": list(doc_ids), "n_prompt_tokens": 0, "n_new_tokens": 0, "n_memory_tokens": 0}
        out.update(load_s=0.0, first_token_s=None, total_s=0.0, cache_hit=False, worker=self.worker)
        if row.get("error"):
            return out
        if not doc_ids:
            return {**out, "error": "no documents to read: give doc_ids"}
        prompt = question_ids(self.lm.tokenizer, row["question"])
        try:
            memory, load_s, hit = self._memory(doc_ids)
            try:
                gen = greedy_answer(self.lm, prompt, memory, max_new_tokens=self.max_new_tokens, stops=self.stops)
                memory.ready()  # a background load has finished by now: mark it so (raises what it raised)
            except BaseException:
                if not hit:  # loaded for this question and failed on first use (its loader's error
                    self.cache.discard(doc_ids)  # would come back on every later use): not kept
                raise
        except SnapshotError as err:  # not found, wrong model, or rows that fail their checks
            return {**out, "error": f"{type(err).__name__}: {err}"}
        return {
            **out,
            "answer": decode_answer(self.lm.tokenizer, gen.token_ids, self.stops),
            "n_prompt_tokens": len(prompt),
            "n_new_tokens": len(gen.token_ids),
            "n_memory_tokens": memory.n_tokens,
            "load_s": load_s,
            "first_token_s": None if gen.first_token_s is None else load_s + gen.first_token_s,
            "total_s": load_s + gen.seconds,
            "cache_hit": hit,
        }

    def _memory(self, doc_ids: tuple[str, ...]) -> tuple[Memory, float, bool]:
        """(memory of the documents in order, seconds spent loading, cache hit?)."""
        cached = self.cache.get(doc_ids)
        if cached is not None:
            return cached, 0.0, True
        start = time.perf_counter()
        background = len(doc_ids) == 1  # several documents are loaded, then concatenated
        memory = self.store.get(
            list(doc_ids), fingerprint=self.fingerprint, device=self.lm.device, background=background
        )
        if memory.keys[0].is_cuda and not background:
            torch.cuda.synchronize(memory.keys[0].device)
        load_s = time.perf_counter() - start
        self.cache.put(doc_ids, memory)  # still loading if background: its first use waits for it
        return memory, load_s, False
