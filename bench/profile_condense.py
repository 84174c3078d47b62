"""Where does condensing spend its GPU time? torch.profiler over one call, kernels grouped by kind.

    python -m bench.profile_condense --cases qwen2-1.5b:131072:8,qwen2-7b:8192:2 \
        [--out docs/results/profile_condense.json] [--trace DIR]

Per case (shape:tokens:ratio): the wall time of an unprofiled call, then one profiled call whose
GPU kernels are summed by kind — matrix products (GEMM), attention (FlexAttention / SDPA
kernels), everything else (norms, RoPE, copies, elementwise) — and the host time. If GEMM +
attention fill the wall time, the kernels bound the speed; whatever else is left is overhead to
remove. Prints the busiest kernels too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .shapes import environment, official_qwen2_lm, random_model, save_json

GEMM = ("gemm", "nvjet", "xmma", "cutlass", "wgmma", "sm90_", "cublas")
ATTENTION = ("flex", "attention", "fmha", "flash", "triton_tem")


def kind(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ATTENTION):
        return "attention"
    if any(k in low for k in GEMM):
        return "gemm"
    return "other"


def profile_case(lm, length: int, trace: str) -> dict:
    ids = torch.randint(0, 150_000, (1, length), device="cuda")
    lm.condense(ids)  # warm-up: compiles every shape this length meets
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    lm.condense(ids)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        lm.condense(ids)
        torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    by_kind = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            ms = event.device_time / 1e3
            kernels[event.name] = kernels.get(event.name, 0.0) + ms
            by_kind[kind(event.name)] += ms
    table = prof.key_averages()
    host_ms = sum(e.self_cpu_time_total for e in table) / 1e3
    if trace:
        Path(trace).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(trace) / f"condense_{length}.json"))
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    gpu_ms = sum(by_kind.values())
    return {
        "tokens": length,
        "wall_s": wall,
        "tokens_per_s": length / wall,
        "gpu_kernel_ms": gpu_ms,
        "gpu_ms_by_kind": by_kind,
        "gpu_busy_fraction": gpu_ms / 1e3 / wall,
        "host_ms_profiled": host_ms,
        "top_kernels_ms": {name[:120]: ms for name, ms in top},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="qwen2-1.5b:131072:8", help="shape:tokens:ratio, comma-separated")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--trace", default="", help="folder for Chrome traces (optional)")
    p.add_argument("--compile", type=int, default=0, help="1: the decoder layer compiled (lm.compile_layers)")
    p.add_argument("--attn-mode", default="auto", help="comma list: attention layouts (attention.MODES)")
    p.add_argument("--out", default="docs/results/profile_condense.json")
    args = p.parse_args()
    command = " ".join(["python -m bench.profile_condense"] + sys.argv[1:])
    result = {"command": command, "env": environment(), "runs": []}
    models: dict[str, torch.nn.Module] = {}
    for case in args.cases.split(","):
        shape, length, ratio = case.split(":")
        if shape not in models:
            models.clear()
            torch.cuda.empty_cache()
            models[shape] = random_model(shape)
        lm = official_qwen2_lm(models[shape], args.window, int(ratio))
        lm.compile_layers = bool(args.compile)
        for attn_mode in args.attn_mode.split(","):
            lm.attn_mode = attn_mode
            run = {"shape": shape, "ratio": int(ratio), "compiled": bool(args.compile), "attn_mode": attn_mode,
                   **profile_case(lm, int(length), args.trace)}  # fmt: skip
            result["runs"].append(run)
            print(json.dumps(run, indent=1), flush=True)
            save_json(result, args.out)


if __name__ == "__main__":
    main()
