"""Continuous batching of answers over stored memories, in one process: the scheduler of a `beacon serve` replica.

Requests (`Job`s: documents, prompt token ids, sampling settings) arrive from any thread; one
scheduler thread owns the model and runs a loop:

    admit  new jobs -> groups: the same documents and the same prompt length, up to `max_batch` rows
    start  each new group: its memory from the LRU (MemoryCache: device, then pinned host memory,
           each bounded in bytes) or the store, the
           rows' prompts read in one batched step, each row's first token picked
    step   every running group by one token, all groups in one pass through the model

so requests join and leave between steps, and every running request shares every forward pass.

What is batched, precisely: the engine's decoder (decode.StaticDecoder) reads a batch of b
sequences that share one window state — one memory, the same number of tokens read. Rows of one
group are exactly that: the group's memory expanded to b rows (views, no copy), prompts of equal
length read together, then one token per row per step. Groups over different memories (or prompts
of different lengths) step together (decode.step_together): each weight matrix is read once for
every row of every group, the attention runs per group over its own memory. A group's step that
closes its window runs alone, as do the prompts (one read per group). A row that has finished
(stop token, max_tokens, cancelled) keeps riding its group's steps until the whole group is done;
its tokens are dropped. A group whose rows are all finished or cancelled closes at once, freeing
its buffers.

Loads: a single document loads in the background (SnapshotStore.get(..., background=True)) and a
batch-1 group reads its prompt layer by layer as the layers arrive; a group of several rows waits
for the whole memory. A snapshot that fails its checks fails that group's jobs only (their `error`
event carries the SnapshotError) and is not cached. While a group starts, the other groups wait
(one thread drives the device).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from beacon import BeaconLM, Memory
from beacon.decode import step_together
from beacon.layer import STACK_BYTES
from beacon.windows import PositionsError, check_answer_room

from .memory_cache import MemoryCache

if TYPE_CHECKING:  # a type here: the Batcher only calls store.get (the GPU image lacks pylance)
    from snapshots import SnapshotStore

Emit = Callable[[str, object], None]
# device bytes a new group must leave free for the steps together: their stacked slots (STACK_BYTES),
# scores, logits and the allocator's slack. Without it, 64 groups over 32K-token memories on an 80 GB
# GPU (7B shape) filled the device with buffers and the shared passes ran out of memory.
STEP_RESERVE = STACK_BYTES + (1 << 30)


class Overloaded(RuntimeError):
    """The batcher holds as many jobs as it may (running + waiting): try again later."""


@dataclass(frozen=True)
class Sampling:
    """How a job picks its tokens. temperature 0 = greedy (argmax); else softmax(logits / temperature),
    cut to the smallest set of tokens whose probability reaches top_p, drawn with `seed`."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(eq=False)  # compared and hashed by identity (the batcher keeps a set of open jobs)
class Job:
    """One request. `emit(kind, value)` is called from the scheduler thread, in this order:
    ("start", {"cache_hit", "load_s", "memory_tokens"}), then ("token", id) per new token, then
    ("end", "stop" | "length" | "cancelled"); or ("error", exception) at any point instead."""

    doc_ids: tuple[str, ...]
    prompt: list[int]
    sampling: Sampling
    emit: Emit
    submitted: float = field(default_factory=time.perf_counter)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Stop generating for this job (a client that went away, a stop string seen): its row is
        dropped at the next step, and its slot counts as free at once."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class _Row:
    job: Job
    generator: torch.Generator | None
    n_out: int = 0
    live: bool = True


@dataclass
class _Group:
    doc_ids: tuple[str, ...]
    rows: list[_Row]
    stepper: object  # the engine's decoder (lm.decoder: decode.StaticDecoder) over the group's rows
    last: torch.Tensor  # (b, 1) the tokens read next

    def close(self) -> None:
        if self.stepper is not None:
            self.stepper.close()  # buffers back to the model's pool
            self.stepper = None


class Batcher:
    """Answers jobs over the memories of `store` with `lm`, batching as the module docstring says.

    Args:
        lm: the model (with its tokenizer's stop ids in `stops`).
        store: where memories come from; `fingerprint` must match the stored one (lm.fingerprint()).
        stops: token ids that end an answer.
        cache_bytes: device bytes of loaded memories kept between requests (LRU).
        host_cache_bytes: bytes of memories pushed out of the device tier kept in pinned host memory
            (MemoryCache's host tier; a replica on the CPU has none: its device tier is host memory).
        max_batch: rows per group (one batched decoder step).
        max_running: rows decoding at once, all groups together.
        max_waiting: jobs admitted but not started yet; `submit` beyond running + waiting raises Overloaded.
        lanes: one-row groups whose memory fits `lane_slots` slots decode in lanes of one arena
            allocated now (decode_pool.LaneArena: their steps are one pass over the arena, a CUDA graph
            on a GPU); 0: none, every group's decoder has buffers of its own.
        lane_slots: slots per lane: the memory's entries + the question + room for the answer.
        start: run the loop now (False: call `start()` later, e.g. to queue jobs that must start together).
    """

    def __init__(
        self,
        lm: BeaconLM,
        store: SnapshotStore,
        *,
        stops: list[int],
        cache_bytes: int = 2 << 30,
        host_cache_bytes: int = 0,
        max_batch: int = 8,
        max_running: int = 32,
        max_waiting: int = 64,
        lanes: int = 0,
        lane_slots: int = 16384,
        start: bool = True,
    ):
        if max_batch < 1 or max_running < 1 or max_waiting < 0:
            raise ValueError(f"max_batch, max_running must be >= 1, max_waiting >= 0: got {max_batch}, "
                             f"{max_running}, {max_waiting}")  # fmt: skip
        self.lm, self.store, self.stops = lm, store, set(stops)
        self.fingerprint = lm.fingerprint()
        self.cache = MemoryCache(cache_bytes, host_cache_bytes if lm.device.type == "cuda" else 0)
        self.max_batch, self.max_running, self.max_waiting = max_batch, max_running, max_waiting
        self._arena = None
        if lanes:
            lm.decode_buffers.enable_lanes(lm.parts, lanes, lane_slots, lm.dtype, lm.device)
            self._arena = lm.decode_buffers.lanes
        self.stats = {"jobs": 0, "groups": 0, "steps": 0, "rows_stepped": 0, "max_group_rows": 0, "errors": 0,
                      "passes": 0, "max_rows_per_pass": 0, "lane_steps": 0}  # fmt: skip
        self._waiting: deque[Job] = deque()
        self._open: set[Job] = set()  # submitted, not ended (the bounds count these)
        self._groups: list[_Group] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="beacon-batcher", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start the scheduler thread (once)."""
        self._thread.start()

    # ---- the public side -----------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue `job` (any thread). Raises Overloaded when running + waiting jobs reach their bounds."""
        self.submit_many([job])

    def submit_many(self, jobs: list[Job]) -> None:
        """Queue `jobs` at once (any thread): the scheduler sees all of them at its next admit, so jobs
        of one memory and prompt length share a group. Raises Overloaded (queueing none) when they
        would take running + waiting jobs past their bounds."""
        with self._cv:
            if self._stop:
                raise RuntimeError("this Batcher is closed")
            held = self.held()
            if held + len(jobs) > self.max_running + self.max_waiting:
                raise Overloaded(f"{held} answers running or waiting, the limit is {self.max_running} running +"
                                 f" {self.max_waiting} waiting: retry later")  # fmt: skip
            self._open.update(jobs)
            self._waiting.extend(jobs)
            self.stats["jobs"] += len(jobs)
            self._cv.notify()

    @property
    def alive(self) -> bool:
        """Whether the scheduler thread runs (it stops on close() or on an error outside any group)."""
        return self._thread.is_alive()

    def held(self) -> int:
        """Jobs running or waiting (any thread): ended and cancelled ones not counted, so a client that
        goes away frees its slot at once."""
        with self._cv:
            return sum(1 for j in self._open if not j.cancelled)

    def waiting(self) -> int:
        return len(self._waiting)

    def _running(self) -> int:
        """Rows decoding now, finished and cancelled ones not counted (scheduler thread)."""
        return sum(1 for g in self._groups for r in g.rows if r.live and not r.job.cancelled)

    def _end(self, job: Job, kind: str, value: object) -> None:
        """The job's last event ("end" or "error"); it no longer counts against the bounds."""
        with self._cv:
            self._open.discard(job)
        job.emit(kind, value)

    def close(self) -> None:
        """Stop the loop: running and waiting jobs end with ("end", "cancelled")."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self._arena is not None:  # the arena goes with its last lane (its memory: once collected)
            self.lm.decode_buffers.disable_lanes(self._arena)
            self._arena = None
            gc.collect()  # lanes and arena point at each other
            if self.lm.device.type == "cuda":
                torch.cuda.empty_cache()

    # ---- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        ending: tuple[str, object] = ("end", "cancelled")
        try:
            while True:
                with self._cv:
                    while not self._stop and not self._waiting and not self._groups:
                        self._cv.wait()
                    if self._stop:
                        break
                    new = self._take()
                for k, group_jobs in enumerate(new):
                    if not self._start(group_jobs):  # no device memory for it while others run: later
                        with self._cv:
                            self._waiting.extendleft(reversed([j for g in new[k:] for j in g]))
                        break
                self._step_all()
        except BaseException as err:  # a bug or a device fault outside any one group: every job hears of it
            ending = ("error", err)
            with self._cv:
                self._stop = True
        for group in self._groups:
            for row in group.rows:
                if row.live:
                    self._end(row.job, *ending)
            group.close()
        self._groups.clear()
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            self._end(job, *ending)

    def _take(self) -> list[list[Job]]:
        """Waiting jobs that fit under max_running, grouped by (documents, prompt length)."""
        room = self.max_running - self._running()
        groups: dict[tuple, list[list[Job]]] = {}
        while self._waiting and room > 0:
            job = self._waiting.popleft()
            if job.cancelled:
                self._end(job, "end", "cancelled")
                continue
            buckets = groups.setdefault((job.doc_ids, len(job.prompt)), [[]])
            if len(buckets[-1]) == self.max_batch:
                buckets.append([])
            buckets[-1].append(job)
            room -= 1
        return [b for buckets in groups.values() for b in buckets]

    def _start(self, jobs: list[Job]) -> bool:
        """Load the group's memory, read its prompts, pick and emit each row's first token. False (to
        start later) when other groups run and the device has no room for this one's decoder buffers
        (see _fits); `jobs` then holds those still to start (the ones past the model's positions have
        ended, see _drop_past_positions)."""
        doc_ids = jobs[0].doc_ids
        group = None
        try:
            memory, load_s, tier = self._memory(doc_ids)
            hit = tier != "store"
            self._drop_past_positions(jobs, memory)  # in place: a group put back later has only the rest
            if not jobs:
                if not hit:
                    self.cache.discard(doc_ids)  # loaded for nothing: not kept in the LRU
                return True
            b = len(jobs)
            try:
                n_prompt = len(jobs[0].prompt)
                if self._groups and not self._fits(memory, b, n_prompt):  # (waits for a loading memory: caught)
                    return False
                stepper = self.lm.decoder(_rows_of(memory, b), lanes=self._arena is not None)
                prompt = torch.tensor([j.prompt for j in jobs], dtype=torch.long, device=self.lm.device)
                rows = [_Row(j, _generator(j.sampling, self.lm.device)) for j in jobs]
                group = _Group(doc_ids, rows, stepper, prompt)
                logits = stepper.read(prompt)
                memory.ready()  # a background load is done by now: raises what it raised
            except BaseException:
                if not hit:
                    self.cache.discard(doc_ids)  # loaded for this group and failed on first use: not kept
                raise
        except Exception as err:  # a snapshot error, a bad prompt, out of memory: this group's jobs only
            if group is not None:
                group.close()
            self.stats["errors"] += len(jobs)
            for j in jobs:
                self._end(j, "error", err)
            return True
        for j in jobs:
            j.emit("start", {"cache_hit": hit, "cache": tier, "load_s": load_s, "memory_tokens": memory.n_tokens,
                             "batch": b})  # fmt: skip
        self.stats["groups"] += 1
        self.stats["max_group_rows"] = max(self.stats["max_group_rows"], b)
        self._groups.append(group)
        self._emit_picks(group, logits)
        return True

    def _drop_past_positions(self, jobs: list[Job], memory: Memory) -> None:
        """Remove from `jobs` (in place) those whose prompt and answer would pass the model's positions
        after `memory`, ending each with windows.check_answer_room's PositionsError: an answer read at
        positions the model never saw would be made up, not refused."""
        fit = []
        for j in jobs:
            try:
                check_answer_room(self.lm.config, [memory.state], len(j.prompt), j.sampling.max_tokens,
                                  self.lm.parts.max_positions)  # fmt: skip
                fit.append(j)
            except PositionsError as err:
                self.stats["errors"] += 1
                self._end(j, "error", err)
        jobs[:] = fit

    def _fits(self, memory: Memory, b: int, n_prompt: int = 0) -> bool:
        """Whether a decoder of b rows over `memory` fits the device's free memory with STEP_RESERVE
        left for the steps (always, off CUDA)."""
        free = self._free_bytes()
        if free is None:
            return True
        memory.ready()
        if b == 1 and self._arena is not None:  # a lane is allocated already; one-row groups without
            # buffers yet may claim free ones first
            claims = sum(1 for g in self._groups if len(g.rows) == 1 and not g.stepper.has_buffers)
            if self.lm.decode_buffers.free_lanes(self._slots_needed(memory, n_prompt), memory.keys[0]) > claims:
                return True
        return self.decoder_bytes(memory, b) + STEP_RESERVE <= free

    def _free_bytes(self) -> int | None:
        """Device bytes free for new buffers: the driver's free memory plus what the caching
        allocator holds unused; None off CUDA."""
        device = self.lm.device
        if device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)

    def _slots_needed(self, memory: Memory, n_prompt: int = 0) -> int:
        """Slots a decoder over `memory` asks for (at most): its entries + the decoder's default
        headroom, or + a prompt of `n_prompt` tokens padded as the decoder pads its rows (raw rows
        and beacon rows, at most as many, each rounded up to decode.ROW_GRAIN)."""
        from beacon.decode import ROW_GRAIN

        prompt_rows = 2 * (-(-n_prompt // ROW_GRAIN) * ROW_GRAIN)
        return memory.state.size + max(2 * self.lm.config.beacon_window + 64, prompt_rows)

    def decoder_bytes(self, memory: Memory, b: int) -> int:
        """Bytes a decoder of b rows over `memory` allocates (an upper estimate: the model's buffer pool
        may have a free set for it): three tensors per layer (RoPE'd keys, values, window keys) of b
        rows x cap slots, cap = the memory's entries + room for the answer rounded up as the decoder
        rounds it (decode.CAP_GRAIN); +25% and 256 MiB for the step's activations."""
        from beacon.decode import CAP_GRAIN

        cap = -(-self._slots_needed(memory) // CAP_GRAIN) * CAP_GRAIN
        n = memory.state.size
        one_tensor_per_entry = memory.nbytes() // max(1, 2 * memory.batch_size * n)  # keys of every layer
        buffers = 3 * one_tensor_per_entry * b * cap
        return buffers + buffers // 4 + (256 << 20)

    def _step_all(self) -> None:
        """One token for every running group (groups with no live row end): their decoder steps run
        as one pass through the model (decode.step_together), whatever memories they read."""
        running = []
        for group in list(self._groups):
            if any(r.live and not r.job.cancelled for r in group.rows):
                running.append(group)
            else:
                self._finish(group)
        if not running:
            return
        lane_steps = sum(g.stepper.stats["lane_steps"] for g in running)
        results = step_together([g.stepper for g in running], [g.last for g in running])
        self.stats["lane_steps"] += sum(g.stepper.stats["lane_steps"] for g in running) - lane_steps
        self.stats["passes"] += 1
        self.stats["max_rows_per_pass"] = max(self.stats["max_rows_per_pass"], sum(len(g.rows) for g in running))
        for group, logits in zip(running, results, strict=True):
            if isinstance(logits, Exception):  # this group's jobs only (a shared pass that failed: all of its)
                self.stats["errors"] += 1
                for r in group.rows:
                    if r.live:
                        r.live = False
                        self._end(r.job, "error", logits)
                self._finish(group)
                continue
            self.stats["steps"] += 1
            self.stats["rows_stepped"] += len(group.rows)
            self._emit_picks(group, logits)

    def _emit_picks(self, group: _Group, logits: torch.Tensor) -> None:
        picks = _pick(logits, [r.job.sampling for r in group.rows], [r.generator for r in group.rows])
        for row, token in zip(group.rows, picks, strict=True):
            if not row.live:
                continue
            if row.job.cancelled:
                row.live = False
                self._end(row.job, "end", "cancelled")
                continue
            row.n_out += 1
            row.job.emit("token", token)
            if token in self.stops:
                row.live = False
                self._end(row.job, "end", "stop")
            elif row.n_out >= row.job.sampling.max_tokens:
                row.live = False
                self._end(row.job, "end", "length")
        group.last = torch.tensor([[t] for t in picks], dtype=torch.long, device=self.lm.device)
        if not any(r.live for r in group.rows):
            self._finish(group)

    def _finish(self, group: _Group) -> None:
        for r in group.rows:
            if r.live:
                r.live = False
                self._end(r.job, "end", "cancelled")
        group.close()
        if group in self._groups:
            self._groups.remove(group)

    def _memory(self, doc_ids: tuple[str, ...]) -> tuple[Memory, float, str]:
        """(memory of the documents in order, seconds until it was on the device, where it came from:
        "device" or "host" (the cache's tiers) or "store")."""
        tier = "host" if self.cache.in_host(doc_ids) else "device"
        start = time.perf_counter()
        cached = self.cache.get(doc_ids)
        if cached is not None:
            if tier == "device":
                return cached, 0.0, tier
            if cached.device.type == "cuda":
                torch.cuda.synchronize(cached.device)  # the copy back from pinned memory, timed whole
            return cached, time.perf_counter() - start, tier
        background = len(doc_ids) == 1  # several documents are loaded, then concatenated
        memory = self.store.get(list(doc_ids), fingerprint=self.fingerprint, device=self.lm.device,
                                background=background)  # fmt: skip
        self.cache.put(doc_ids, memory)  # still loading if background: its first use waits for it
        return memory, time.perf_counter() - start, "store"


def _rows_of(memory: Memory, b: int) -> Memory:
    """A share of `memory` read as b identical rows (expanded views: nothing copied). Neither the
    engine nor the decoder writes into a memory's tensors, so views are safe."""
    if b == 1:
        return memory.share()
    memory.ready()
    grow = lambda ts: None if ts is None else [None if t is None else t.expand(b, *t.shape[1:]) for t in ts]  # noqa: E731
    return Memory(grow(memory.keys), grow(memory.values), memory.state, grow(memory.rot_keys))


def _generator(s: Sampling, device: torch.device) -> torch.Generator | None:
    if s.temperature == 0:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(s.seed if s.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return gen


def _pick(logits: torch.Tensor, samplings: list[Sampling], gens: list[torch.Generator | None]) -> list[int]:
    """Each row's next token: argmax for greedy rows (one batched argmax), else its own draw."""
    picks = logits.argmax(dim=-1).tolist()
    for i, (s, gen) in enumerate(zip(samplings, gens, strict=True)):
        if gen is None:
            continue
        row = logits[i].float() / s.temperature
        if s.top_p < 1.0:
            sorted_logits, order = torch.sort(row, descending=True)
            probs = sorted_logits.softmax(-1)
            cut = probs.cumsum(-1) - probs >= s.top_p  # keep the smallest set reaching top_p
            row = torch.full_like(row, float("-inf")).scatter(0, order, sorted_logits.masked_fill(cut, float("-inf")))
        picks[i] = int(torch.multinomial(row.softmax(-1), 1, generator=gen))
    return picks
