"""Time to first token from a stored snapshot vs. re-reading the raw document.

    python -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 --db /tmp/ttft-db

Beacon: SnapshotStore.get (disk -> host -> GPU, checked) + the question read after the memory +
the first token (the general forward pass, or the decoder's one-step read over pooled buffers
replayed as CUDA graphs — what generate and the Answerer do), for each snapshot dtype
(--store-dtypes; float8 halves the bytes, lossy) and each number of reader threads (--workers),
load and question timed apart. Page cache warm (the
snapshot was just read) and cold (its files dropped from the page cache with posix_fadvise
DONTNEED, or /proc/sys/vm/drop_caches where allowed). Plain: a
full-attention prefill of document + question with transformers (SDPA). Random bf16 weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from beacon.decode import StaticDecoder
from snapshots import SnapshotStore

from .condense import timed
from .shapes import environment, official_qwen2_lm, random_model, save_json


def drop_page_cache(folder: Path) -> str:
    """Evict the store's files from the page cache; returns how."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            os.sync()
            f.write("3\n")
        return "drop_caches"
    except OSError:
        for path in folder.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        return "posix_fadvise"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2-7b")
    p.add_argument("--length", type=int, default=131072)
    p.add_argument("--ratio", type=int, default=8)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--db", default="/tmp/beacon-ttft-db")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", default="4,8,16", help="SnapshotStore read_workers to try, comma-separated")
    p.add_argument("--store-dtypes", default="bfloat16,float8_e4m3fn", help="snapshot dtypes to try")
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--question-modes", default="eager,decoder",
        help="question prefill: eager (the general forward), compiled (its layer compiled once per process: a"
        " warm query actor), decoder (decode.StaticDecoder.read, CUDA graphs: what generate and the Answerer do)",
    )  # fmt: skip
    p.add_argument(
        "--loads", default="sync,background",
        help="sync: get, then the question; background: get(background=True), the question overlapping the load",
    )  # fmt: skip
    p.add_argument("--max-row-mib", default="8", help="snapshot row sizes to try (SnapshotStore max_row_bytes)")
    p.add_argument("--out", default="docs/results/ttft.json")
    args = p.parse_args()
    model = random_model(args.shape, device=args.device)
    lm = official_qwen2_lm(model, args.window, args.ratio)
    doc = torch.randint(0, 150_000, (1, args.length), device=args.device)
    question = torch.randint(0, 150_000, (1, 32), device=args.device)
    fp = lm.fingerprint()
    memory = lm.condense(doc)
    result = {
        "command": " ".join(["python -m bench.ttft"] + sys.argv[1:]),
        "env": environment(),
        "shape": args.shape, "length": args.length, "ratio": args.ratio, "runs": [],
    }  # fmt: skip
    for row_mib in [float(x) for x in args.max_row_mib.split(",")]:
        store = SnapshotStore(Path(args.db) / f"rows-{row_mib:g}MiB", max_row_bytes=int(row_mib * 2**20))
        for dtype in args.store_dtypes.split(","):
            put_s, _ = timed(lambda d=dtype, st=store: st.put(d, memory, fingerprint=fp, store_dtype=d))
            stored = store.show(dtype).stored_bytes

            def first_token(
                doc_id: str, background: bool = False, store=store, decoder: bool = False
            ) -> tuple[float, float, list]:
                """(seconds to load the memory onto the GPU, seconds for question + first token, layer
                waits); with background=True get returns at once and the question overlaps the load:
                the second number then holds most of both, and each layer wait is (layer, ms since get
                began when the question asked for it, ms when it had it)."""
                _sync()
                t0 = time.perf_counter()
                mem = store.get(doc_id, fingerprint=fp, device=args.device, background=background)
                if not background:
                    _sync()
                t1 = time.perf_counter()
                waits: list = []
                if mem.pending is not None:
                    gate = mem.pending

                    def traced(which, gate=gate, waits=waits, t0=t0):
                        asked = time.perf_counter()
                        gate(which)
                        waits.append((which, 1e3 * (asked - t0), 1e3 * (time.perf_counter() - t0)))

                    mem.pending = traced
                if decoder:  # what generate() and the Answerer do: StaticDecoder.read (CUDA graphs)
                    stepper = StaticDecoder(lm, mem, graphs=mem.device.type == "cuda")
                    stepper.read(question).argmax(-1).tolist()
                    stepper.close()
                else:  # the general forward pass
                    _, logits = lm.forward(question, mem, logits="last")
                    logits.argmax(-1).tolist()
                return t1 - t0, time.perf_counter() - t1, waits

            loads = args.loads.split(",")
            if not set(loads) <= {"sync", "background"}:
                raise SystemExit(f"--loads: {args.loads!r}: choose from sync, background")
            modes = args.question_modes.split(",")
            direct = [m for m in modes if m in ("eager", "decoder")]  # each with every load and reader count
            combos = [(int(w), m, ld) for m in direct for ld in loads for w in args.workers.split(",")] + [
                (int(args.workers.split(",")[0]), m, "sync") for m in modes if m not in direct
            ]
            for workers, mode, load in combos:
                if mode not in ("eager", "compiled", "decoder"):
                    raise SystemExit(f"--question-modes: {mode!r} is not eager, compiled or decoder")
                lm.compile_layers = mode == "compiled"
                store.read_workers = workers
                bg, dec = load == "background", mode == "decoder"
                # warm-up (and warms the page cache; compiles in "compiled" mode; captures the decoder's graphs)
                first_token(dtype, bg, decoder=dec)
                warm = [first_token(dtype, bg, decoder=dec) for _ in range(args.repeats)]
                cold, how = [], ""
                for _ in range(args.repeats):
                    how = drop_page_cache(Path(args.db))
                    cold.append(first_token(dtype, bg, decoder=dec))
                run = {
                    "store_dtype": dtype, "max_row_mib": row_mib, "read_workers": workers, "question": mode,
                    "load": load,
                    "snapshot_bytes": stored,
                    "put_s": put_s,
                    "warm_s": statistics.median(w[0] + w[1] for w in warm),
                    "warm_load_s": statistics.median(w[0] for w in warm),
                    "warm_question_s": statistics.median(w[1] for w in warm),
                    "cold_question_s": statistics.median(c[1] for c in cold),
                    "cold_s": statistics.median(c[0] + c[1] for c in cold),
                    "cold_load_s": statistics.median(c[0] for c in cold),
                    "cold_how": how,
                    # the last warm / cold run's layer waits: how long the question stood waiting for the load
                    "warm_waited_ms": sum(got - asked for _, asked, got in warm[-1][2]),
                    "cold_waited_ms": sum(got - asked for _, asked, got in cold[-1][2]),
                    "warm_layer_waits_ms": [[layer, round(a, 2), round(g, 2)] for layer, a, g in warm[-1][2]],
                }  # fmt: skip
                result["runs"].append(run)
                print(json.dumps(run), flush=True)

    def plain() -> None:
        with torch.no_grad():
            out = model(input_ids=torch.cat([doc, question], 1), logits_to_keep=1)
            out.logits[:, -1].argmax(-1).tolist()

    plain()  # warm-up
    result["plain_prefill_s"] = statistics.median(timed(plain)[0] for _ in range(max(1, args.repeats - 1)))
    for run in result["runs"]:
        run["speedup_warm"] = result["plain_prefill_s"] / run["warm_s"]
        run["speedup_cold"] = result["plain_prefill_s"] / run["cold_s"]
    print(json.dumps(result, indent=1))
    save_json(result, args.out)


if __name__ == "__main__":
    main()
