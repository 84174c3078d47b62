"""Snapshot write and load speed against the machine's own read bandwidth of the same bytes.

    python -m bench.snapshot_io [--size-gb 0.94] [--device cuda] [--row-mib 8] [--compare] \
        [--out docs/results/snapshot_io_cpu.json]

The memory is shaped like Qwen2-7B's after 128K tokens at ratio 8: 16K beacon entries x 28 layers
x 4 kv heads x head_dim 128, bf16, keys and values = 0.94 GB (--size-gb scales the entries).
Measured, each best and median of --repeats, page cache warm and cold (evicted with
posix_fadvise(DONTNEED) on every file of the store, which needs no root):

  write       SnapshotStore.put of the memory on --device (incl. device -> host); "raw write
              fsync": the same bytes written to one file and fsync'd, for the disk's pace
  get->host   SnapshotStore.get(device="cpu"): read, crc32 check, place into the tensors
  get->gpu    SnapshotStore.get(device="cuda"): + pinned staging, non-blocking copies (CUDA only)
  raw read    a plain chunked read of the snapshots table's data files (the same bytes and more)
              into one reused buffer; "fresh host": into a new host tensor (new pages, as a load
              to host must); "to gpu": through two pinned buffers into GPU memory (CUDA only)
  --compare   other Lance layouts of the same rows: plain binary column + scan, lancedb tbl.add

Needs torch, numpy, pyarrow and pylance (lancedb only for --compare); no model, no transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from beacon import Memory, WindowState

from .disk_probe import drop_cache

try:
    from snapshots import SnapshotStore
except ImportError as e:  # pylance is the one dependency a bare GPU box may lack
    raise SystemExit(f"{e}: install pylance==14.0.2 (the store's only Lance dependency)") from e

LAYERS, KV_HEADS, HEAD_DIM, RATIO, WINDOW = 28, 4, 128, 8, 1024  # Qwen2-7B, ratio 8, window 1024
ENTRY_BYTES = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2  # K and V, bf16: bytes per beacon entry


def synthetic(size_gb: float, device: str) -> tuple[Memory, dict]:
    """A bf16 memory of about `size_gb` GB (whole windows of 128 beacons) and a fingerprint for it."""
    per_window = WINDOW // RATIO
    n = max(per_window, round(size_gb * 1e9 / ENTRY_BYTES / per_window) * per_window)  # beacon entries
    g = torch.Generator(device=device).manual_seed(0)
    keys = torch.randn(LAYERS, 1, KV_HEADS, n, HEAD_DIM, generator=g, device=device, dtype=torch.bfloat16)
    values = torch.randn(LAYERS, 1, KV_HEADS, n, HEAD_DIM, generator=g, device=device, dtype=torch.bfloat16)
    state = WindowState(n_tokens=n * RATIO, n_beacons=n, n_windows=n // per_window)
    memory = Memory(list(keys.unbind(0)), list(values.unbind(0)), state)
    config = dict(beacon_window=WINDOW, beacon_stride=WINDOW, beacon_ratio=[RATIO], beacon_pos="interleave")
    fp = {"id": "bench-qwen2-7b-shape", "name": "synthetic Qwen2-7B-shaped memory", "model_type": "qwen2",
          "dtype": "bfloat16", "beacon_config": config}  # fmt: skip
    return memory, fp


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def raw_read(files: list[Path], to: str, chunk: int = 8 << 20) -> int:
    """Read `files` front to back in `chunk`s into one reused buffer (to="buffer"), on into a fresh
    host tensor of their size (to="fresh": what any loader to host memory pays for new pages), or
    through two pinned buffers into GPU memory (to="gpu")."""
    buf = bytearray(chunk)
    view = torch.frombuffer(buf, dtype=torch.uint8)
    total_bytes = sum(f.stat().st_size for f in files)
    fresh = torch.empty(total_bytes, dtype=torch.uint8) if to == "fresh" else None
    gpu = to == "gpu"
    staging = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(2)] if gpu else []
    events = [None, None]
    dst = torch.empty(chunk, dtype=torch.uint8, device="cuda") if gpu else None
    total, turn = 0, 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                if fresh is not None:
                    fresh[total : total + n].copy_(view[:n])
                total += n
                if gpu:
                    slot = turn % 2
                    if events[slot] is not None:
                        events[slot].synchronize()  # its last copy has left the buffer
                    staging[slot][:n].copy_(view[:n])
                    dst[:n].copy_(staging[slot][:n], non_blocking=True)
                    events[slot] = torch.cuda.Event()
                    events[slot].record()
                    turn += 1
    return total


def raw_write(path: Path, memory: Memory) -> None:
    with open(path, "wb", buffering=0) as f:
        for t in memory.keys + memory.values:
            f.write(t.contiguous().cpu().view(torch.uint8).numpy().data)
        os.fsync(f.fileno())


def summary(bytes_: int, seconds: list[float]) -> dict:
    gbs = [bytes_ / s / 1e9 for s in seconds]
    return {"gb_s_best": max(gbs), "gb_s_median": statistics.median(gbs), "seconds": seconds}


def measure_store(root: Path, memory: Memory, fp: dict, row_mib: float, repeats: int, device: str) -> dict:
    nbytes = memory.nbytes()
    results: dict = {}
    writes = []
    for i in range(repeats):
        path = root / f"store-{row_mib}-{i}"
        store = SnapshotStore(path, max_row_bytes=int(row_mib * 2**20))
        writes.append(timed(lambda store=store: store.put("doc", memory, fingerprint=fp)))
        if i < repeats - 1:
            shutil.rmtree(path)
    results["write"] = summary(nbytes, writes)
    raw_writes = []
    for _ in range(repeats):  # the same bytes, device -> host -> one file, fsync'd: the disk's pace
        raw_writes.append(timed(lambda: raw_write(root / "raw.bin", memory)))
        (root / "raw.bin").unlink()
    results["raw_write_fsync"] = summary(nbytes, raw_writes)
    results["write"]["vs_raw_write_fsync"] = results["write"]["gb_s_median"] / results["raw_write_fsync"]["gb_s_median"]
    info = store.show("doc")
    results["rows"], results["stored_bytes"] = info.n_rows, info.stored_bytes
    data_files = sorted((store.path / "snapshots.lance" / "data").rglob("*.lance"))
    results["data_file_bytes"] = sum(f.stat().st_size for f in data_files)
    targets = [("host", "cpu")] + ([("gpu", "cuda")] if device == "cuda" else [])
    for cache in ("warm", "cold"):
        for name, dev in targets:
            times = []
            for _ in range(repeats):
                drop_cache(store.path) if cache == "cold" else store.get("doc", fingerprint=fp, device=dev)
                times.append(timed(lambda dev=dev: store.get("doc", fingerprint=fp, device=dev)))
            results[f"get_{name}_{cache}"] = summary(nbytes, times)
        raws = [("raw_read", "buffer"), ("raw_read_fresh_host", "fresh")]
        raws += [("raw_read_to_gpu", "gpu")] if device == "cuda" else []
        for name, to in raws:
            times = []
            for _ in range(repeats):
                drop_cache(store.path) if cache == "cold" else raw_read(data_files, to)
                times.append(timed(lambda to=to: raw_read(data_files, to)))
            results[f"{name}_{cache}"] = summary(results["data_file_bytes"], times)
        for name, _ in targets:
            got = results[f"get_{name}_{cache}"]
            got["vs_raw_read"] = got["gb_s_median"] / results[f"raw_read_{cache}"]["gb_s_median"]
            same = "raw_read_to_gpu" if name == "gpu" else "raw_read_fresh_host"
            got[f"vs_{same}"] = got["gb_s_median"] / results[f"{same}_{cache}"]["gb_s_median"]
    got = store.get("doc", fingerprint=fp, device=device)
    assert all(torch.equal(a, b) for a, b in zip(got.keys + got.values, memory.keys + memory.values, strict=True))
    return results


def compare_layouts(root: Path, memory: Memory, row_mib: float, repeats: int) -> dict:
    """Other ways to keep the same rows in Lance, read back to host (warm cache)."""
    import lance

    host = torch.cat([torch.stack(memory.keys), torch.stack(memory.values)]).cpu().reshape(-1).view(torch.uint8)
    row = int(row_mib * 2**20)
    chunks = [host[i : i + row].numpy() for i in range(0, host.numel(), row)]
    schema = pa.schema(
        [pa.field("doc_id", pa.string()), pa.field("row", pa.int32()), pa.field("data", pa.large_binary())]
    )

    def table(start: int, stop: int) -> pa.Table:
        data = [pa.py_buffer(c) for c in chunks[start:stop]]
        offsets = np.cumsum([0] + [len(b) for b in data]).astype(np.int64)
        arr = pa.Array.from_buffers(
            pa.large_binary(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
        )
        return pa.table(
            {"doc_id": ["doc"] * len(data), "row": pa.array(range(start, stop), pa.int32()), "data": arr}, schema=schema
        )

    def read_into(tbl: pa.Table, out: torch.Tensor) -> None:
        at = 0
        for b in tbl.column("data").chunks:
            for v in b:
                src = torch.frombuffer(v.as_buffer(), dtype=torch.uint8)
                out[at : at + src.numel()].copy_(src)
                at += src.numel()

    out = torch.empty_like(host)
    results = {}
    uri = str(root / "plain.lance")
    t = timed(lambda: lance.write_dataset(table(0, len(chunks)), uri, schema, max_rows_per_group=8))
    reads = [
        timed(lambda: read_into(lance.dataset(uri).to_table(filter="doc_id = 'doc'"), out)) for _ in range(repeats)
    ]
    results["pylance_binary_scan"] = {
        "write": summary(host.numel(), [t]),
        "read_host_warm": summary(host.numel(), reads),
    }
    try:
        import lancedb
    except ImportError:
        return results
    db = lancedb.connect(root / "lancedb")
    tbl = db.create_table("rows", schema=schema)
    t = timed(lambda: [tbl.add(table(i, min(i + 8, len(chunks)))) for i in range(0, len(chunks), 8)])
    reads = [timed(lambda: read_into(tbl.to_lance().to_table(filter="doc_id = 'doc'"), out)) for _ in range(repeats)]
    results["lancedb_add_to_table"] = {
        "write": summary(host.numel(), [t]),
        "read_host_warm": summary(host.numel(), reads),
    }
    return results


def environment(device: str) -> dict:
    import lance

    info = {
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyarrow": pa.__version__,
        "pylance": lance.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    try:
        info["cpu"] = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        info["gpu"], info["cuda"] = torch.cuda.get_device_name(0), torch.version.cuda
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=0.94, help="memory size (0.94 = Qwen2-7B, 128K tokens, ratio 8)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--row-mib", default="8", help="max_row_bytes in MiB; a comma list sweeps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the stores (default: a temp dir, removed)")
    ap.add_argument("--compare", action="store_true", help="also time other Lance layouts of the same rows")
    ap.add_argument("--out", default=None, help="JSON path (default docs/results/snapshot_io_<device>.json)")
    args = ap.parse_args()
    out = Path(args.out or f"docs/results/snapshot_io_{args.device}.json")
    root = Path(args.dir or tempfile.mkdtemp(prefix="snapshot_io_"))
    root.mkdir(parents=True, exist_ok=True)
    memory, fp = synthetic(args.size_gb, args.device)
    report = {
        "command": " ".join(["python -m bench.snapshot_io", *sys.argv[1:]]),
        "environment": environment(args.device),
        "memory": {"bytes": memory.nbytes(), "entries": memory.state.size, "layers": LAYERS, "kv_heads": KV_HEADS,
                   "head_dim": HEAD_DIM, "dtype": "bfloat16", "tokens": memory.n_tokens, "ratio": RATIO},
        "runs": {},
    }  # fmt: skip
    print(f"memory {memory.nbytes() / 1e9:.3f} GB ({memory.state.size} entries) on {args.device}, store in {root}")
    try:
        for row_mib in [float(x) for x in args.row_mib.split(",")]:
            r = measure_store(root, memory, fp, row_mib, args.repeats, args.device)
            report["runs"][f"row_mib={row_mib:g}"] = r
            print(f"rows of <= {row_mib:g} MiB: {r['rows']} rows")
            for k, v in r.items():
                if isinstance(v, dict):
                    vs = [f"{x:.0%} of {k[3:]}" for k, x in v.items() if k.startswith("vs_")]
                    extra = f"  ({', '.join(vs)})" if vs else ""
                    print(f"  {k:28s} {v['gb_s_median']:6.2f} GB/s median, {v['gb_s_best']:6.2f} best{extra}")
            shutil.rmtree(root / f"store-{row_mib}-{args.repeats - 1}", ignore_errors=True)
        if args.compare:
            report["compare"] = compare_layouts(root, memory, float(args.row_mib.split(",")[0]), args.repeats)
            for k, v in report["compare"].items():
                w, r = v["write"]["gb_s_median"], v["read_host_warm"]["gb_s_median"]
                print(f"  {k:22s} write {w:5.2f} GB/s, read {r:5.2f} GB/s")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    report["environment"]["loadavg_at_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
