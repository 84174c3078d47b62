"""The beacon memory: per-layer key/value tensors plus the few integers that say where the window is.

Shape contract: keys[l], values[l] are (b, h_kv, n, d) with n = state.size, laid out [O | W]:
  O = sink (state.n_sink) + condensed entries (state.n_beacons), at RoPE positions 0..|O|-1;
  W = the current window's entries (raw tokens, and in interleave mode its beacons so far).
Keys are stored *before* RoPE, so a memory is position-free: it can be saved, reloaded, extended
and concatenated. `rot_keys` is a derived cache (RoPE'd keys of O) that the engine keeps up to
date; it is never exported and is rebuilt when missing (per layer: entries may be None).

A memory can still be arriving: `SnapshotStore.get(..., background=True)` returns one whose layers
are filled by a loader thread, with `pending` set. The engine's forward pass waits for each layer
just before it reads it (`ready(layer)`), so reading a question overlaps the load; everything
else that touches the tensors (fork, select, to, export, concat) waits for all of it first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .windows import WindowState

EXPORT_VERSION = 1


@dataclass
class Memory:
    """Beacon memory of a batch of b sequences read in lockstep. State lives here; policy does not."""

    keys: list[torch.Tensor]  # per layer (b, h_kv, n, d), pre-RoPE
    values: list[torch.Tensor]  # per layer (b, h_kv, n, d)
    state: WindowState = field(default_factory=WindowState)
    rot_keys: list[torch.Tensor | None] | None = None  # derived: per layer (b, h_kv, |O|, d), RoPE'd
    # a loader still filling the tensors: pending(layer) waits for one layer, pending(None) for all
    pending: Callable[[int | None], None] | None = field(default=None, repr=False, compare=False)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def empty(
        cls,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        seed: int = 42,
    ) -> Memory:
        """A memory that has read nothing."""
        shape = (batch_size, n_kv_heads, 0, head_dim)
        keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        return cls(keys, values, WindowState(seed=seed))

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def n_tokens(self) -> int:
        """Raw tokens this memory has read."""
        return self.state.n_tokens

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    def sizes(self) -> tuple[int, int, int]:
        """(sink, beacons, raw) entries per layer — the official code's get_memory_size()."""
        s = self.state
        return s.n_sink, s.n_beacons, s.n_window

    def nbytes(self) -> int:
        """Bytes of the key/value tensors (the derived RoPE cache not counted)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def check(self) -> None:
        """Raise if tensors and state disagree (a corrupt or hand-built memory)."""
        n = self.state.size
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k.shape != v.shape or k.dim() != 4 or k.shape[2] != n:
                raise ValueError(f"layer {i}: keys {tuple(k.shape)} / values {tuple(v.shape)} do not hold {n} entries")

    def ready(self, layer: int | None = None) -> None:
        """Wait until `layer` (every layer if None) of a memory still being loaded is in place;
        raises what the load raised (e.g. CorruptSnapshotError). Returns at once otherwise."""
        if self.pending is not None:
            self.pending(layer)
            if layer is None:
                self.pending = None

    # ---- copies --------------------------------------------------------------------------------
    def share(self) -> Memory:
        """A new Memory over the same tensors, to read on from without copying a byte.

        Safe because `BeaconLM.forward` never writes into a memory's tensors: it replaces them (and
        the state) with new ones, so what the share reads leaves this memory as it was. Things that
        do write into tensors (training code, hand edits) need `fork()`. A memory still loading is
        shared as it is: both wait on the same loader, and the share's forward pass reads layer by
        layer behind it. The RoPE cache list is shared on purpose: whatever the share's first pass
        adds to it is RoPE'd keys of this same O (later passes replace the share's list)."""
        return Memory(list(self.keys), list(self.values), self.state, self.rot_keys, pending=self.pending)

    def fork(self) -> Memory:
        """An independent copy: what the copy reads never changes this memory."""
        self.ready()
        rot = None if self.rot_keys is None else [None if k is None else k.clone() for k in self.rot_keys]
        return Memory([k.clone() for k in self.keys], [v.clone() for v in self.values], self.state, rot)

    def select(self, rows: list[int]) -> Memory:
        """The memory of some sequences of the batch (a copy), e.g. to go on with them alone."""
        if any(not 0 <= r < self.batch_size for r in rows):
            raise ValueError(f"rows {rows} out of range for a batch of {self.batch_size}")
        self.ready()
        index = torch.tensor(rows, device=self.device)
        pick = lambda ts: None if ts is None else [None if t is None else t.index_select(0, index) for t in ts]  # noqa: E731
        return Memory(pick(self.keys), pick(self.values), self.state, pick(self.rot_keys))

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None, non_blocking: bool = False
    ) -> Memory:
        """The same memory on another device and/or dtype (the RoPE cache is dropped if dtype changes)."""
        self.ready()
        move = dict(device=device, dtype=dtype, non_blocking=non_blocking)
        rot = None
        if self.rot_keys is not None and (dtype is None or dtype == self.dtype):
            rot = [None if k is None else k.to(**move) for k in self.rot_keys]
        return Memory([k.to(**move) for k in self.keys], [v.to(**move) for v in self.values], self.state, rot)

    # ---- export / import (the snapshot layer persists exactly this) ----------------------------
    def export(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Plain tensors + a small JSON-able dict.

        tensors: "keys", "values": (n_layers, b, h_kv, n, d), pre-RoPE, layout [sink|beacons|window].
        meta: {"version", "state": WindowState fields}.
        """
        self.ready()
        tensors = {"keys": torch.stack(self.keys), "values": torch.stack(self.values)}
        return tensors, {"version": EXPORT_VERSION, "state": self.state.to_dict()}

    @classmethod
    def from_export(cls, tensors: dict[str, torch.Tensor], meta: dict) -> Memory:
        """Rebuild a memory from `export()` output (checks shapes against the state)."""
        if meta.get("version") != EXPORT_VERSION:
            raise ValueError(f"memory export version {meta.get('version')} is not {EXPORT_VERSION}")
        keys, values = tensors["keys"], tensors["values"]
        mem = cls(list(keys.unbind(0)), list(values.unbind(0)), WindowState.from_dict(meta["state"]))
        mem.check()
        return mem

    @classmethod
    def concat(cls, memories: list[Memory]) -> Memory:
        """One memory holding several, in the given order, for a question over all of them.

        Everything of memories[:-1] (sink, condensed entries and any unfinished window) becomes
        outer memory, visible to all that follows at positions after the memories before it; the
        last memory keeps its window open, so reading continues exactly as after that memory.
        """
        if not memories:
            raise ValueError("concat needs at least one memory")
        for m in memories:
            m.ready()
        if len(memories) == 1:
            return memories[0].fork()
        first = memories[0]
        for m in memories[1:]:
            if (m.n_layers, m.batch_size, m.keys[0].shape[1], m.keys[0].shape[3]) != (
                first.n_layers,
                first.batch_size,
                first.keys[0].shape[1],
                first.keys[0].shape[3],
            ):
                raise ValueError("memories to concatenate come from different model shapes or batch sizes")
        last = memories[-1].state
        n_outer = sum(m.state.size for m in memories[:-1]) + last.n_outer
        state = dataclasses.replace(
            last,
            n_tokens=sum(m.state.n_tokens for m in memories),
            n_sink=first.state.n_sink,
            n_beacons=n_outer - first.state.n_sink,
            n_windows=sum(m.state.n_windows for m in memories),
        )
        keys = [torch.cat([m.keys[i] for m in memories], dim=2) for i in range(first.n_layers)]
        values = [torch.cat([m.values[i] for m in memories], dim=2) for i in range(first.n_layers)]
        return cls(keys, values, state)
