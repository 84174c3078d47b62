"""Where a beacon training step's time goes: wall time, GPU kernel time and the top kernels, per setting.

    python -m bench.train_profile --config CONFIG_DIR --length 16384 \
        "pw=1,dtype=fp32,attn=dense" "pw=1,dtype=bf16,attn=auto" "pw=16,dtype=bf16,attn=auto,batch=2"

CONFIG_DIR holds a base's config.json (e.g. a converted base folder, or .carry/qshape on a device
machine): the base is built with random weights of that shape (speed does not depend on the values).
Each setting is a comma list of pw (windows per pass), dtype (the frozen base's weights, fp32 or
bf16), attn (beacon.attention mode), batch (sequences a step), compile (1: the compiled decoder
layer in training). A step is lm.loss + backward under bf16 autocast, ratios drawn per window from
2..32 as train-lm does. One JSON line per setting: seconds a step (median of `--steps`), tokens/s,
peak GiB, and from one profiled step the GPU kernel time, the host time not covered by kernels,
and the kernels that took the most time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from contextlib import nullcontext

import torch

DEFAULTS = {"pw": "8", "dtype": "fp32", "attn": "dense", "batch": "1", "compile": "0"}  # the recipe's GPU settings


def parse_setting(text: str) -> dict[str, str]:
    """'pw=4,dtype=bf16' -> the full setting (DEFAULTS filled in); unknown keys are refused."""
    setting = dict(DEFAULTS)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in DEFAULTS or not value:
            raise SystemExit(f"setting {text!r}: {item!r} is not KEY=VALUE with KEY in {sorted(DEFAULTS)}")
        setting[key] = value
    return setting


def random_base(config_dir: str, folder: str) -> None:
    """A base of CONFIG_DIR's shape with seeded random weights, saved to `folder`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    for key in [k for k in vars(config) if k.startswith("beacon_")]:
        delattr(config, key)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)


def measure(folder: str, setting: dict[str, str], length: int, steps: int, top: int) -> dict:
    """Time `steps` training steps of one setting, then profile one (see the module docstring)."""
    import beacon

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm = beacon.load(folder, device=device, dtype=setting["dtype"], beacon_window=1024, beacon_stride=1024,
                     beacon_ratio=[2, 4, 8, 16, 32], beacon_ratio_mix="step-random", beacon_param=["q", "k", "v"],
                     beacon_attn="full-coverage", beacon_pos="interleave",
                     beacon_parallel_window=int(setting["pw"]))  # fmt: skip
    lm.attn_mode = setting["attn"]
    lm.parallel_window = int(setting["pw"])  # as given (unset, a GPU would read 8 windows a pass)
    lm.compile_layers = setting["compile"] == "1"
    params = lm.beacon_parameters()
    for p in params:
        p.data = p.data.float()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(40000, lm.parts.vocab_size), (int(setting["batch"]), length), generator=gen)
    ids = ids.to(device)

    def step(seed: int) -> None:
        with autocast:
            loss, _ = lm.loss(ids, seed=seed)
        loss.backward()
        for p in params:
            p.grad = None

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step(0)
    sync()
    first = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(i + 1)
        sync()
        times.append(time.perf_counter() - t0)
    per_step = statistics.median(times)
    tokens = ids.numel()
    result = {"setting": setting, "length": length, "first_step_s": round(first, 3), "step_s": round(per_step, 3),
              "tokens_per_s": round(tokens / per_step), "peak_gib": None}  # fmt: skip
    if device.type == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step(steps + 1)
        sync()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [e for e in events if e.device_time_total > 0 and e.device_type.name == "CUDA"]
        kernel_s = sum(e.self_device_time_total for e in kernels) / 1e6
        ranked = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:top]
        result["profiled_step_s"] = round(wall, 3)
        result["kernel_s"] = round(kernel_s, 3)
        result["gpu_busy"] = round(kernel_s / wall, 3)
        result["top_kernels"] = [[e.key[:90], round(e.self_device_time_total / 1e3, 1), e.count] for e in ranked]
    ranked_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    result["top_host_ops"] = [[e.key[:60], round(e.self_cpu_time_total / 1e3, 1), e.count] for e in ranked_cpu]
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+", help="comma lists of KEY=VALUE (see the module docstring)")
    ap.add_argument("--config", required=True, help="folder with the base's config.json")
    ap.add_argument("--folder", default="/tmp/train-profile-base", help="where the random base is written")
    ap.add_argument("--length", type=int, default=16384, help="tokens a sequence")
    ap.add_argument("--steps", type=int, default=3, help="timed steps a setting (after one warm-up step)")
    ap.add_argument("--top", type=int, default=12, help="kernels and host ops listed")
    args = ap.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    random_base(args.config, args.folder)
    for setting in settings:
        try:
            result = measure(args.folder, setting, args.length, args.steps, args.top)
        except Exception as exc:  # one setting out of memory must not lose the others' lines
            result = {"setting": setting, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        gc.collect()  # the setting's model goes before the next one loads
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
