"""Condense throughput and peak memory: beacon vs. plain full-attention prefill vs. the official code.

    python -m bench.condense --shapes qwen2-1.5b --lengths 8192,32768 --ratios 8 --prefill \
        [--official-src PATH --official-site PATH] --out docs/results/condense.json

Random bf16 weights, batch 1, SDPA. Tokens/s = document tokens / wall seconds of one call (CUDA
synchronised): `tok_s` the median of the warm calls, `first_tok_s` the first call of that length
(bench.timing). Beacon first warms up as a Condenser does (beacon.warmup: every graph compiled at
start, a `warmup` row), so its first call is the one a user meets on a new length. The official
implementation runs in a subprocess with its own transformers (4.44) on PYTHONPATH: see
bench/official_condense.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import beacon
from beacon import warmup

from .shapes import environment, random_model, save_json
from .timing import median_time


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def _one_call(fn) -> float:
    """Seconds of one call of `fn`, the device synchronised on both sides."""
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def timed(fn) -> tuple[float, float]:
    """(seconds, peak GiB allocated) of one call."""
    _reset_peak()
    return _one_call(fn), _peak_gib()


def timed_median(fn) -> tuple[float, float, list[float]]:
    """(median seconds, peak GiB allocated over all runs, every time) of `fn` (bench.timing's rule:
    the first call, then warm ones)."""
    _reset_peak()
    seconds, times = median_time(lambda: _one_call(fn))
    return seconds, _peak_gib(), times


def prefill_run(model, length: int, device: str) -> dict:
    ids = torch.randint(0, 150_000, (1, length), device=device)
    with torch.no_grad():
        model(input_ids=ids[:, :1024], logits_to_keep=1, use_cache=True)  # warm-up
        seconds, peak, times = timed_median(lambda: model(input_ids=ids, logits_to_keep=1, use_cache=True))
    return {
        "kind": "prefill",
        "length": length,
        "seconds": seconds,
        "times": times,
        "tok_s": length / seconds,
        "first_tok_s": length / times[0],
        "peak_gib": peak,
    }


def beacon_run(lm, length: int, ratio: int, device: str, sync_debug: bool = False) -> dict:
    lm.config = lm.config.replace(beacon_ratio=[ratio])
    ids = torch.randint(0, 150_000, (1, length), device=device)
    holder = {}

    def run() -> None:
        holder.pop("memory", None)  # the previous run's memory must not count in this run's peak
        t0 = time.perf_counter()
        if sync_debug:
            torch.cuda.set_sync_debug_mode("warn")
        holder["memory"] = lm.condense(ids)
        holder.setdefault("host_s_all", []).append(time.perf_counter() - t0)  # until the last kernel is queued
        if sync_debug:
            torch.cuda.set_sync_debug_mode("default")

    seconds, peak, times = timed_median(run)
    mem = holder["memory"]
    host_all = holder["host_s_all"]
    return {
        "kind": "beacon",
        "length": length,
        "ratio": ratio,
        "parallel_window": lm.windows_per_pass(),
        "seconds": seconds,
        "times": times,
        "host_s": sorted(host_all)[len(host_all) // 2],  # host-bound if about `seconds`
        "tok_s": length / seconds,
        "first_tok_s": length / times[0],
        "peak_gib": peak,
        "memory_entries": mem.state.size,
        "memory_gib": mem.nbytes() / 2**30,
        "attn_mode": lm.attn_mode,
    }


def official_runs(args, shape: str) -> list[dict]:
    """Run bench/official_condense.py in a subprocess with the reference's transformers."""
    out = Path(args.out).with_suffix(f".official-{shape}.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.official_site, os.getcwd()]))
    cmd = [
        sys.executable,
        "-m",
        "bench.official_condense",
        "--src",
        args.official_src,
        "--shape",
        shape,
        "--lengths",
        args.lengths,
        "--ratios",
        args.ratios,
        "--window",
        str(args.window),
        "--pos",
        args.pos,
        "--attn",
        args.attn,
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return [{"kind": "official", "error": proc.stderr[-3000:]}]
    return json.loads(out.read_text())["runs"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="qwen2-1.5b")
    p.add_argument("--lengths", default="8192,32768,131072")
    p.add_argument("--ratios", default="2,8,32")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--pos", default="interleave")
    p.add_argument("--attn", default="full-coverage")
    p.add_argument("--attn-mode", default="auto", help="comma list: beacon attention layouts (attention.MODES)")
    p.add_argument("--parallel-window", default="1", help="comma list: windows per forward pass")
    p.add_argument("--compile", default="0", help="comma list of 0/1: torch.compile the decoder layer")
    p.add_argument("--prefill", action="store_true", help="also time plain full-attention prefill")
    p.add_argument("--official-src", default="", help="path of the official src/ folder (optional)")
    p.add_argument("--official-site", default="", help="site dir holding transformers 4.44 for the official run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sync-debug", action="store_true", help="warn (with a stack) at every host-device sync")
    p.add_argument("--out", default="docs/results/condense.json")
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    ratios = [int(x) for x in args.ratios.split(",")]
    result = {
        "command": " ".join(["python -m bench.condense"] + sys.argv[1:]),
        "env": environment(),
        "settings": vars(args),
        "runs": [],
    }

    def record(run: dict) -> None:
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        save_json(result, args.out)

    for shape in args.shapes.split(","):
        model = random_model(shape, device=args.device)
        if args.prefill:
            for length in lengths:
                try:
                    record({"shape": shape, **prefill_run(model, length, args.device)})
                except torch.OutOfMemoryError as err:
                    record({"shape": shape, "kind": "prefill", "length": length, "error": f"OOM: {err}"[:300]})
        lm = beacon.from_hf(
            model,
            beacon_window=args.window,
            beacon_stride=args.window,
            beacon_ratio=[ratios[0]],
            beacon_pos=args.pos,
            beacon_attn=args.attn,
            beacon_param=["q", "k", "v"],
            beacon_attend_prev=args.attn == "full-coverage",
        )
        for compiled in [bool(int(x)) for x in args.compile.split(",")]:
            lm.compile_layers = compiled
            for parallel in [int(x) for x in args.parallel_window.split(",")]:
                lm.parallel_window = parallel
                lm.config = lm.config.replace(beacon_ratio=[ratios[0]])
                warm_s = warmup.warm_up(lm)  # as a Condenser does at start; 0 where nothing compiles
                record({"shape": shape, "kind": "warmup", "compiled": compiled, "parallel_window": parallel,
                        "seconds": warm_s})  # fmt: skip
                for ratio in ratios:
                    for length in lengths:
                        for attn_mode in args.attn_mode.split(","):
                            lm.attn_mode = attn_mode
                            run = beacon_run(lm, length, ratio, args.device, args.sync_debug)
                            record({"shape": shape, "compiled": compiled, **run})
        del lm, model
        gc.collect()
        torch.cuda.empty_cache()
        if args.official_src:
            for run in official_runs(args, shape):
                record({"shape": shape, **run})
    print_table(result["runs"])


def print_table(runs: list[dict]) -> None:
    prefill = {(r["shape"], r["length"]): r["tok_s"] for r in runs if r.get("kind") == "prefill" and "tok_s" in r}
    official = {
        (r["shape"], r["length"], r["ratio"]): r["tok_s"] for r in runs if r.get("kind") == "official" and "tok_s" in r
    }
    nan = float("nan")
    print(
        f"{'shape':<11} {'tokens':>7} {'ratio':>5} {'P':>2} {'beacon tok/s':>12} {'first':>9} {'host s':>7} "
        f"{'peak GiB':>8} {'prefill':>9} {'x prefill':>9} {'official':>9} {'x official':>10} attention"
    )
    for r in runs:
        if r.get("kind") != "beacon":
            continue
        key = (r["shape"], r["length"])
        pre, off = prefill.get(key), official.get(key + (r["ratio"],))
        print(
            f"{r['shape']:<11} {r['length']:>7} {r['ratio']:>5} {r.get('parallel_window', 1):>2}"
            f"{'c' if r.get('compiled') else ' '}"
            f"{r['tok_s']:>12,.0f} {r.get('first_tok_s', nan):>9,.0f} {r.get('host_s', nan):>7.3f} "
            f"{r['peak_gib']:>8.1f} {pre or nan:>9,.0f} {(r['tok_s'] / pre) if pre else nan:>9.2f} "
            f"{off or nan:>9,.0f} {(r['tok_s'] / off) if off else nan:>10.2f} {r.get('attn_mode', '')}"
        )


if __name__ == "__main__":
    main()
