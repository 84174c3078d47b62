"""Where does a condense pass spend its time? torch.profiler over one call, CPU and CUDA.

    python -m bench.profile_condense --shape qwen2-1.5b --length 32768 --ratio 8 [--out DIR]

Prints the busiest ops by host time and by GPU time, and total host vs. GPU time: if the host
time per pass exceeds the GPU time, Python/dispatch overhead bounds the speed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .shapes import official_qwen2_lm, random_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen2-1.5b")
    p.add_argument("--length", type=int, default=32768)
    p.add_argument("--ratio", type=int, default=8)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--parallel-window", type=int, default=1)
    p.add_argument("--out", default="")
    args = p.parse_args()
    model = random_model(args.shape)
    lm = official_qwen2_lm(model, args.window, args.ratio, beacon_parallel_window=args.parallel_window)
    ids = torch.randint(0, 150_000, (1, args.length), device="cuda")
    lm.condense(ids[:, : 3 * args.window])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        lm.condense(ids)
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=25))
    print(table.table(sort_by="self_device_time_total", row_limit=25))
    cpu = sum(e.self_cpu_time_total for e in table) / 1e3
    gpu = sum(e.self_device_time_total for e in table) / 1e3
    print(f"total self host time {cpu:.1f} ms, total self GPU time {gpu:.1f} ms")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(args.out) / "condense_trace.json"))


if __name__ == "__main__":
    main()
