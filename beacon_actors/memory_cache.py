"""An LRU cache of loaded memories in two tiers: on the device, then in host memory, bounded in bytes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch

from beacon import Memory


class MemoryCache:
    """Keep the most recently used memories on their device up to `capacity_bytes` (Memory.nbytes())
    in total; those pushed out (or too big for the device tier) move to host memory up to
    `host_bytes` — pinned when they come from a CUDA device, so the way back is one fast copy — and
    come back to their device on their next `get` (one too big for the device tier is copied back on
    each use and stays in the host tier). host_bytes=0: no host tier; capacity_bytes=0 and
    host_bytes=0 disable the cache. A memory of a CPU device is kept in the host tier as it is (no
    copy). Host bytes are counted as pinned blocks hold them (rounded up to a power of two).
    """

    def __init__(self, capacity_bytes: int, host_bytes: int = 0):
        if capacity_bytes < 0 or host_bytes < 0:
            raise ValueError(f"capacity_bytes and host_bytes must be >= 0, got {capacity_bytes}, {host_bytes}")
        self.capacity_bytes = capacity_bytes
        self.host_bytes = host_bytes
        self._items: OrderedDict[Hashable, tuple[Memory, int]] = OrderedDict()
        self._host: OrderedDict[Hashable, tuple[Memory, int, torch.device]] = OrderedDict()  # + its device
        self.nbytes = 0  # of the device tier
        self.host_nbytes = 0
        self.hits = 0  # device tier
        self.host_hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        """On the device (the host tier: `in_host`)."""
        return key in self._items

    def in_host(self, key: Hashable) -> bool:
        return key in self._host

    @property
    def host_count(self) -> int:
        """Memories in the host tier."""
        return len(self._host)

    def get(self, key: Hashable) -> Memory | None:
        """The cached memory on its device (now the most recent), or None. A host-tier memory is
        copied back to its device first and moves to the device tier."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]
        held = self._host.get(key)
        if held is None:
            self.misses += 1
            return None
        host, _, device = held
        self.host_hits += 1
        memory = host.to(device, non_blocking=True)  # from pinned memory: asynchronous, ordered before any use
        if memory.nbytes() > self.capacity_bytes:  # never fits the device tier: its host copy stays
            self._host.move_to_end(key)
        else:
            self.put(key, memory)
        return memory

    def discard(self, key: Hashable) -> None:
        """Forget `key` in both tiers (a memory found damaged on use)."""
        item = self._items.pop(key, None)
        if item is not None:
            self.nbytes -= item[1]
        held = self._host.pop(key, None)
        if held is not None:
            self.host_nbytes -= held[1]

    def put(self, key: Hashable, memory: Memory) -> None:
        """Cache `memory` on the device tier, moving the least recently used to the host tier until it fits."""
        self.discard(key)
        size = memory.nbytes()
        if size > self.capacity_bytes:
            self._to_host(key, memory, size)
            return
        while self.nbytes + size > self.capacity_bytes:
            old_key, (old, old_size) = self._items.popitem(last=False)
            self.nbytes -= old_size
            self._to_host(old_key, old, old_size)
        self._items[key] = (memory, size)
        self.nbytes += size

    def _to_host(self, key: Hashable, memory: Memory, size: int) -> None:
        """Keep `memory` in the host tier if it fits there (evicting the least recently used), else
        drop it. A memory still loading is dropped too (waiting for it would stall the caller; its
        next use loads it again), as is one from CUDA whose pinned block would not fit."""
        if memory.pending is not None:
            return
        held = size if memory.device.type == "cpu" else _pinned_block(size)
        if held > self.host_bytes:
            return
        while self.host_nbytes + held > self.host_bytes:
            _, (_, old_held, _) = self._host.popitem(last=False)
            self.host_nbytes -= old_held
        self._host[key] = (_host_copy(memory, size), held, memory.device)
        self.host_nbytes += held


def _pinned_block(n: int) -> int:
    """Bytes a pinned block of n bytes holds: PyTorch's host allocator rounds a block up to a power of two."""
    return 1 << max(0, n - 1).bit_length()


def _host_copy(memory: Memory, size: int) -> Memory:
    """`memory` in host memory: a CUDA memory's keys and values copied into one pinned block (one
    allocation, views into it; the RoPE cache is derived and dropped), a CPU memory as it is."""
    if memory.device.type == "cpu":
        return memory
    block = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    at, views = 0, []
    for t in memory.keys + memory.values:
        n = t.numel() * t.element_size()
        views.append(block[at : at + n].view(t.dtype).view(t.shape).copy_(t))
        at += n
    n_layers = len(memory.keys)
    return Memory(views[:n_layers], views[n_layers:], memory.state)
