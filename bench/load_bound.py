"""What bounds a warm snapshot load to the GPU: the loader against parallel raw reads of the same bytes.

    python -m bench.load_bound --size-gb 0.94 --row-mib 32 --workers 16 --out docs/results/load_bound.json

A synthetic Qwen2-7B-shaped memory (bench.snapshot_io.synthetic: 128K tokens at ratio 8) is put
once; then, page cache warm, medians of --repeats:

  get                 SnapshotStore.get(device="cuda"): read, crc32 check, pinned staging, copy, place
  get, no checksum    the same with the crc32 check skipped (a probe only: the store never skips it)
  get, stdlib zlib    the same with the checksum computed by the standard library's zlib
  pread -> pinned     the snapshots table's data files read with os.preadv in rows of --row-mib by
                      --workers threads into reused pinned buffers: the host's own pace for these bytes
  + crc32             the same, each row checksummed on its thread (snapshots.codec's library)
  pinned -> gpu       one host-to-device copy of the whole size from pinned memory
  --cold              get and the parallel read (16 threads and 1) again, page cache dropped first

GB/s are of the snapshot's stored bytes (get) or of the data files' bytes (reads).

Needs torch and pylance; no model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from snapshots import SnapshotStore, codec, loader

from .shapes import environment, save_json
from .snapshot_io import drop_cache, synthetic, timed


def parallel_pread(files: list[Path], row_bytes: int, workers: int, crc: bool, pin: bool = True) -> int:
    """Read every file in rows of `row_bytes` with `workers` threads into reused (pinned) buffers."""
    buffers = [torch.empty(row_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(workers)]
    jobs = [
        (f, off, min(row_bytes, f.stat().st_size - off)) for f in files for off in range(0, f.stat().st_size, row_bytes)
    ]

    def read(k: int) -> int:
        path, offset, size = jobs[k]
        view = memoryview(buffers[k % workers].numpy())[:size]
        fd = os.open(path, os.O_RDONLY)
        try:
            n = os.preadv(fd, [view], offset)
        finally:
            os.close(fd)
        if crc:
            codec._crc.crc32(view[:n])  # the library the store uses
        return n

    # each thread owns buffer k % workers only while it reads job k: jobs of one buffer run in turn
    with ThreadPoolExecutor(workers) as pool:
        total = 0
        for start in range(0, len(jobs), workers):
            total += sum(pool.map(read, range(start, min(start + workers, len(jobs)))))
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=0.94)
    p.add_argument("--row-mib", type=float, default=32)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda", help="cpu: a smoke run (no pinned memory, no GPU copy)")
    p.add_argument("--store-dtype", default="bfloat16", help="snapshot dtype (float8_e4m3fn: half the bytes, lossy)")
    p.add_argument(
        "--cold", action="store_true", help="also time get and the parallel read with the page cache dropped"
    )
    p.add_argument("--out", default="docs/results/load_bound.json")
    args = p.parse_args()
    memory, fp = synthetic(args.size_gb, args.device)
    cuda = args.device == "cuda"
    nbytes = memory.nbytes()
    root = Path(tempfile.mkdtemp(prefix="load-bound-"))
    store = SnapshotStore(root / "store", max_row_bytes=int(args.row_mib * 2**20), read_workers=args.workers)
    store.put("doc", memory, fingerprint=fp, store_dtype=args.store_dtype)
    files = sorted((store.path / "snapshots.lance" / "data").rglob("*.lance"))
    stored = store.show("doc").stored_bytes
    file_bytes = sum(f.stat().st_size for f in files)

    def median_of(fn) -> float:
        fn()  # warm: page cache, pinned buffers, CUDA context
        return statistics.median(timed(fn) for _ in range(args.repeats))

    get = lambda: store.get("doc", fingerprint=fp, device=args.device)  # noqa: E731
    results = {"get": median_of(get)}
    checked = loader._read_and_check

    def unchecked(row, buf) -> None:  # the loader's read without the crc32 comparison
        n = row.read_into(buf)
        if n != row.nbytes:
            raise RuntimeError(f"short read of row {row.row}")

    loader._read_and_check = unchecked
    try:
        results["get_no_checksum"] = median_of(get)
    finally:
        loader._read_and_check = checked
    fast_crc = codec._crc
    codec._crc = zlib
    try:
        results["get_stdlib_zlib"] = median_of(get)
    finally:
        codec._crc = fast_crc
    row_bytes = int(args.row_mib * 2**20)
    results["pread_pinned"] = median_of(lambda: parallel_pread(files, row_bytes, args.workers, crc=False, pin=cuda))
    results["pread_pinned_crc32"] = median_of(
        lambda: parallel_pread(files, row_bytes, args.workers, crc=True, pin=cuda)
    )
    if args.cold:  # each run after its files left the page cache (posix_fadvise DONTNEED)

        def cold_median(fn) -> float:
            times = []
            for _ in range(args.repeats):
                drop_cache(store.path)
                times.append(timed(fn))
            return statistics.median(times)

        results["cold_get"] = cold_median(get)
        results["cold_pread_pinned"] = cold_median(lambda: parallel_pread(files, row_bytes, args.workers, False, cuda))
        results["cold_pread_pinned_1_thread"] = cold_median(lambda: parallel_pread(files, row_bytes, 1, False, cuda))
    if cuda:
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        results["pinned_to_gpu"] = median_of(lambda: device.copy_(host, non_blocking=True))
    out = {
        "command": " ".join(["python -m bench.load_bound"] + sys.argv[1:]),
        "env": environment(),
        "crc32": codec.CRC32_IMPL,
        "memory_bytes": nbytes, "data_file_bytes": file_bytes, "row_mib": args.row_mib, "workers": args.workers,
        "seconds": results,
        "store_dtype": args.store_dtype,
        "gb_s": {
            k: (file_bytes if "pread" in k else nbytes if k == "pinned_to_gpu" else stored) / v / 1e9
            for k, v in results.items()
        },
    }  # fmt: skip
    print(json.dumps(out, indent=1))
    save_json(out, args.out)


if __name__ == "__main__":
    main()
