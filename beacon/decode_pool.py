"""The decoder's cache: static buffers, the CUDA graphs captured over them, and the pool that keeps
both between decoders (see decode.py).

A buffer set holds one memory's RoPE'd keys, values and window keys in `cap` slots, the static
inputs of every step shape read over it, and the CUDA graphs captured over both. Graphs bake in
addresses, so a set is handed on whole: `BufferPool.take` gives a free set of the same capacity,
batch, heads, head dim, dtype and device to the next decoder, which replays its graphs.

Lanes (opt-in, `BufferPool.enable_lanes`): one arena of G buffer sets side by side — every tensor
one (layers, G, h_kv, cap, d) block, a lane its batch row g — so that the one-token steps of up to G
decoders (one memory each, batch 1) run as ONE step over the whole arena (decode.step_together),
a step whose tensors never move and so can be captured once as a CUDA graph however requests come
and go. A lane is a Buffers whose tensors are views of its row; its step inputs for the arena's
step shapes (ARENA_SHAPES) are views of the arena's, so staging a step writes the arena's inputs.
The last LANE_SCRATCH slots of each lane are never given to a memory (`room`): lanes not stepping,
and the pad row of a lane with no beacon row this token, write there and see only that slot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .families import Parts

Shape = tuple[int, int]  # (raw rows, beacon rows) of a step, padding included: raw rows come first
ARENA_SHAPES: tuple[Shape, ...] = ((1, 0), (1, 1))  # one-token steps a lane takes part in (without / with a beacon)
LANE_SCRATCH = 2  # slots at the end of each lane that no memory gets (one per row of the arena's step)
Graphs = list[tuple[torch.cuda.CUDAGraph, dict]]  # a step's graphs, each with the output it leaves


@dataclass
class StepRows:
    """Static inputs of one step shape (raw rows R, beacon rows B), reused by every graph replay."""

    tokens: torch.Tensor  # (b, R) token ids of the raw rows
    pos: torch.Tensor  # (R + B,) RoPE position of each row
    slot: torch.Tensor  # (R + B,) slot each row's key/value is written to
    win_slot: torch.Tensor  # (R + B,) the same, counted from the window's start (k_win)
    mask: torch.Tensor  # (R + B, cap) bool: slots each row sees
    last: torch.Tensor  # (1,) row of the last real raw token: its logits are returned
    n_outer: int = -1  # |O| the mask's O part was set for


@dataclass
class Buffers:
    """Static tensors of one decode run (see module docstring); kept in a BufferPool between runs."""

    cap: int  # slots
    k_rot: list[torch.Tensor]
    values: list[torch.Tensor]
    k_win: list[torch.Tensor]
    cos: torch.Tensor  # (cap, d) RoPE table for positions 0..cap-1
    sin: torch.Tensor
    n_outer: int = 0  # |O| of the memory in the buffers (fixed while the window stays open)
    size: int = 0  # filled slots
    slot_pos: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))  # host, per slot
    rows: dict[Shape, StepRows] = field(default_factory=dict)
    graphs: dict[tuple[Shape, bool], Graphs] = field(default_factory=dict)
    graph_pool: object = None  # the CUDA graphs' shared memory pool
    layers: tuple[torch.Tensor, ...] = ()  # (k_rot, values, k_win) of every layer: (layers, b, h_kv, cap, d)
    scratch: int = 0  # last slots a memory never gets (LANE_SCRATCH for a lane)
    arena: LaneArena | None = None  # the arena this set is a lane of
    lane: int = -1  # its row there

    @property
    def room(self) -> int:
        """Slots a memory and its new rows may fill."""
        return self.cap - self.scratch

    @classmethod
    def allocate(cls, parts: Parts, cap: int, like: torch.Tensor) -> Buffers:
        """Zeroed buffers of `cap` slots for memories like `like` (b, h_kv, n, d), with RoPE tables.
        Each kind is one tensor (layers, b, h_kv, cap, d), its layers views of it, so a step's rows
        of every layer can be written at once (layer.step_layer_together's stacked groups)."""
        cos, sin = parts.rotary_emb(like, torch.arange(cap, device=like.device)[None])
        b, h, _, d = like.shape
        zeros = lambda: torch.zeros(len(parts.layers), b, h, cap, d, dtype=like.dtype, device=like.device)  # noqa: E731
        k_rot, values, k_win = zeros(), zeros(), zeros()
        return cls(cap, list(k_rot.unbind(0)), list(values.unbind(0)), list(k_win.unbind(0)), cos[0], sin[0],
                   layers=(k_rot, values, k_win))  # fmt: skip

    def capture(self, key: tuple[Shape, bool], units: list[Callable[[dict], dict]]) -> Graphs:
        """The CUDA graphs of a step (`units`: functions of the previous one's output) over these
        buffers: one graph per unit, captured on first use after one warm-up run outside capture
        (lazy inits, cuBLAS workspaces, compiling)."""
        if key not in self.graphs:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                io: dict = {}
                for unit in units:
                    io = unit(io)
            torch.cuda.current_stream().wait_stream(stream)
            captured, io = [], {}
            for unit in units:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.graph_pool, capture_error_mode="thread_local"):
                    io = unit(io)
                self.graph_pool = graph.pool()
                captured.append((graph, io))
            self.graphs[key] = captured
        return self.graphs[key]

    def fits(self, like: torch.Tensor) -> bool:
        """Whether these buffers hold memories shaped like `like` (b, h_kv, n, d) of the same dtype/device."""
        k = self.k_rot[0]
        return (k.shape[0], k.shape[1], k.shape[3], k.dtype, k.device) == (
            like.shape[0], like.shape[1], like.shape[3], like.dtype, like.device,
        )  # fmt: skip


class LaneArena:
    """G lanes of `cap` slots side by side (see the module docstring): `whole` is the arena as one
    buffer set of batch G (the shared step runs over it), `lanes[g]` lane g's view of row g."""

    def __init__(self, parts: Parts, n_lanes: int, cap: int, dtype: torch.dtype, device: torch.device):
        if n_lanes < 1 or cap <= LANE_SCRATCH:
            raise ValueError(f"lanes need n_lanes >= 1 and cap > {LANE_SCRATCH}, got {n_lanes}, {cap}")
        like = torch.empty(n_lanes, parts.n_kv_heads, 0, parts.head_dim, dtype=dtype, device=device)
        self.whole = Buffers.allocate(parts, cap, like)
        dev = like.device
        for shape in ARENA_SHAPES:  # the arena step's inputs: row g is lane g's
            n = sum(shape)
            self.whole.rows[shape] = StepRows(
                torch.zeros(n_lanes, shape[0], dtype=torch.long, device=dev),
                *(torch.zeros(n_lanes, n, dtype=torch.long, device=dev) for _ in range(3)),  # pos, slot, win_slot
                torch.zeros(n_lanes, n, cap, dtype=torch.bool, device=dev),
                torch.zeros(1, dtype=torch.long, device=dev),
            )
        # a row that touches nothing a memory holds: it writes the lane's scratch slots and sees its own
        scratch = torch.arange(cap - LANE_SCRATCH, cap, device=dev)
        self.inert_slot = scratch  # (LANE_SCRATCH,)
        self.inert_mask = torch.zeros(LANE_SCRATCH, cap, dtype=torch.bool, device=dev)
        self.inert_mask[torch.arange(LANE_SCRATCH), scratch] = True
        self.lanes = [self._lane(g) for g in range(n_lanes)]
        self._free = list(range(n_lanes - 1, -1, -1))  # lane 0 first: busy lanes gather at the front
        self._fronts: dict[int, Buffers] = {}

    def _rows(self, start: int, stop: int, **fields) -> Buffers:
        """Lanes [start, stop) of `whole` as one buffer set (views), its step inputs not set yet."""
        w = self.whole
        k_rot, values, k_win = (t[:, start:stop] for t in w.layers)
        return Buffers(w.cap, list(k_rot.unbind(0)), list(values.unbind(0)), list(k_win.unbind(0)), w.cos, w.sin,
                       layers=(k_rot, values, k_win), scratch=LANE_SCRATCH, **fields)  # fmt: skip

    def _lane(self, g: int) -> Buffers:
        w = self.whole
        lane = self._rows(g, g + 1, arena=self, lane=g)
        for shape in ARENA_SHAPES:
            r = w.rows[shape]
            lane.rows[shape] = StepRows(r.tokens[g : g + 1], r.pos[g], r.slot[g], r.win_slot[g], r.mask[g],
                                        torch.zeros_like(r.last))  # fmt: skip
        return lane

    def front(self, n: int) -> Buffers:
        """Lanes [0, n) as one buffer set of batch n (views of `whole`, its (1, 1) step inputs too),
        with graphs of its own: a step over the busy front of the arena reads no idle lane beyond it."""
        if n == self.n_lanes:
            return self.whole
        if n not in self._fronts:
            front = self._rows(0, n)
            r = self.whole.rows[(1, 1)]
            front.rows[(1, 1)] = StepRows(r.tokens[:n], r.pos[:n], r.slot[:n], r.win_slot[:n], r.mask[:n], r.last)
            self._fronts[n] = front
        return self._fronts[n]

    @property
    def n_lanes(self) -> int:
        return len(self.lanes)

    def fits(self, need: int, like: torch.Tensor) -> bool:
        """Whether a lane takes a memory like `like` needing `need` slots."""
        return like.shape[0] == 1 and need <= self.lanes[0].room and self.lanes[0].fits(like)

    def take(self) -> Buffers | None:
        """A free lane (the lowest), or None."""
        return self.lanes[self._free.pop()] if self._free else None

    def give(self, lane: Buffers) -> None:
        lane.size, lane.n_outer = 0, 0
        lane.slot_pos = torch.empty(0, dtype=torch.long)
        self._free.append(lane.lane)
        self._free.sort(reverse=True)

    @property
    def busy(self) -> int:
        return self.n_lanes - len(self._free)


class BufferPool:
    """Free decode buffers of one model, kept between StaticDecoders (see the module docstring).

    Holds at most `keep` free sets (the least recently returned go first): each costs about 3x a
    memory of `cap` entries on the device. `clear()` frees them all (not the lanes: `disable_lanes`).
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._free: list[Buffers] = []
        self._lock = threading.Lock()  # query actors may answer from several threads
        self.lanes: LaneArena | None = None

    def enable_lanes(self, parts: Parts, n_lanes: int, cap: int, dtype: torch.dtype, device: torch.device) -> None:
        """Allocate an arena of `n_lanes` lanes of `cap` slots (3 x layers x n_lanes x h_kv x cap x d
        values of `dtype` on `device`): a decoder that asks for a lane gets one where its memory
        (batch 1) needs at most `cap` - LANE_SCRATCH slots."""
        arena = LaneArena(parts, n_lanes, cap, dtype, device)
        with self._lock:
            self.lanes = arena

    def free_lanes(self, need: int, like: torch.Tensor) -> int:
        """Free lanes that would take a memory like `like` needing `need` slots (0: none would)."""
        with self._lock:
            lanes = self.lanes
            return lanes.n_lanes - lanes.busy if lanes is not None and lanes.fits(need, like) else 0

    def disable_lanes(self, arena: LaneArena | None = None) -> None:
        """No more lanes (only if the pool's arena is still `arena`, where given): the arena goes once
        its lanes are given back (a lane in use stays valid)."""
        with self._lock:
            if arena is None or arena is self.lanes:
                self.lanes = None

    def take(self, cap: int, like: torch.Tensor, need: int | None = None, lane: bool = False) -> Buffers | None:
        """With `lane`, a free lane if one fits (`need` slots); else a free set of exactly `cap` slots
        for memories like `like`; else None."""
        with self._lock:
            if lane and self.lanes is not None and self.lanes.fits(need if need is not None else cap, like):
                taken = self.lanes.take()
                if taken is not None:
                    return taken
            for i in range(len(self._free) - 1, -1, -1):
                if self._free[i].cap == cap and self._free[i].fits(like):
                    return self._free.pop(i)
        return None

    def give(self, buf: Buffers) -> None:
        with self._lock:
            if buf.arena is not None:
                if buf.arena is self.lanes:  # (an arena replaced by enable_lanes is dropped with its lanes)
                    buf.arena.give(buf)
                return
            self._free.append(buf)
            del self._free[: max(0, len(self._free) - self.keep)]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    def __len__(self) -> int:
        return len(self._free)
