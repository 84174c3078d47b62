"""Lance's blob reader against reading the same blob bytes straight from the data file (pread).

    python -m bench.blob_readers --size-gb 0.47 --threads 1,2 --out docs/results/blob_readers_cpu.json

Puts one synthetic bf16 memory (8 MiB rows), then reads every row's bytes into reused bytearrays
with N threads, warm page cache, both ways: `take_blobs` + `BlobFile.readinto` (what the store
used before) and `SnapshotView.blobs` on a local store (os.preadv at the blob's position). Only
reading — no checksum, no placement. Median of --repeats.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from snapshots import SnapshotStore
from snapshots.tables import SnapshotView

from .shapes import save_json
from .snapshot_io import synthetic


def read_all(readers, buffers, threads: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda rb: rb[0].read_into(rb[1]), zip(readers, buffers, strict=True)))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=0.47)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="docs/results/blob_readers_cpu.json")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="beacon-blobs-"))
    try:
        memory, fp = synthetic(args.size_gb, "cpu")
        store = SnapshotStore(root / "db")
        store.put("doc", memory, fingerprint=fp)
        view = store.tables.snapshot_view()
        rows = view.rows("doc_id = 'doc'", ["nbytes"])
        buffers = [bytearray(r["nbytes"]) for r in rows]
        nbytes = sum(r["nbytes"] for r in rows)
        result = {"command": " ".join(["python -m bench.blob_readers"] + sys.argv[1:]), "bytes": nbytes,
                  "rows": len(rows), "runs": []}  # fmt: skip
        lance_view = SnapshotView(view._ds)
        lance_view._direct_files = lambda rows: None  # force Lance's reader
        for threads in [int(t) for t in args.threads.split(",")]:
            for name, v in (("lance take_blobs", lance_view), ("pread", view)):
                read_all(v.blobs(rows), buffers, threads)  # warm the page cache
                seconds = statistics.median(read_all(v.blobs(rows), buffers, threads) for _ in range(args.repeats))
                run = {"reader": name, "threads": threads, "seconds": seconds, "gb_s": nbytes / seconds / 1e9}
                result["runs"].append(run)
                print(json.dumps(run), flush=True)
        view.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    save_json(result, args.out)


if __name__ == "__main__":
    main()
