"""Where the time of a question read after a memory goes: host vs GPU, syncs, kernels.

    python -m bench.question_profile --shape qwen2-7b --length 131072 --ratio 8 --out docs/results/question_profile.json

Condenses a random document (random bf16 weights), then times `lm.forward(question, memory.fork(),
logits="last")` + the first token (median of --repeats), the same through the decoder's one-step
read (decode.StaticDecoder.read: eager, CUDA graphs, graphs per layer, matmul attention), and
profiles one call of each with
torch.profiler: the GPU's kernel time against the wall time says whether the host (Python, op
dispatch, launches) or the GPU bounds it; CUDA sync-debug mode counts the host syncs and where
they come from.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
import warnings

import torch

from .shapes import environment, official_qwen2_lm, random_model, save_json


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _decoder_paths(lm, memory, question: torch.Tensor, repeats: int) -> tuple[dict, dict]:
    """Median seconds of a question + first token through decode.StaticDecoder.read, each way it can
    run: eager; CUDA graphs (first call: buffers made and graphs captured; then replays from the
    model's pool); graphs split per layer (as over a memory still loading — here a loader that has
    everything already); each with the plain matmul attention and with SDPA. Also where one graph
    read's time goes (synchronised phases), and a profile of it: kernel time and launches."""
    from beacon import attention as kernels
    from beacon import decode

    def ask(graphs: bool = True, loading: bool = False, phases: dict | None = None) -> int:
        mem = memory.share()
        if loading:
            mem.pending = lambda layer: None  # every layer "arrives" at once: the split path, no disk
        stepper = decode.StaticDecoder(lm, mem, graphs=graphs and torch.cuda.is_available())
        if phases is not None:  # time the read's parts, synchronised (slower in all: for shares only)
            for name in ("_build", "_stage", "_execute"):
                setattr(stepper, name, _phase(getattr(stepper, name), phases, name))
        token = stepper.read(question)[0].argmax().item()
        stepper.close()
        return token

    out: dict = {}
    default_rows = kernels.SDPA_MIN_ROWS
    try:
        for attention, rows in (("bmm", 10**9), ("sdpa", default_rows)):
            kernels.SDPA_MIN_ROWS = rows
            lm.decode_buffers.clear()
            out[f"{attention}_graphs_first_call"] = _timed(ask)
            for name, kw in [("graphs", {}), ("graphs_split", {"loading": True}), ("eager", {"graphs": False})]:
                ask(**kw)
                out[f"{attention}_{name}"] = statistics.median(_timed(lambda kw=kw: ask(**kw)) for _ in range(repeats))
            phases: dict = {}
            for _ in range(repeats):
                ask(phases=phases)
            out[f"{attention}_graphs_phases"] = {k: statistics.median(v) for k, v in phases.items()}
        kernels.SDPA_MIN_ROWS = default_rows
        lm.decode_buffers.clear()
        ask()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            ask()
            wall = time.perf_counter() - t0
    finally:
        kernels.SDPA_MIN_ROWS = default_rows
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    top_gpu = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    top_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    profile_out = {
        "attention": "default (attention.SDPA_MIN_ROWS)",
        "profiled_wall_s": wall,
        "gpu_kernel_s": gpu_us / 1e6,
        "kernels_run": sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA),
        "top_gpu_ops": [{"name": e.key[:120], "count": e.count, "gpu_ms": e.self_device_time_total / 1e3}
                        for e in top_gpu],
        "top_cpu_ops": [{"name": e.key[:120], "count": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3}
                        for e in top_cpu],
    }  # fmt: skip
    return out, profile_out


def _phase(fn, into: dict, name: str):
    """`fn`, its wall time (device synchronised before and after) appended to into[name]."""

    def run(*a, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn(*a, **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        into.setdefault(name, []).append(time.perf_counter() - t0)
        return result

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2-7b")
    p.add_argument("--length", type=int, default=131072)
    p.add_argument("--ratio", type=int, default=8)
    p.add_argument("--question", type=int, default=32, help="question tokens")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="docs/results/question_profile.json")
    args = p.parse_args()
    model = random_model(args.shape, device=args.device)
    lm = official_qwen2_lm(model, 2048, args.ratio)
    memory = lm.condense(torch.randint(0, 150_000, (1, args.length), device=args.device))
    question = torch.randint(0, 150_000, (1, args.question), device=args.device)

    def ask() -> int:
        _, logits = lm.forward(question, memory.fork(), logits="last")
        return logits[0, -1].argmax().item()  # the first token reaches the host: one sync

    for _ in range(3):
        ask()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ask()
        times.append(time.perf_counter() - t0)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        ask()
        profiled_s = time.perf_counter() - t0
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    top_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:20]
    top_gpu = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:20]
    # the same question with each attention layout that can run it (the engine picks "causal")
    by_mode = {}
    for mode in ("causal", "dense"):
        lm.attn_mode = mode
        ask()
        by_mode[mode] = statistics.median(_timed(ask) for _ in range(args.repeats))
    lm.attn_mode = "auto"

    # the decoder's one-step read (decode.StaticDecoder.read: what generate and the Answerer do)
    by_path, decoder_profile = _decoder_paths(lm, memory, question, args.repeats)

    syncs: collections.Counter[str] = collections.Counter()  # file:line of the Python code that synced
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ask()
        torch.cuda.set_sync_debug_mode(0)
        syncs.update(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))

    result = {
        "command": " ".join(["python -m bench.question_profile"] + sys.argv[1:]),
        "env": environment(),
        "shape": args.shape, "length": args.length, "ratio": args.ratio, "question_tokens": args.question,
        "memory_entries": memory.state.size,
        "question_s_median": statistics.median(times),
        "question_s_all": times,
        "profiled_wall_s": profiled_s,
        "gpu_kernel_s": gpu_us / 1e6,
        "gpu_busy_fraction": gpu_us / 1e6 / profiled_s,
        "kernel_launches": kernels,
        "host_syncs": dict(syncs),
        "question_s_by_attn_mode": by_mode,
        "question_s_by_path": by_path,
        "decoder_graphs_profile": decoder_profile,
        "top_cpu_ops": [
            {"name": e.key, "count": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
             "gpu_ms": e.self_device_time_total / 1e3}
            for e in top_cpu
        ],
        "top_gpu_ops": [
            {"name": e.key, "count": e.count, "gpu_ms": e.self_device_time_total / 1e3} for e in top_gpu
        ],
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    save_json(result, args.out)


if __name__ == "__main__":
    main()
