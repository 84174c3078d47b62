"""The decoder's cache: static buffers, the CUDA graphs captured over them, and the pool that keeps
both between decoders (see decode.py).

A buffer set holds one memory's RoPE'd keys, values and window keys in `cap` slots, the static
inputs of every step shape read over it, and the CUDA graphs captured over both. Graphs bake in
addresses, so a set is handed on whole: `BufferPool.take` gives a free set of the same capacity,
batch, heads, head dim, dtype and device to the next decoder, which replays its graphs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .families import Parts

Shape = tuple[int, int]  # (raw rows, beacon rows) of a step, padding included: raw rows come first
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


class BufferPool:
    """Free decode buffers of one model, kept between StaticDecoders (see the module docstring).

    Holds at most `keep` free sets (the least recently returned go first): each costs about 3x a
    memory of `cap` entries on the device. `clear()` frees them all.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._free: list[Buffers] = []
        self._lock = threading.Lock()  # query actors may answer from several threads

    def take(self, cap: int, like: torch.Tensor) -> Buffers | None:
        """A free set of exactly `cap` slots for memories like `like`, or None."""
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):
                if self._free[i].cap == cap and self._free[i].fits(like):
                    return self._free.pop(i)
        return None

    def give(self, buf: Buffers) -> None:
        with self._lock:
            self._free.append(buf)
            del self._free[: max(0, len(self._free) - self.keep)]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    def __len__(self) -> int:
        return len(self._free)
