"""Fast reading after a memory: static buffers, replayed as CUDA graphs — the question, then its answer.

Almost every step after a memory only *appends*: new rows (a question's tokens, then one token at
a time, and in interleave mode a beacon after every `ratio`-th token) join the open window and
nothing is condensed. Such a step has a fixed shape, so it can run over preallocated buffers and
be captured once as a CUDA graph:

    k_rot[l] (b, h_kv, cap, d)   RoPE'd keys  [ O (rot_keys) | window | new rows | room ]
    v[l]     (b, h_kv, cap, d)   values, same slots
    k_win[l] (b, h_kv, cap - |O|, d)  pre-RoPE keys of the window slots (what a Memory stores)
    mask     (rows, cap) bool    which slots each new row sees (O always; the window per
                                 windows.window_mask; nothing beyond the rows)

Buffers outlive one decoder: `cap` is rounded up to CAP_GRAIN slots and the model keeps a few free
buffer sets (BufferPool) with the graphs captured over them, so the next memory of a similar size
— the next document's question — replays graphs captured for an earlier one instead of capturing
again. Slots past a memory's entries hold stale but finite numbers that the mask hides.

A multi-token read (`read`, the question) pads its raw rows and its beacon rows each up to a
multiple of ROW_GRAIN, so questions of nearby lengths share one graph: pad rows read token
ids left in the static input, see only their own slot and write into the room past the real rows,
which nothing reads before it is written again. Reading a memory that is still loading
(SnapshotStore.get(..., background=True)) replays the question layer by layer — one graph per layer
— each just after its layer arrives, so the load and the question overlap.

The planner (windows.plan_steps, window_mask) still decides every step on the host — positions,
visibility, whether the window closes — so this file holds no window arithmetic of its own. To keep
the host ahead of the GPU, single-token decoding plans a *block* of up to BLOCK tokens of the open
window at once (what reading them in one piece gives, which is what reading them one by one gives:
tested) and moves the block's positions and mask rows to the GPU in one copy; each token then only
slices them. A step that condenses (the window closes) or does not fit the buffers is handed to the
general path (BeaconLM.forward) on a Memory rebuilt from the buffers; the buffers are rebuilt after it.

The step itself is layer.step_layer per layer (attention over all `cap` slots under the mask:
attention.attend_slots), between layer.embed and layer.head; the buffers, their graphs and the
pool are decode_pool.py. Optionally (`compiled`) the whole step goes through torch.compile before
capture. Speed: docs/performance.md §2, §3.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from .decode_pool import ARENA_SHAPES, BufferPool, Buffers, LaneArena, Shape, StepRows
from .families import apply_rope
from .layer import (
    embed,
    head,
    step_layer,
    step_layer_together,
    step_rows_split,
    together_groups,
    write_rows_together,
)
from .memory import Memory
from .windows import Chunk, WindowState, build_chunk, plan_steps, window_mask

logger = logging.getLogger(__name__)

__all__ = ["MODES", "BufferPool", "StaticDecoder", "step_together"]

MODES = ("auto", "static", "eager", "compiled")
BLOCK = 64  # tokens of the open window planned (and staged to the GPU) at once
CAP_GRAIN = 4096  # buffer slots are rounded up to this, so memories of similar size share buffers and graphs
ROW_GRAIN = 16  # a multi-token read pads raw rows and beacon rows each to a multiple of this


def _round_up(n: int, grain: int) -> int:
    return -(-n // grain) * grain


@dataclass
class _Block:
    """The next tokens of the open window, planned at once: entries in reading order (= slot order)."""

    start: WindowState  # state before the block
    after: WindowState  # state after all of it
    n_tokens: int  # tokens planned
    first_entry: list[int]  # per token: index of its raw entry among the block's entries (+ end)
    pos: torch.Tensor  # (n_entries,) on the device
    mask: torch.Tensor  # (n_entries, cap - |O|) bool on the device: window slots each entry's row sees
    done: int = 0  # tokens read so far


class StaticDecoder:
    """Reads on after a memory (taken as it is: the decoder never writes into its tensors, so a
    `Memory.share()` will do) — a question at once (`read`), then one token at a time (`step`).

    Both return next-token logits (b, vocab) float32, exactly what `BeaconLM.forward(tokens,
    memory, logits="last")` returns (up to float rounding of the attention, ~1e-6 in float32).
    `memory()` gives the memory read so far; `close()` hands the buffers back to the model's pool.
    `graphs=True` (CUDA only) captures one CUDA graph per step shape;
    `compiled=True` runs the step through torch.compile first (fused norms, RoPE, softmax: fewer,
    larger kernels inside the graph; the first step of each shape compiles, tens of seconds);
    `eager=True` reads everything through the general path (BeaconLM.forward), as a reference;
    `lanes=True` lets it take a lane of the model's arena (decode_pool.LaneArena) when one fits: its
    one-token steps then run through step_together's pass over the arena (only for a caller that
    steps all such decoders from one thread, as the Batcher does).
    """

    def __init__(
        self, lm, memory: Memory, *, graphs: bool = False, compiled: bool = False, eager: bool = False,
        headroom: int | None = None, lanes: bool = False,
    ):  # fmt: skip
        if graphs and lm.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.lm = lm
        self.graphs = graphs
        self.compiled = compiled
        self.eager = eager
        self.lanes = lanes
        self.headroom = headroom if headroom is not None else 2 * lm.config.beacon_window + 64
        self._memory: Memory | None = memory
        self._buf: Buffers | None = None
        self._block: _Block | None = None
        self._state = memory.state
        self._closed = False
        self._filled = 0  # layers of the memory copied into the buffers (a loading memory fills as it arrives)
        self._fill_size = 0  # slots [0, fill_size) of the buffers come from the memory
        self._win_pos: torch.Tensor | None = None  # RoPE positions of the memory's window entries
        self.stats = {"static_steps": 0, "general_steps": 0, "builds": 0, "blocks": 0, "reads": 0, "captures": 0,
                      "together_steps": 0, "lane_steps": 0, "shared_pass_failures": 0}  # fmt: skip

    # ---- the public steps ----------------------------------------------------------------------
    @property
    def state(self) -> WindowState:
        """Where reading stands (mid-block: planned again for the tokens read so far)."""
        block = self._block
        if block is None or block.done == 0:
            return self._state
        if block.done == block.n_tokens:
            return block.after
        steps = plan_steps(self.lm.config, block.start, block.done, max_positions=self.lm.parts.max_positions)
        return steps[-1].after

    @torch.no_grad()
    def read(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read `tokens` (b, n) after the memory at once — a question — and return the last token's
        next-token logits (b, vocab). One static step when they only append to the open window
        (the common case: a question shorter than what is left of the window), else the general path."""
        self._check_open()
        if tokens.dim() != 2 or tokens.shape[0] != self._memory.batch_size or tokens.shape[1] == 0:
            raise ValueError(f"tokens must be (batch {self._memory.batch_size}, n >= 1), got {tuple(tokens.shape)}")
        if self.eager:
            return self._general(tokens)
        self.lm.check_ids(tokens)
        if tokens.shape[1] == 1:
            return self.step(tokens)
        self._settle_block()
        return self._append(tokens)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read `tokens` (b, 1) after the memory; return the next-token logits (b, vocab). Inference
        only: no gradients. Ids on the host are range-checked; ids on the device are taken as the
        model's own picks (checking them would cost a device sync per token)."""
        self._check_open()
        if tokens.shape != (self._memory.batch_size, 1):
            raise ValueError(f"tokens must be (batch {self._memory.batch_size}, 1), got {tuple(tokens.shape)}")
        if self.eager:
            return self._general(tokens)
        if tokens.device.type == "cpu":
            self.lm.check_ids(tokens)
        shape = self._stage_step(tokens)
        return self._append(tokens) if shape is None else self._execute(shape)

    @property
    def has_buffers(self) -> bool:
        """Whether the decoder holds static buffers now (from its first static read or step on)."""
        return self._buf is not None

    @torch.no_grad()
    def memory(self) -> Memory:
        """The memory read so far (rebuilt from the buffers: keys pre-RoPE, layout [O | W])."""
        self._check_open()
        if self._buf is None:
            return self._memory
        self._memory.ready()
        buf, base = self._buf, self._memory
        n_o, size = buf.n_outer, buf.size
        keys = [
            torch.cat([k[:, :, :n_o], w[:, :, : size - n_o]], dim=2) for k, w in zip(base.keys, buf.k_win, strict=True)
        ]
        values = [v[:, :, :size].clone() for v in buf.values]
        rot = [k[:, :, :n_o].clone() for k in buf.k_rot]
        return Memory(keys, values, self.state, rot)

    def close(self) -> None:
        """Hand the buffers (and the CUDA graphs over them) back to the model's pool; the decoder
        cannot be used after this. Idempotent, and never raises: a loader's error has reached
        whoever read the memory (and reaches every later user of it)."""
        buf, self._buf = self._buf, None
        try:
            if buf is not None and self._memory is not None:
                self._memory.ready()  # the loader must be done writing before the buffers serve another memory
        except BaseException:  # only the wait matters here (see the docstring)
            pass
        finally:
            if buf is not None:
                self.lm.decode_buffers.give(buf)
            self._memory, self._block, self._closed = None, None, True

    # ---- planning ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this StaticDecoder is closed; start a new one from a memory")

    def _settle_block(self) -> None:
        """Forget a block half read (a read after some steps): its unread slots are dropped."""
        if self._block is not None:
            self._state, self._block = self.state, None
            self._buf.slot_pos = self._buf.slot_pos[: self._buf.size]

    def _append(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read `tokens` (b, n) in one static step where they only append to the open window (a
        question's rows padded: _padded_shape), else through the general path."""
        chunk = self._plan(tokens.shape[1])
        if chunk is None:
            return self._general(tokens)
        shape = _padded_shape(chunk)
        if self._buf is None or not self._fits(chunk, sum(shape)):
            self._build(chunk, sum(shape))
        self._stage(chunk, shape, tokens)
        self.stats["reads"] += tokens.shape[1] > 1
        return self._execute(shape)

    def _general(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hand the tokens to the general path (BeaconLM.forward) on a Memory rebuilt from the buffers."""
        self._settle_block()
        # the decoder goes on from `memory` whatever happens: forward updates it pass by pass, so after
        # an error it still holds a whole memory (the tokens read before the failing pass)
        memory = self._release()
        try:
            _, logits = self.lm.forward(tokens, memory, logits="last")
        finally:
            self._state = memory.state
        self.stats["general_steps"] += 1
        return logits

    def _plan(self, n: int) -> Chunk | None:
        """The chunk that reads the next `n` tokens if it only adds rows to the open window (nothing
        condensed or dropped), else None (the general path reads them)."""
        cfg = self.lm.config
        steps = plan_steps(cfg, self._state, n, max_positions=self.lm.parts.max_positions)
        if len(steps) != 1 or steps[0].closes:
            return None
        chunk = build_chunk(cfg, steps)
        c, src = chunk.n_cached, chunk.compact_src  # the memory keeps every entry, cached ones in place
        keep_all = src.numel() == len(chunk.cols) and bool(
            torch.equal(src.sort().values, torch.arange(len(chunk.cols))) and torch.equal(src[:c], torch.arange(c))
        )
        return chunk if chunk.n_joined == 0 and chunk.n_copies == 0 and keep_all else None

    def _fits(self, chunk: Chunk, n_slots: int) -> bool:
        c = chunk.n_cached
        return self._continues(chunk.n_outer, chunk.cols.pos[:c], chunk.cols.pos[c:], n_slots)

    def _continues(self, n_outer: int, cached_pos: torch.Tensor, new_pos: torch.Tensor, n_slots: int) -> bool:
        """Whether new entries at `new_pos` (taking `n_slots` slots, padding included) can follow in the
        buffers: same O, the buffers hold exactly the window the planner expects (at the same
        positions), and there is room."""
        buf = self._buf
        return (
            n_outer == buf.n_outer
            and buf.n_outer + len(cached_pos) == buf.size
            and buf.size + n_slots <= buf.room
            and int(new_pos.max()) < buf.cap
            and torch.equal(cached_pos, buf.slot_pos[buf.n_outer :])
        )

    def _plan_block(self) -> _Block | None:
        """Plan the next tokens of the open window at once, or None where one token at a time must be
        planned: the window is about to close, or interleave has yet to fix its ratio."""
        cfg, buf, state = self.lm.config, self._buf, self._state
        n = min(BLOCK, cfg.beacon_window - state.window_raw - 1)  # the closing token goes its own way
        if n < 2 or (cfg.interleave and state.window_ratio < 0):
            return None
        steps = plan_steps(cfg, state, n, known_length=state.n_tokens + 1, max_positions=self.lm.parts.max_positions)
        if len(steps) != 1 or steps[0].closes:
            return None
        step = steps[0]
        c, new = len(step.cached), step.new
        if not self._continues(state.n_outer, step.cached.pos, new.pos, len(new)):
            return None
        cols = [torch.cat([getattr(step.cached, f), getattr(new, f)]) for f in ("beacon", "idx", "e")]
        meta = dict(zip(("beacon", "idx", "e"), cols, strict=True))
        meta |= {
            "window": torch.zeros(c + len(new), dtype=torch.long),
            "row_ratio": torch.full((len(new),), max(step.ratio, 0), dtype=torch.long),
            "copy_window": torch.empty(0, dtype=torch.long),
        }
        visible = window_mask(cfg, meta, c)  # (entries, c + entries): rows never see later entries
        moved = self.lm.stager.move({"pos": new.pos, "mask": visible.long().flatten()})
        # only the window's first c + entries slots can be visible: the rest is set on the device
        mask = torch.zeros(len(new), buf.cap - buf.n_outer, dtype=torch.bool, device=moved["mask"].device)
        mask[:, : c + len(new)] = moved["mask"].view(len(new), -1).bool()
        first = torch.nonzero(new.beacon == 0).flatten().tolist() + [len(new)]
        buf.slot_pos = torch.cat([buf.slot_pos, new.pos])  # slots filled as the block is read
        self.stats["blocks"] += 1
        return _Block(
            start=state, after=step.after, n_tokens=n, first_entry=first, pos=moved["pos"], mask=mask,
        )  # fmt: skip

    # ---- buffers -------------------------------------------------------------------------------
    def _drop_buffers(self) -> None:
        """Forget the buffers, which may hold part of a step: a set of its own is dropped, a lane goes
        back to its arena (whoever takes it next fills it before reading it)."""
        buf, self._buf = self._buf, None
        if buf is not None and buf.arena is not None:
            self.lm.decode_buffers.give(buf)

    def _release(self) -> Memory:
        """Go on from a Memory rebuilt from the buffers (returned), the buffers handed back to the pool."""
        memory = self.memory()
        if self._buf is not None:
            self.lm.decode_buffers.give(self._buf)
            self._buf = None
        self._memory = memory
        return memory

    def _build(self, chunk: Chunk, n_slots: int) -> None:
        """Take buffers from the pool (or make them) and fill them from the memory: O's RoPE'd keys,
        the window's keys at their positions. A memory still loading is filled layer by layer as
        its layers arrive (`_fill`, called from `_execute`)."""
        memory = self._release()  # what the decoder has read, whatever happens next
        n_o, c = chunk.n_outer, chunk.n_cached
        size = n_o + c
        need = max(size + self.headroom, size + n_slots, int(chunk.cols.pos.max()) + 1)
        cap = _round_up(need, CAP_GRAIN)
        like = memory.keys[0]
        buf = self.lm.decode_buffers.take(cap, like, need, self.lanes) or Buffers.allocate(self.lm.parts, cap, like)
        buf.n_outer, buf.size = n_o, size
        buf.slot_pos = torch.cat([torch.arange(n_o), chunk.cols.pos[:c]])
        self._buf = buf
        self._win_pos = self.lm.stager.move({"pos": chunk.cols.pos[:c]})["pos"]  # never a host-blocking copy
        self._filled, self._fill_size = 0, size
        if memory.pending is None:
            self._fill(memory.n_layers)
        self.stats["builds"] += 1

    def _fill(self, upto: int) -> None:
        """Copy layers [filled, upto) of the memory into the buffers (waiting for each to arrive)."""
        memory, buf = self._memory, self._buf
        n_o, size = buf.n_outer, self._fill_size
        cos_o, sin_o = buf.cos[:n_o], buf.sin[:n_o]
        cos_w, sin_w = buf.cos[self._win_pos], buf.sin[self._win_pos]
        for i in range(self._filled, upto):
            memory.ready(i)
            keys = memory.keys[i]
            rot = memory.rot_keys[i] if memory.rot_keys is not None else None
            if rot is not None and rot.shape[2] == n_o:
                buf.k_rot[i][:, :, :n_o] = rot
            else:
                buf.k_rot[i][:, :, :n_o] = apply_rope(keys[:, :, :n_o], cos_o, sin_o)
            window = keys[:, :, n_o:size]
            buf.k_rot[i][:, :, n_o:size] = apply_rope(window, cos_w, sin_w)
            buf.values[i][:, :, :size] = memory.values[i]
            buf.k_win[i][:, :, : size - n_o] = window
        self._filled = max(self._filled, upto)

    # ---- staging the static inputs -------------------------------------------------------------
    def _static_rows(self, shape: Shape) -> StepRows:
        """The static inputs of a step of `shape` (made once per buffer set), O part of the mask set."""
        buf = self._buf
        rows = buf.rows.get(shape)
        if rows is None:
            dev, n, b = self.lm.device, sum(shape), self._memory.batch_size
            long = lambda k: torch.zeros(k, dtype=torch.long, device=dev)  # noqa: E731
            rows = buf.rows[shape] = StepRows(
                torch.zeros(b, shape[0], dtype=torch.long, device=dev), long(n), long(n), long(n),
                torch.zeros(n, buf.cap, dtype=torch.bool, device=dev), long(1),
            )  # fmt: skip
        if rows.n_outer != buf.n_outer:
            rows.mask[:, : buf.n_outer] = True
            rows.n_outer = buf.n_outer
        return rows

    def _stage_step(self, tokens: torch.Tensor) -> Shape | None:
        """Stage a one-token step from the planned block (planning the next block when one is done):
        its shape, or None where this token must be read another way (`_append`)."""
        block = self._block
        if block is not None and block.done == block.n_tokens:
            self._state, self._block, block = block.after, None, None
        if block is None and self._buf is not None:
            block = self._block = self._plan_block()
        if block is None:
            return None
        shape = self._stage_from_block(block)
        self._buf.rows[shape].tokens.copy_(tokens)
        return shape

    def _stage_from_block(self, block: _Block) -> Shape:
        """Static inputs of the block's next token: device-to-device copies only."""
        a, b = block.first_entry[block.done], block.first_entry[block.done + 1]
        n, buf = b - a, self._buf
        shape = (1, n - 1)
        static = self._static_rows(shape)
        static.pos.copy_(block.pos[a:b])
        slots = torch.arange(buf.size, buf.size + n, device=block.pos.device)
        static.slot.copy_(slots)
        static.win_slot.copy_(slots - buf.n_outer)
        static.mask[:, buf.n_outer :].copy_(block.mask[a:b])
        static.last.zero_()
        block.done += 1
        buf.size += n
        return shape

    def _stage(self, chunk: Chunk, shape: Shape, tokens: torch.Tensor) -> None:
        """Write a chunk's tokens, positions, slots and mask into the static inputs of `shape`; real
        rows first in each part, pad rows (see the module docstring) after them."""
        buf, c, n, n_raw = self._buf, chunk.n_cached, chunk.n_rows, chunk.n_raw
        raw_pad, width = shape[0] - n_raw, sum(shape)
        static = self._static_rows(shape)
        # where each of the chunk's rows (raw first, then beacons) goes among the padded rows
        at = torch.cat([torch.arange(n_raw), torch.arange(n_raw, n) + raw_pad])
        pad = torch.ones(width, dtype=torch.bool)
        pad[at] = False
        pad_at = torch.nonzero(pad).flatten()
        # the memory keeps the window in reading order (compact_src), not the chunk's raw-first order:
        # column k of the chunk lives in window slot slot_of[k]
        slot_of = torch.empty(c + n, dtype=torch.long)
        slot_of[chunk.compact_src] = torch.arange(c + n)
        slots = torch.empty(width, dtype=torch.long)
        slots[at] = buf.n_outer + slot_of[c:]
        slots[pad_at] = torch.arange(buf.size + n, buf.size + width)  # room past the real rows
        pos = torch.zeros(width, dtype=torch.long)
        pos[at] = chunk.cols.pos[c:]
        # the window slots any row may see: cached, the rows, the pad rows' own (a few KB to move; the
        # rest of the mask row is cleared on the device)
        span = c + width
        mask_win = torch.zeros(width, span, dtype=torch.long)
        visible = torch.zeros(n, c + n, dtype=torch.long)
        visible[:, slot_of] = window_mask(self.lm.config, chunk.host_meta(), c).long()
        mask_win[at, : c + n] = visible
        mask_win[pad_at, slots[pad_at] - buf.n_outer] = 1  # a pad row sees itself only: finite, unseen
        host = {"pos": pos, "slot": slots, "mask": mask_win.flatten(), "last": torch.tensor([n_raw - 1])}
        moved = self.lm.stager.move(host)
        static.pos.copy_(moved["pos"])
        static.slot.copy_(moved["slot"])
        static.win_slot.copy_(moved["slot"] - buf.n_outer)
        static.mask[:, buf.n_outer :].zero_()
        static.mask[:, buf.n_outer : buf.n_outer + span].copy_(moved["mask"].view(width, span).bool())
        static.last.copy_(moved["last"])
        static.tokens[:, :n_raw].copy_(tokens)
        buf.slot_pos = torch.cat([buf.slot_pos, chunk.cols.pos[chunk.compact_src[c:]]])
        buf.size += n
        self._state = chunk.after

    # ---- the step itself -----------------------------------------------------------------------
    def _embed(self, shape: Shape) -> dict[str, torch.Tensor]:
        """Rows' input (raw rows' token embeddings, then beacons') and their RoPE (1, 1, n, d)."""
        buf = self._buf
        static = buf.rows[shape]
        x = embed(self.lm.parts, self.lm.beacon.embed, static.tokens, shape[1])  # (b, n, hidden)
        return {"x": x, "cos": buf.cos[static.pos][None, None], "sin": buf.sin[static.pos][None, None]}

    def _layer(self, i: int, shape: Shape, io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Decoder layer i over the step's rows; writes their keys/values into the buffers. Graph-safe."""
        rope = (io["cos"], io["sin"])
        x = step_layer(self.lm.parts, i, self.lm.beacon.layers[i], io["x"], rope, self._buf, self._buf.rows[shape])
        return {"x": x, "cos": io["cos"], "sin": io["sin"]}

    def _head(self, shape: Shape, io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        last = io["x"].index_select(1, self._buf.rows[shape].last)  # (b, 1, hidden)
        return {"logits": head(self.lm.parts, last)[:, 0]}

    def _whole(self, shape: Shape) -> dict[str, torch.Tensor]:
        """The whole step: embed, every layer, the head."""
        io = self._embed(shape)
        for i in range(len(self.lm.parts.layers)):
            io = self._layer(i, shape, io)
        return self._head(shape, io)

    def _units(self, shape: Shape, split: bool) -> list:
        """The step as functions of the previous one's output: one (the whole step), or, split, the
        embedding, each layer and the head apart — so a loading memory's layers can be waited for
        in between."""
        if not split:
            whole = _compiled_whole() if self.compiled else StaticDecoder._whole
            return [lambda _io: whole(self, shape)]
        n_layers = len(self.lm.parts.layers)
        layer = lambda i: lambda io: self._layer(i, shape, io)  # noqa: E731
        head = lambda io: self._head(shape, io)  # noqa: E731
        return [lambda _io: self._embed(shape)] + [layer(i) for i in range(n_layers)] + [head]

    def _execute(self, shape: Shape) -> torch.Tensor:
        """Run the staged step (eager, or replaying its CUDA graphs); returns the logits. If it raises
        (a layer of a loading memory failed its checks, out of memory) the decoder drops its buffers
        (they may hold part of a step, or of a memory that stopped arriving) and closes — the memory
        it started from is unchanged."""
        try:
            loading = split = self._filled < self._memory.n_layers
            # a lane never captures graphs over its own views (they would be captured again in every
            # lane): it reads questions eagerly, and its one-token steps go through the arena's graphs
            # (step_together) or, the few it takes alone (a window about to close), eagerly
            use_graphs = self.graphs and self._buf.arena is None
            if use_graphs and split and (shape, True) not in self._buf.graphs:
                self._fill(self._memory.n_layers)  # first capture of this shape: wait for the whole memory
                loading = False
            units = self._units(shape, split)
            graphs = None
            if use_graphs:
                self.stats["captures"] += (shape, split) not in self._buf.graphs
                graphs = self._buf.capture((shape, split), units)
            io: dict[str, torch.Tensor] = {}
            for k, unit in enumerate(units):
                if loading and 1 <= k <= self._memory.n_layers:
                    self._fill(k)  # layer k - 1 is in the buffers before its unit runs
                if graphs is None:
                    io = unit(io)
                else:
                    graphs[k][0].replay()
                    io = graphs[k][1]
            self._memory.ready()  # a loader that was running is joined (and what it raised is raised)
        except BaseException:
            self._drop_buffers()
            self.close()
            raise
        self.stats["static_steps"] += 1
        return io["logits"].clone() if graphs is not None else io["logits"]


@torch.no_grad()
def step_together(decoders: list[StaticDecoder], tokens: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
    """One token for each decoder — `tokens[k]` (b_k, 1) after decoder k's memory — with their static
    steps run as one: every row of every decoder through each weight matrix once (a decode step
    reads the weights, not the memories, at small batches: the step costs about what one decoder's
    costs), the attention of each decoder over its own memory (stacked for decoders of one buffer
    shape). Different memories, lengths, batches, window states and ratios mix freely. A decoder
    whose token cannot take a static step now (its window closes, its memory is still loading,
    eager mode) steps alone as `step` would.

    Returns per decoder its next-token logits (b_k, vocab), what `decoders[k].step(tokens[k])` gives
    (up to float rounding, ~1e-6 in float32), or the exception its step raised: one decoder's
    failure is its own (a shared pass that fails is run again as each decoder's step alone).
    No CUDA graphs here (the set of decoders changes between steps); each decoder alone still uses them."""
    if len({id(d) for d in decoders}) != len(decoders):
        raise ValueError("a decoder appears twice: step each once per call")
    if any(d.lm is not decoders[0].lm for d in decoders):
        raise ValueError("decoders stepped together must share one model")
    results: list[torch.Tensor | Exception | None] = [None] * len(decoders)
    together: list[tuple[int, StaticDecoder, Shape]] = []
    for k, (dec, tok) in enumerate(zip(decoders, tokens, strict=True)):
        try:
            dec._check_open()
            if dec.eager or dec._memory is None or dec._filled < dec._memory.n_layers:
                results[k] = dec.step(tok)
                continue
            if tok.shape != (dec._memory.batch_size, 1):
                raise ValueError(f"tokens must be (batch {dec._memory.batch_size}, 1), got {tuple(tok.shape)}")
            if tok.device.type == "cpu":
                dec.lm.check_ids(tok)
            shape = dec._stage_step(tok)
            if shape is None:
                results[k] = dec._append(tok)
            else:
                together.append((k, dec, shape))
        except Exception as err:
            results[k] = err
        except BaseException:  # interrupted: the staged ones never ran their step, so they cannot go on
            for _, staged, _ in together:
                staged._drop_buffers()
                staged.close()
            raise
    arena = _common_arena(together)
    lanes = [t for t in together if arena is not None and t[1]._buf.arena is arena and t[2] in ARENA_SHAPES]
    # one step over the arena's busy front: with CUDA graphs even for one lane (the arena's few graphs
    # serve every lane; a lane's own would be captured per lane), else from two lanes on
    if len(lanes) >= (1 if lanes and all(d.graphs for _, d, _ in lanes) else 2):
        for (k, _, _), out in zip(lanes, _execute_lanes(arena, [(d, s) for _, d, s in lanes]), strict=True):
            results[k] = out
        together = [t for t in together if t not in lanes]
    if len(together) == 1:  # nothing to share: its own step (CUDA graphs where it has them)
        k, dec, shape = together[0]
        try:
            results[k] = dec._execute(shape)
        except Exception as err:
            results[k] = err
    elif together:
        for (k, _, _), out in zip(together, _execute_together([(d, s) for _, d, s in together]), strict=True):
            results[k] = out
    return results


def _common_arena(together: list[tuple[int, StaticDecoder, Shape]]) -> LaneArena | None:
    """The arena the staged decoders' lanes belong to (a model's pool holds one at a time), or None."""
    arenas = [d._buf.arena for _, d, _ in together if d._buf.arena is not None]
    return arenas[0] if arenas else None


def _execute_lanes(arena: LaneArena, staged: list[tuple[StaticDecoder, Shape]]) -> list[torch.Tensor | Exception]:
    """Run staged one-token steps of decoders in lanes of `arena` as one step over the whole arena
    (decode_pool's module docstring): lanes staged without a beacon row get a pad row, lanes not
    stepping write and read only their scratch slots, so the step's shape never changes and its
    CUDA graph is captured once. If it fails, each decoder takes its staged step alone."""
    decs = [d for d, _ in staged]
    lm = decs[0].lm
    try:
        front = _front(arena, max(d._buf.lane for d in decs) + 1)
        _stage_arena(arena, staged, front)
        logits = _arena_pass(lm, arena.front(front), graphs=all(d.graphs for d in decs))
    except Exception as err:
        return _each_alone(staged, "lanes", f"{type(err).__name__}: {err}")
    except BaseException:  # interrupted: the lanes may hold part of the step
        for d in decs:
            d._drop_buffers()
            d.close()
        raise
    out = []
    for d in decs:
        d.stats["static_steps"] += 1
        d.stats["together_steps"] += 1
        d.stats["lane_steps"] += 1
        g = d._buf.lane
        out.append(logits[g : g + 1].clone())
    return out


def _front(arena: LaneArena, n: int) -> int:
    """Lanes a step over lanes [0, n) runs: n rounded up to a power of two (or all), so few graphs
    are captured and a step reads few idle lanes (busy lanes gather at the front: LaneArena.take)."""
    return min(arena.n_lanes, 1 << (n - 1).bit_length())


def _stage_arena(arena: LaneArena, staged: list[tuple[StaticDecoder, Shape]], front: int) -> None:
    """The inputs of a step over lanes [0, front) (their (1, 1) rows): a lane staged at (1, 0) gets
    its raw row there and a pad row on its scratch; a lane not stepping gets both rows on its
    scratch. Device-side copies and one small host-to-device move."""
    whole, lm = arena.whole, staged[0][0].lm
    one, two = whole.rows[(1, 0)], whole.rows[(1, 1)]
    padded = [d._buf.lane for d, shape in staged if shape == (1, 0)]
    stepping = {d._buf.lane for d, _ in staged}
    idle = [g for g in range(front) if g not in stepping]
    for g in padded + idle:  # their (1, 1) rows will no longer hold what their decoders staged there
        arena.lanes[g].rows[(1, 1)].n_outer = -1  # (first: a write below that fails leaves no stale O part)
    lists = {k: torch.tensor(v, dtype=torch.long) for k, v in (("padded", padded), ("idle", idle)) if v}
    moved = lm.stager.move(lists) if lists else {}
    scratch = arena.inert_slot  # (2,)
    if padded:
        at = moved["padded"]
        two.tokens[at] = one.tokens[at]
        two.pos[at] = torch.stack([one.pos[at, 0], torch.zeros_like(one.pos[at, 0])], dim=1)
        two.slot[at] = torch.stack([one.slot[at, 0], scratch[1].expand(len(padded))], dim=1)
        two.win_slot[at] = torch.stack([one.win_slot[at, 0], scratch[1].expand(len(padded))], dim=1)
        two.mask[at] = torch.stack([one.mask[at, 0], arena.inert_mask[1].expand(len(padded), -1)], dim=1)
    if idle:
        at = moved["idle"]
        two.tokens[at] = 0
        two.pos[at] = 0
        two.slot[at] = scratch
        two.win_slot[at] = scratch
        two.mask[at] = arena.inert_mask


def _arena_pass(lm, whole: Buffers, graphs: bool) -> torch.Tensor:
    """Next-token logits (lanes, vocab) of the step staged in the (1, 1) rows of `whole` (an arena's
    front: LaneArena.front)."""

    def unit(_io: dict) -> dict:
        rows = whole.rows[(1, 1)]
        x = embed(lm.parts, lm.beacon.embed, rows.tokens, 1)  # (G, 2, hidden)
        rope = (whole.cos[rows.pos][:, None], whole.sin[rows.pos][:, None])  # (G, 1, 2, d)
        for i in range(len(lm.parts.layers)):
            x = step_layer(lm.parts, i, lm.beacon.layers[i], x, rope, whole, rows)
        return {"logits": head(lm.parts, x[:, :1])[:, 0]}

    if not graphs:
        return unit({})["logits"]
    graph, io = whole.capture(((1, 1), False), [unit])[0]
    graph.replay()
    return io["logits"]


def _execute_together(staged: list[tuple[StaticDecoder, Shape]]) -> list[torch.Tensor | Exception]:
    """Run staged one-token steps of several decoders (each filled, its rows staged) as one pass. If
    the shared pass fails (out of device memory for its stacked slots, say), each decoder takes the
    staged step alone, so a failure is that decoder's own: the rows the failed pass wrote are written
    again, with the same values, before anything reads them."""
    decs = [d for d, _ in staged]
    lm = decs[0].lm
    failure = None
    try:
        out = _pass_together(lm, staged)
    except Exception as err:  # (the name goes with the block: its traceback would keep the pass's tensors)
        out, failure = None, f"{type(err).__name__}: {err}"
    except BaseException:  # interrupted: the buffers may hold part of the step, dropped as _execute drops them
        for d in decs:
            d._drop_buffers()
            d.close()
        raise
    if out is None:
        return _each_alone(staged, "decoders together", failure)
    for d in decs:
        d.stats["static_steps"] += 1
        d.stats["together_steps"] += 1
    return out


def _each_alone(staged: list[tuple[StaticDecoder, Shape]], what: str, failure: str) -> list[torch.Tensor | Exception]:
    """After a shared pass failed: each decoder's staged step alone (its result or its exception)."""
    logger.warning("a step of %d %s failed (%s); each steps alone", len(staged), what, failure[:300])
    if staged[0][0].lm.device.type == "cuda":
        torch.cuda.empty_cache()  # what the failed pass held goes back before the steps alone
    results: list[torch.Tensor | Exception] = []
    for d, shape in staged:
        d.stats["shared_pass_failures"] += 1
        try:
            results.append(d._execute(shape))
        except Exception as err:
            results.append(err)
    return results


def _pass_together(lm, staged: list[tuple[StaticDecoder, Shape]]) -> list[torch.Tensor]:
    """The shared pass of _execute_together: each decoder's logits (b_k, vocab)."""
    bufs = [d._buf for d, _ in staged]
    rows = [d._buf.rows[shape] for d, shape in staged]
    split = step_rows_split(rows)
    tokens = torch.cat([r.tokens.reshape(1, -1) for r in rows], dim=1)  # (1, R): every raw row
    x = embed(lm.parts, lm.beacon.embed, tokens, sum(b * nb for _, _, b, nb in split))
    rope = _rope_together(bufs, rows, split)
    groups = together_groups(bufs, rows, split)
    stacked = any(g.rows_at is not None for g in groups)
    new = []
    for i in range(len(lm.parts.layers)):
        x, rows_i = step_layer_together(lm.parts, i, lm.beacon.layers[i], x, rope, bufs, rows, split, groups)
        if stacked:
            new.append(rows_i)
    if stacked:
        write_rows_together(bufs, rows, split, groups, new)
    logits = head(lm.parts, x[:, : tokens.shape[1]])[0]  # (R, vocab)
    return [logits[raw : raw + b] for raw, _, b, _ in split]


def _rope_together(bufs: list[Buffers], rows: list[StepRows], split) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (1, 1, R + B, d) of every row of a step together, in step_layer_together's layout: each
    decoder's raw rows (its b rows share the raw token's position), then each one's beacon rows
    (b x n_beacons, row-major: the positions of its beacons, once per row of its batch)."""
    out = []
    each = list(zip(bufs, rows, split, strict=True))
    for table in ("cos", "sin"):
        raw = [getattr(buf, table)[r.pos[:1]].expand(b, -1) for buf, r, (_, _, b, _) in each]
        beacons = [getattr(buf, table)[r.pos[1:]].repeat(b, 1) for buf, r, (_, _, b, nb) in each if nb]
        out.append(torch.cat(raw + beacons)[None, None])
    return out[0], out[1]


def _padded_shape(chunk: Chunk) -> Shape:
    """(raw rows, beacon rows) of a read, each padded up to a multiple of ROW_GRAIN (a single raw
    row is a decode step: no padding)."""
    n_raw, n_beacons = chunk.n_raw, chunk.n_rows - chunk.n_raw
    if n_raw == 1:
        return (1, n_beacons)
    return (_round_up(n_raw, ROW_GRAIN), _round_up(n_beacons, ROW_GRAIN))


@functools.cache
def _compiled_whole():
    return torch.compile(StaticDecoder._whole, dynamic=True)
