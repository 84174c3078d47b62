"""Memory <-> snapshot rows: cut a memory into bounded slabs, encode them as raw bytes, check them.

Glossary: L layers, b batch (1 per document), h h_kv heads, n entries per layer, d head dim.
A memory holds keys[l], values[l] of shape (b, h, n, d). A *slab* is one tensor's layers
[l0, l1) x entries [e0, e1), stored C-order as (l1-l0, b, h, e1-e0, d) little-endian bytes.

Slabs never straddle a *segment* boundary. `put` cuts [0, n_outer) | [n_outer, n): the rows of the
condensed part O stay valid when `append` extends the memory (only W and the new entries are
written again). Example, 2 layers, n_outer = 6, n = 8, room for 8 entries of one layer per row:

    keys  layers 0:1 entries 0:6 | keys  layers 1:2 entries 0:6      (a layer of O fits: whole layers)
    ...                           then  keys layers 0:2 entries 6:8  (W is small: both layers, one row)

fp8 (float8_e4m3fn) keeps one float32 scale per vector (layer, b, head, entry) = amax / 448:
half the bytes of bf16 plus 4/d bytes per element of scales, with a relative error per element
of about 2^-4 of its vector's largest value. It is lossy: exactness holds only for the other dtypes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from beacon import Memory

try:  # zlib-ng: the same CRC-32 as zlib at ~6x its speed (SIMD), and it releases the GIL the same way
    from zlib_ng import zlib_ng as _crc

    CRC32_IMPL = "zlib-ng"
except ImportError:  # a platform without its wheel: the standard library (identical values, slower)
    import zlib as _crc

    CRC32_IMPL = "zlib"

from .schema import TENSORS

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float8_e4m3fn": torch.float8_e4m3fn,
}
FP8 = "float8_e4m3fn"
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16 — the name stored in the tables."""
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"dtype {dtype} cannot be stored: use one of {sorted(DTYPES)}")


def to_dtype(name: str) -> torch.dtype:
    """torch dtype of a stored dtype name."""
    if name not in DTYPES:
        raise ValueError(f"stored dtype {name!r} is unknown: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def check_byte_order() -> None:
    """Rows are little-endian; refuse to read or write them on a big-endian host."""
    if sys.byteorder != "little":
        raise RuntimeError("snapshots store little-endian bytes; this host is big-endian (not supported)")


# ---------------------------------------------------------------------------------------------
# Slabs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slab:
    """One tensor's layers [layer_from, layer_to) x entries [entry_from, entry_to)."""

    tensor: str  # "keys" | "values"
    layer_from: int
    layer_to: int
    entry_from: int
    entry_to: int

    def shape(self, b: int, h: int, d: int) -> tuple[int, int, int, int, int]:
        """(layers, b, h, entries, d) of the slab."""
        return (self.layer_to - self.layer_from, b, h, self.entry_to - self.entry_from, d)


def plan_slabs(
    n_layers: int, segments: Sequence[tuple[int, int]], *, entry_bytes: int, max_row_bytes: int
) -> list[Slab]:
    """Cut each entry segment [e0, e1) into slabs of at most `max_row_bytes` per tensor.

    `entry_bytes` is the stored size of one entry of one layer (b * h * d * itemsize). A segment
    whose layer fits is cut into groups of whole layers; a longer one into entry ranges of one
    layer each. A single entry of a single layer is the smallest slab, even if it is larger.
    """
    if max_row_bytes < 1 or entry_bytes < 1:
        raise ValueError(f"max_row_bytes ({max_row_bytes}) and entry_bytes ({entry_bytes}) must be >= 1")
    slabs: list[Slab] = []
    for e0, e1 in segments:
        if e1 <= e0:
            continue
        layer_bytes = (e1 - e0) * entry_bytes
        if layer_bytes <= max_row_bytes:
            k = max(1, max_row_bytes // layer_bytes)  # layers per slab
            blocks = [(l0, min(l0 + k, n_layers), e0, e1) for l0 in range(0, n_layers, k)]
        else:
            c = max(1, max_row_bytes // entry_bytes)  # entries per slab
            blocks = [(la, la + 1, a, min(a + c, e1)) for la in range(n_layers) for a in range(e0, e1, c)]
        for block in blocks:
            slabs.extend(Slab(t, *block) for t in TENSORS)
    return slabs


def segments_of(memory: Memory, start: int = 0) -> list[tuple[int, int]]:
    """Entry segments of `memory` from `start`: the condensed part O, then the open window W."""
    n_outer, n = memory.state.n_outer, memory.state.size
    return [(start, max(start, n_outer)), (max(start, n_outer), n)]


# ---------------------------------------------------------------------------------------------
# Bytes
# ---------------------------------------------------------------------------------------------


def checksum(
    doc_id: str,
    generation: str,
    slab: Slab,
    dtype: str,
    shape: Sequence[int],
    data: memoryview | bytes | bytearray | np.ndarray,
    scale: bytes | None,
) -> int:
    """crc32 of the row's header (what it claims to be) + its data + its scales."""
    header = [doc_id, generation, slab.tensor, slab.layer_from, slab.layer_to, slab.entry_from, slab.entry_to]
    crc = _crc.crc32(json.dumps([*header, dtype, list(shape)]).encode())
    crc = _crc.crc32(data, crc)
    return _crc.crc32(scale, crc) if scale else crc


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., d) -> (float8_e4m3fn (..., d), float32 scales (..., 1)) with x ~ q * scale."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()  # (..., 1)
    scale = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def decode(
    raw: torch.Tensor, dtype: str, shape: Sequence[int], scale: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """Stored bytes (uint8, 1-D, on any device) -> tensor `shape` in `out_dtype` on that device."""
    t = raw.view(to_dtype(dtype)).view(tuple(shape))  # (layers, b, h, entries, d)
    if dtype == FP8:
        if scale is None:
            raise ValueError("an fp8 row needs its scales")
        return (t.float() * scale).to(out_dtype)  # scale (layers, b, h, entries, 1)
    return t.to(out_dtype)


@dataclass
class EncodedRow:
    """A slab ready to write: host bytes, their dtype and shape, and the row checksum."""

    slab: Slab
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray  # uint8, 1-D, little-endian C-order
    scale: bytes | None  # fp8 only: float32 little-endian, shape[:-1] + (1,)
    crc32: int

    @property
    def nbytes(self) -> int:
        """Payload bytes (data + scales)."""
        return self.data.nbytes + (len(self.scale) if self.scale else 0)


def encode(
    memory: Memory, slabs: Sequence[Slab], *, store_dtype: str, doc_id: str, generation: str
) -> Iterator[EncodedRow]:
    """Encode `slabs` of `memory` one at a time (bounded host memory).

    Syncs with the device once per row (copy to host, finiteness check): a memory holding NaN or
    Inf is refused with a ValueError naming the slab, before anything of that row is written.
    """
    check_byte_order()
    target = to_dtype(store_dtype)
    for slab in slabs:
        src = memory.keys if slab.tensor == "keys" else memory.values
        parts = [src[i][:, :, slab.entry_from : slab.entry_to] for i in range(slab.layer_from, slab.layer_to)]
        x = (parts[0][None] if len(parts) == 1 else torch.stack(parts)).contiguous()  # (layers, b, h, entries, d)
        lo, hi = torch.aminmax(x)  # NaN and +-Inf show here; cheaper than isfinite on CPU
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError(
                f"document {doc_id!r}: {slab.tensor} of layers {slab.layer_from}:{slab.layer_to}, entries"
                f" {slab.entry_from}:{slab.entry_to} hold NaN or Inf; the memory is broken, condense it again"
            )
        scale = None
        if store_dtype == FP8:
            x, s = quantize_fp8(x)
            scale = s.cpu().contiguous().numpy().astype("<f4").tobytes()
        elif x.dtype != target:
            x = x.to(target)
        data = x.cpu().view(torch.uint8).reshape(-1).numpy()  # no copy for a whole-layer slab of a CPU memory
        shape = tuple(x.shape)
        crc = checksum(doc_id, generation, slab, store_dtype, shape, data, scale)
        yield EncodedRow(slab, store_dtype, shape, data, scale, crc)
