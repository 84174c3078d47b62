"""How fast can this host read a cold file? Buffered vs O_DIRECT, threads and read sizes.

    python -m bench.disk_probe --dir /root/probe --size-gb 1 --out docs/results/disk_probe.json

What bounds a snapshot load from a cold disk (docs/performance.md §2) is the disk's pace. This
writes one file of --size-gb, then for each setting evicts it from the page cache
(posix_fadvise DONTNEED after a sync: drop_cache, which the snapshot benchmarks use too) and reads it whole with
`threads` threads in reads of `read_mib`:

  buffered   os.preadv into reused buffers (what the snapshot loader does)
  direct     the same through O_DIRECT (page-aligned buffers, offsets and sizes): no page cache

and, as a check that the file really was cold, the same buffered read once more warm. GB/s of
the file's bytes, median of --repeats.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .shapes import save_json

ALIGN = 4096


def drop_cache(root: Path) -> None:
    """Evict every file under `root` from the page cache (clean pages only: sync first)."""
    os.sync()
    for f in root.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def write_file(path: Path, size: int) -> None:
    chunk = os.urandom(64 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())


def read_all(path: Path, threads: int, read_bytes: int, direct: bool) -> float:
    """Seconds to read the whole file with `threads` threads in reads of `read_bytes`."""
    size = path.stat().st_size
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags)
    buffers = [mmap.mmap(-1, read_bytes) for _ in range(threads)]  # page-aligned, as O_DIRECT needs
    offsets = list(range(0, size, read_bytes))

    def read(k: int) -> int:
        off = offsets[k]
        want = min(read_bytes, size - off)
        if direct:
            want = (want + ALIGN - 1) // ALIGN * ALIGN  # the tail read rounded up; the kernel stops at EOF
        view = memoryview(buffers[k % threads])[:want]
        return os.preadv(fd, [view], off)

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            # one job per thread slot at a time: a buffer is never shared by two reads in flight
            done = 0
            for start in range(0, len(offsets), threads):
                done += sum(pool.map(read, range(start, min(start + threads, len(offsets)))))
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
    if done < size:
        raise RuntimeError(f"read {done} of {size} bytes")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/disk_probe")
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--threads", default="1,4,16,64")
    ap.add_argument("--read-mib", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "probe.bin"
    size = int(args.size_gb * 1e9) // ALIGN * ALIGN
    write_file(path, size)
    rows = []
    for direct in (False, True):
        for threads in (int(t) for t in args.threads.split(",")):
            for mib in (float(m) for m in args.read_mib.split(",")):
                read_bytes = int(mib * (1 << 20)) // ALIGN * ALIGN
                times = []
                for _ in range(args.repeats):
                    drop_cache(folder)
                    times.append(read_all(path, threads, read_bytes, direct))
                row = {"mode": "direct" if direct else "buffered", "threads": threads, "read_mib": mib,
                       "seconds": statistics.median(times), "times": times}  # fmt: skip
                row["gb_s"] = size / row["seconds"] / 1e9
                rows.append(row)
                print(row, flush=True)
    drop_cache(folder)
    read_all(path, 16, 32 << 20, False)  # into the page cache
    warm = read_all(path, 16, 32 << 20, False)
    rows.append({"mode": "buffered, warm", "threads": 16, "read_mib": 32, "seconds": warm, "gb_s": size / warm / 1e9})
    print(rows[-1], flush=True)
    path.unlink()
    if args.out:
        from .shapes import environment

        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
        command = f"python -m bench.disk_probe {flags}"
        save_json({"command": command, "env": environment(), "file_bytes": size, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
