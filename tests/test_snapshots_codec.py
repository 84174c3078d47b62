"""Slab planning, byte encoding and checksums of snapshot rows (no LanceDB involved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from beacon import Memory, WindowState
from snapshots.codec import FP8, Slab, checksum, decode, encode, plan_slabs, quantize_fp8, segments_of


def _memory(n_layers=3, h=2, n=11, d=8, n_outer=7, dtype=torch.float32, seed=0) -> Memory:
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, h, n, d, generator=g).to(dtype) for _ in range(n_layers)]
    values = [torch.randn(1, h, n, d, generator=g).to(dtype) for _ in range(n_layers)]
    return Memory(keys, values, WindowState(n_tokens=40, n_beacons=n_outer, window_raw=n - n_outer))


@pytest.mark.parametrize("max_row_bytes", [1, 100, 1000, 10_000, 10**9])
@pytest.mark.parametrize("segments", [[(0, 7), (7, 11)], [(0, 0), (0, 11)], [(4, 7), (7, 11)]])
def test_slabs_tile_each_segment_once_within_the_bound(max_row_bytes, segments):
    n_layers, entry_bytes = 3, 64
    slabs = plan_slabs(n_layers, segments, entry_bytes=entry_bytes, max_row_bytes=max_row_bytes)
    for tensor in ("keys", "values"):
        cover = np.zeros((n_layers, 11), np.int32)
        for s in slabs:
            if s.tensor == tensor:
                cover[s.layer_from : s.layer_to, s.entry_from : s.entry_to] += 1
                rows = (s.layer_to - s.layer_from) * (s.entry_to - s.entry_from) * entry_bytes
                assert rows <= max(max_row_bytes, entry_bytes)  # one entry of one layer is the floor
                assert any(a <= s.entry_from and s.entry_to <= b for a, b in segments)  # never straddles
        want = np.zeros_like(cover)
        for a, b in segments:
            want[:, a:b] = 1
        assert (cover == want).all()


def test_a_small_segment_packs_whole_layers():
    slabs = plan_slabs(4, [(0, 2)], entry_bytes=10, max_row_bytes=45)  # a layer is 20 bytes: 2 per row
    assert [(s.tensor, s.layer_from, s.layer_to) for s in slabs] == [
        ("keys", 0, 2), ("values", 0, 2), ("keys", 2, 4), ("values", 2, 4)
    ]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lossless_dtypes_roundtrip_bit_exactly(dtype):
    memory = _memory(dtype=dtype)
    slabs = plan_slabs(3, segments_of(memory), entry_bytes=2 * 8 * dtype.itemsize, max_row_bytes=200)
    name = str(dtype).removeprefix("torch.")
    for row in encode(memory, slabs, store_dtype=name, doc_id="d", generation="g"):
        s = row.slab
        assert row.data.dtype == np.uint8 and row.scale is None
        assert row.crc32 == checksum("d", "g", s, name, row.shape, row.data, None)
        got = decode(torch.from_numpy(row.data.copy()), row.dtype, row.shape, None, dtype)
        src = memory.keys if s.tensor == "keys" else memory.values
        want = torch.stack([src[i][:, :, s.entry_from : s.entry_to] for i in range(s.layer_from, s.layer_to)])
        assert torch.equal(got, want)


def test_fp8_keeps_each_value_within_a_sixteenth_of_its_vectors_max():
    x = torch.randn(2, 1, 3, 5, 16) * torch.logspace(-3, 3, 5)[None, None, None, :, None]
    q, scale = quantize_fp8(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (2, 1, 3, 5, 1)
    raw = q.view(torch.uint8).reshape(-1)
    y = decode(raw, FP8, x.shape, scale, torch.float32)
    assert ((y - x).abs() <= x.abs().amax(-1, keepdim=True) / 16).all()
    zeros = torch.zeros(1, 1, 1, 2, 4)
    assert torch.equal(decode(quantize_fp8(zeros)[0].view(torch.uint8).reshape(-1), FP8, zeros.shape,
                              quantize_fp8(zeros)[1], torch.float32), zeros)  # fmt: skip


def test_checksum_sees_every_flipped_byte_and_every_header_field():
    data = bytearray(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    slab = Slab("keys", 0, 1, 0, 4)
    base = checksum("d", "g", slab, "float32", (1, 1, 3, 4, 25 // 4), data, None)
    for i in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[i] ^= 0x10
        assert checksum("d", "g", slab, "float32", (1, 1, 3, 4, 25 // 4), flipped, None) != base
    assert checksum("d", "g", slab, "float32", (1, 1, 3, 4, 25 // 4), data[:-1], None) != base
    others = [
        ("e", "g", slab, "float32"), ("d", "h", slab, "float32"), ("d", "g", Slab("values", 0, 1, 0, 4), "float32"),
        ("d", "g", Slab("keys", 0, 1, 1, 4), "float32"), ("d", "g", slab, "bfloat16"),
    ]  # fmt: skip
    for doc, gen, s, dt in others:
        assert checksum(doc, gen, s, dt, (1, 1, 3, 4, 25 // 4), data, None) != base


def test_a_memory_holding_nan_is_refused():
    memory = _memory()
    memory.values[2][0, 1, 9, 3] = float("nan")
    slabs = plan_slabs(3, segments_of(memory), entry_bytes=64, max_row_bytes=10**6)
    with pytest.raises(ValueError, match="values of layers .* entries 7:11 hold NaN or Inf"):
        list(encode(memory, slabs, store_dtype="float32", doc_id="d", generation="g"))


def test_checksums_are_zlibs_crc32_whichever_library_computes_them():
    """Rows are checked with zlib-ng when installed (a dependency: CI has it); its CRC-32 is zlib's, so
    snapshots written with either library load with the other."""
    import json
    import zlib

    from snapshots import codec

    assert codec.CRC32_IMPL == "zlib-ng"
    slab = codec.Slab("keys", 0, 2, 5, 9)
    data = np.random.default_rng(0).integers(0, 256, 3 * 2**20 + 7, dtype=np.uint8)
    scale = b"\x01\x02\x03\x04" * 9
    header = ["doc", "g1", "keys", 0, 2, 5, 9, "bfloat16", [2, 1, 4, 4, 16]]
    want = zlib.crc32(scale, zlib.crc32(data, zlib.crc32(json.dumps(header).encode())))
    assert codec.checksum("doc", "g1", slab, "bfloat16", (2, 1, 4, 4, 16), memoryview(data), scale) == want
