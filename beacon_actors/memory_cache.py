"""An LRU cache of loaded memories on the device, bounded in bytes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from beacon import Memory


class MemoryCache:
    """Keep the most recently used memories up to `capacity_bytes` (Memory.nbytes()) in total.

    A memory larger than the whole capacity is never kept. capacity_bytes=0 disables the cache.
    """

    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._items: OrderedDict[Hashable, tuple[Memory, int]] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Memory | None:
        """The cached memory (now the most recent), or None."""
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def discard(self, key: Hashable) -> None:
        """Forget `key` if cached (a memory found damaged on use)."""
        item = self._items.pop(key, None)
        if item is not None:
            self.nbytes -= item[1]

    def put(self, key: Hashable, memory: Memory) -> None:
        """Cache `memory`, evicting the least recently used until it fits."""
        size = memory.nbytes()
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        if size > self.capacity_bytes:
            return
        while self.nbytes + size > self.capacity_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.nbytes -= old
        self._items[key] = (memory, size)
        self.nbytes += size
