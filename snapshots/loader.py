"""Stream stored rows into a memory's tensors on a device: read, check, copy — overlapped.

Reader threads read a row (its fp8 scales come from one scan of the scale column that `get` starts
beside the data reads: `SnapshotView.scales`) and check its sizes and crc32 (pread, zlib-ng and torch
copies release the GIL, so they run in parallel). Into host tensors the reader reads into a reused host buffer and
decodes the row (dtype, fp8 scales) into its destination slice itself. Towards CUDA it reads
straight into a reused pinned buffer (or, with Lance's bytearray-only reader, copies into one),
fp8 scales placed behind the data, and the calling thread, in row order, issues one non-blocking
host->device copy (the pinned buffer is reused only after that copy's event fires) and decodes on
the device. A row that fails a check raises CorruptSnapshotError before the memory exists: bad
bytes are never used.

`load_rows_in_background` runs the same on a thread (and CUDA stream) of its own and reports each
layer as soon as all its rows are placed (`LayerGate`, a Memory's `pending`): the engine reads a
question layer by layer behind the load.

Buffers are reused on purpose: first-touching fresh pages costs more than the copy itself on
some hosts (measured in docs/snapshots.md).

Destination tensors: keys, values (L, b, h, n, d); a row of slab (l0:l1, e0:e1) fills
dst[l0:l1, :, :, e0:e1, :].
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .codec import Slab, checksum, decode
from .errors import CorruptSnapshotError


@dataclass
class RowRead:
    """A stored row to load: what its header claims, and how to reach its bytes."""

    doc_id: str
    generation: str
    row: int
    slab: Slab
    dtype: str
    shape: tuple[int, ...]
    nbytes: int  # data bytes the header claims
    crc32: int
    scale_nbytes: int  # fp8 scale bytes the header implies (0: none)
    read_scale: Callable[[], bytes | None] | None  # the row's stored scales (fp8; read apart, see store.get)
    size: Callable[[], int]  # data bytes actually stored
    read_into: Callable[[bytearray | memoryview], int]  # fill the buffer from the row's start; bytes read
    any_buffer: bool = False  # read_into takes any writable buffer (else only a bytearray)

    def where(self) -> str:
        s = self.slab
        return (
            f"document {self.doc_id!r} row {self.row} of generation {self.generation}"
            f" ({s.tensor}, layers {s.layer_from}:{s.layer_to}, entries {s.entry_from}:{s.entry_to})"
        )


class _Pinned:
    """A pinned host buffer and the event of the last device copy out of it."""

    def __init__(self, nbytes: int):
        self.tensor = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.event: torch.cuda.Event | None = None


class _Buffers:
    """Reused host buffers: bytearrays by exact size (Lance reads into those), pinned slots for CUDA."""

    def __init__(self, n_pinned: int, pinned_bytes: int):
        self._free: dict[int, list[bytearray]] = {}
        self._lock = threading.Lock()
        self.pinned: queue.Queue[_Pinned | None] = queue.Queue()
        for _ in range(n_pinned):
            self.pinned.put(_Pinned(pinned_bytes))

    def take(self, nbytes: int) -> bytearray:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
        return bytearray(nbytes)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            self._free.setdefault(len(buf), []).append(buf)

    def take_pinned(self) -> _Pinned:
        slot = self.pinned.get()
        if slot is None:
            raise _Abandoned("the load was abandoned")
        if slot.event is not None:
            slot.event.synchronize()  # its previous host->device copy has left the buffer
        return slot

    def abandon(self, waiters: int) -> None:
        """Wake readers waiting for a pinned slot that will never come back (the load failed)."""
        for _ in range(waiters):
            self.pinned.put(None)


class _Abandoned(Exception):
    pass


def _read_checked(
    row: RowRead, buffers: _Buffers, dst: dict[str, torch.Tensor]
) -> tuple[_Pinned | None, bytes | None]:
    """Read a row and check it; returns (its pinned slot or None, its scales). Into host tensors:
    place it right here (rows fill disjoint slices, so readers place in parallel); towards CUDA:
    return it staged in a pinned slot — read straight into the slot where the row's reader takes
    any buffer (one host copy fewer)."""
    to_cuda = dst["keys"].device.type == "cuda"
    if to_cuda and row.any_buffer:
        slot = buffers.take_pinned()
        try:
            scale = _read_and_check(row, memoryview(slot.tensor[: row.nbytes].numpy()))
            _stage_scale(row, slot, scale)
        except BaseException:
            buffers.pinned.put(slot)
            raise
        return slot, scale
    buf = buffers.take(row.nbytes)
    scale = _read_and_check(row, buf)
    if not to_cuda:
        _place(row, torch.frombuffer(buf, dtype=torch.uint8), dst, scale)
        buffers.give(buf)  # copied out (a host copy is synchronous)
        return None, scale
    slot = buffers.take_pinned()
    slot.tensor[: row.nbytes].copy_(torch.frombuffer(buf, dtype=torch.uint8))
    buffers.give(buf)
    _stage_scale(row, slot, scale)
    return slot, scale


def _staged_bytes(row: RowRead) -> int:
    """Bytes of the row in its pinned slot: the data, then its fp8 scales where they can ride along
    (float32 right after the data needs a data length divisible by 4; else they go separately)."""
    return row.nbytes + (row.scale_nbytes if row.nbytes % 4 == 0 else 0)


def _stage_scale(row: RowRead, slot: _Pinned, scale: bytes | None) -> None:
    """Put the row's scales behind its data in the slot: one non-blocking copy carries both (a
    separate pageable copy of the scales would make the host wait for the GPU at every row)."""
    if scale and _staged_bytes(row) > row.nbytes:
        slot.tensor[row.nbytes : _staged_bytes(row)].copy_(torch.frombuffer(bytearray(scale), dtype=torch.uint8))


def _read_and_check(row: RowRead, buf: bytearray | memoryview) -> bytes | None:
    """Fill `buf` (row.nbytes long) with the row's bytes and return its scales (fp8, else None);
    CorruptSnapshotError unless sizes and crc32 hold."""
    try:
        size = row.size()
        n = row.read_into(buf) if size == row.nbytes else -1
        scale = row.read_scale() if row.read_scale is not None else None
    except Exception as e:  # the storage layer could not read it: a damaged file
        raise CorruptSnapshotError(f"{row.where()} could not be read: {type(e).__name__}: {e}") from e
    if size != row.nbytes or n != row.nbytes:
        raise CorruptSnapshotError(
            f"{row.where()} holds {size if size != row.nbytes else n} bytes, its header says {row.nbytes}:"
            " truncated or damaged row; put the document again"
        )
    if len(scale or b"") != row.scale_nbytes:
        raise CorruptSnapshotError(
            f"{row.where()} has {len(scale or b'')} bytes of fp8 scales, its header implies {row.scale_nbytes}:"
            " damaged row; put the document again"
        )
    got = checksum(row.doc_id, row.generation, row.slab, row.dtype, row.shape, buf, scale)
    if got != row.crc32:
        raise CorruptSnapshotError(
            f"{row.where()} fails its checksum (crc32 {got:#010x}, stored {row.crc32:#010x}): flipped bytes;"
            " put the document again"
        )
    return scale


def _place(row: RowRead, raw: torch.Tensor, dst: dict[str, torch.Tensor], scale: torch.Tensor | bytes | None) -> None:
    """Decode a checked row (uint8 bytes on the destination's device; float32 scales there, or
    their bytes) into its destination slice."""
    target = dst[row.slab.tensor]
    if isinstance(scale, bytes):
        scale = torch.from_numpy(np.frombuffer(scale, dtype="<f4").copy()).to(target.device)
    if scale is not None:
        scale = scale.view(*row.shape[:-1], 1)
    value = decode(raw, row.dtype, row.shape, scale, target.dtype)  # (layers, b, h, entries, d)
    s = row.slab
    target[s.layer_from : s.layer_to, :, :, s.entry_from : s.entry_to].copy_(value)


def _place_staged(
    row: RowRead, slot: _Pinned, scale_bytes: bytes | None, dst: dict[str, torch.Tensor], buffers: _Buffers
) -> None:
    """Copy a pinned row (its scales behind it, where they fit) to the device without blocking, then
    decode it there."""
    staged = _staged_bytes(row)
    try:
        raw = slot.tensor[:staged].to(dst["keys"].device, non_blocking=True)
        slot.event = torch.cuda.Event()
        slot.event.record()
    finally:
        buffers.pinned.put(slot)  # reused once the event fires
    scale = raw[row.nbytes :].view(torch.float32) if staged > row.nbytes else scale_bytes
    _place(row, raw[: row.nbytes], dst, scale)


def load_rows(
    rows: Sequence[RowRead],
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    workers: int = 2,
    prefetch: int = 4,
    on_layer: Callable[[int], None] | None = None,
) -> None:
    """Fill `keys` and `values` (L, b, h, n, d) from `rows`; every row is checked before use.

    `workers` threads read at most `prefetch` rows ahead of the one being placed, so host memory
    stays at about `prefetch` rows (plus as many pinned rows towards CUDA). Returns when every
    copy has finished. `on_layer(l)` is called as soon as every row of layer l is placed (towards
    CUDA: its copies are queued on this thread's current stream, so work queued after it on that
    stream sees them); rows in layer order make layers arrive one by one.
    """
    if workers < 1 or prefetch < 1:
        raise ValueError(f"workers ({workers}) and prefetch ({prefetch}) must be >= 1")
    if not rows:
        return
    cuda = keys.device.type == "cuda"
    dst = {"keys": keys, "values": values}
    buffers = _Buffers(prefetch if cuda else 0, max(_staged_bytes(r) for r in rows))
    pending: deque[tuple[RowRead, Future]] = deque()
    todo = iter(rows)
    rows_left = [0] * keys.shape[0]  # per layer: rows not placed yet
    for r in rows:
        for layer in range(r.slab.layer_from, r.slab.layer_to):
            rows_left[layer] += 1
    on_device = torch.cuda.device(keys.device) if cuda else contextlib.nullcontext()  # events, streams: its own
    with on_device, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshot-read") as pool:
        try:
            for row in todo:
                pending.append((row, pool.submit(_read_checked, row, buffers, dst)))
                if len(pending) >= prefetch:
                    break
            while pending:
                row, fut = pending.popleft()
                staged, scale = fut.result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(_read_checked, nxt, buffers, dst)))
                if staged is not None:
                    _place_staged(row, staged, scale, dst, buffers)
                for layer in range(row.slab.layer_from, row.slab.layer_to):
                    rows_left[layer] -= 1
                    if rows_left[layer] == 0 and on_layer is not None:
                        on_layer(layer)
        except BaseException:
            for _, fut in pending:
                fut.cancel()
            buffers.abandon(workers)
            raise
    if cuda:
        torch.cuda.current_stream(keys.device).synchronize()


class LayerGate:
    """Which layers of a background load are in place (a Memory's `pending`).

    gate(layer) blocks until every row of `layer` is placed — towards CUDA it then makes the
    caller's current stream wait for that layer's copies — and gate(None) until the whole load
    has finished. Either raises what the load raised.
    """

    def __init__(self, n_layers: int, device: torch.device):
        self._device = device
        self._placed = [threading.Event() for _ in range(n_layers)]
        self._copied: list[torch.cuda.Event | None] = [None] * n_layers
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _layer_done(self, layer: int) -> None:  # on the loader thread
        if self._device.type == "cuda":
            self._copied[layer] = torch.cuda.Event()
            self._copied[layer].record()
        self._placed[layer].set()

    def __call__(self, layer: int | None = None) -> None:
        if layer is None:
            if self._thread is not None:
                self._thread.join()
        else:
            self._placed[layer].wait()
            if self._copied[layer] is not None:
                torch.cuda.current_stream(self._device).wait_event(self._copied[layer])
        if self._error is not None:
            raise self._error


def load_rows_in_background(
    rows: Sequence[RowRead],
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    workers: int,
    prefetch: int,
    when_done: Callable[[], None],
) -> LayerGate:
    """load_rows on a thread of its own; returns at once with the gate that tells which layers
    are in place. Rows in layer order let a reader start on layer 0 long before the last arrives.
    `when_done()` runs on that thread at the end, success or not (e.g. closing files)."""
    gate = LayerGate(keys.shape[0], keys.device)
    # Towards CUDA the load gets a stream of its own: on the default stream, which the reader of the
    # memory also uses, each layer's copies would queue behind the question's kernels for the layer
    # before — load and question would take turns instead of overlapping. The reader waits for each
    # layer's copies through the gate's events; the stream first waits for whatever the calling
    # thread queued (e.g. the destination tensors' initialisation).
    stream = None
    if keys.device.type == "cuda":
        stream = torch.cuda.Stream(keys.device)
        stream.wait_stream(torch.cuda.current_stream(keys.device))

    def run() -> None:
        try:
            on_stream = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
            with on_stream:
                load_rows(rows, keys, values, workers=workers, prefetch=prefetch, on_layer=gate._layer_done)
        except BaseException as e:  # raised to whoever waits for a layer
            gate._error = e
        finally:
            if stream is not None:  # a failed load returns early: its queued copies must end before the
                stream.synchronize()  # memory's tensors can be freed on the caller's stream
            for placed in gate._placed:
                placed.set()
            when_done()

    gate._thread = threading.Thread(target=run, name="snapshot-load", daemon=True)
    gate._thread.start()
    return gate
