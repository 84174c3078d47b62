"""A `beacon serve` replica's scheduler under load, without HTTP: the Batcher (beacon_actors.batcher)
answering --clients concurrent clients (each sends its next request when its last one ended) over
--docs memories, beside one client — aggregate tokens/s, time to first token, errors with what
they said, the Batcher's counters, and any shared pass that fell back to steps alone.

    python -m bench.batcher_load --shape qwen2-7b --docs 16 --doc-tokens 32768 --clients 64 --requests 256 \\
        --out docs/results/batcher_load_7b.json
    python -m bench.batcher_load --shape qwen2-0.5b --device cpu --dtype fp32 --docs 4 --doc-tokens 2048 \\
        --clients 8 --requests 32 --max-tokens 16 --window 1024 --out /tmp/batcher_load_cpu.json

Random weights (bench.shapes, beacons as the official Qwen-2 checkpoint, one --ratio), documents of
random tokens condensed once and held by an in-memory store (the snapshot store's `get`: what a
replica's cache holds after its first requests), questions of 20-40 random tokens, greedy answers of
exactly --max-tokens tokens (no stop token). The Batcher runs as `beacon serve` configures it
(--max-running, --max-batch, --lanes).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time

import torch

from beacon import Memory

from .shapes import environment, official_qwen2_lm, random_model, save_json


class HeldMemories:
    """The snapshot store's `get` over memories already condensed (one document per request)."""

    def __init__(self, memories: dict[str, Memory]):
        self.memories = memories

    def get(self, ids: list[str], fingerprint=None, device=None, background: bool = False) -> Memory:
        if len(ids) != 1:
            raise ValueError(f"one document per request here, got {ids}")
        return self.memories[ids[0]].share()


def run_load(batcher, doc_ids: list[str], clients: int, requests: int, max_tokens: int, vocab: int) -> dict:
    """`clients` threads sending `requests` in all, back to back; their numbers."""
    from beacon_actors.batcher import Job, Sampling

    lock, counter, results = threading.Lock(), [0], []

    def client(k: int) -> None:
        gen = torch.Generator().manual_seed(k)
        while True:
            with lock:
                if counter[0] >= requests:
                    return
                i = counter[0]
                counter[0] += 1
            n = int(torch.randint(20, 41, (1,), generator=gen))
            prompt = torch.randint(0, vocab, (n,), generator=gen).tolist()
            done, out = threading.Event(), {"tokens": 0, "first": None, "error": None}
            start = time.perf_counter()

            def emit(kind: str, value, out=out, done=done, start=start) -> None:
                if kind == "token":
                    out["tokens"] += 1
                    if out["first"] is None:
                        out["first"] = time.perf_counter() - start
                elif kind == "error":
                    out["error"] = f"{type(value).__name__}: {value}"
                    done.set()
                elif kind == "end":
                    done.set()

            batcher.submit(Job((doc_ids[i % len(doc_ids)],), prompt, Sampling(max_tokens=max_tokens), emit))
            done.wait()
            out["total_s"] = time.perf_counter() - start
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["error"] is None]
    ttft = sorted(r["first"] for r in ok if r["first"] is not None)
    return {
        "clients": clients, "requests": len(results), "ok": len(ok), "wall_s": wall,
        "errors": sorted({r["error"] for r in results if r["error"]})[:5],
        "n_errors": len(results) - len(ok),
        "completion_tokens": sum(r["tokens"] for r in ok),
        "aggregate_tok_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50_s": statistics.median(ttft) if ttft else None,
        "ttft_max_s": ttft[-1] if ttft else None,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2-7b")
    p.add_argument("--docs", type=int, default=16)
    p.add_argument("--doc-tokens", type=int, default=32768)
    p.add_argument("--clients", default="64", help="concurrent clients, comma-separated runs (1 always runs first)")
    p.add_argument("--requests", type=int, default=256, help="requests per run (the single client: a sixteenth)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-running", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--ratio", type=int, default=8)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--lanes", type=int, default=0, help="one-row answers in lanes of one arena (beacon serve --lanes)")
    p.add_argument("--lane-slots", type=int, default=0, help="slots per lane (0: the memories' entries + room)")
    p.add_argument("--out", default="docs/results/batcher_load.json")
    args = p.parse_args()
    from beacon_actors.batcher import Batcher

    fallbacks: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            fallbacks.append(record.getMessage())

    logging.getLogger("beacon.decode").addHandler(Keep(level=logging.WARNING))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = random_model(args.shape, device=args.device, dtype=dtype)
    lm = official_qwen2_lm(model, args.window, args.ratio)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    memories = {f"doc{k}": lm.condense(torch.randint(0, vocab, (1, args.doc_tokens), generator=gen).to(args.device))
                for k in range(args.docs)}  # fmt: skip
    result = {"command": " ".join(["python -m bench.batcher_load"] + sys.argv[1:]), "env": environment(),
              "memory_entries": next(iter(memories.values())).state.size, "lanes": args.lanes, "runs": []}  # fmt: skip
    entries = next(iter(memories.values())).state.size
    lane_slots = args.lane_slots or -(-(entries + 2 * args.window + 64 + 64) // 256) * 256  # + question, scratch
    batcher = Batcher(lm, HeldMemories(memories), stops=[], cache_bytes=64 << 30, max_batch=args.max_batch,
                      max_running=args.max_running, max_waiting=max(64, args.max_running), lanes=args.lanes,
                      lane_slots=lane_slots)  # fmt: skip
    try:
        ids = list(memories)
        run_load(batcher, ids, 1, 4, args.max_tokens, vocab)  # untimed: CUDA graphs captured, memories cached
        for clients in [1] + [int(c) for c in args.clients.split(",") if int(c) != 1]:
            requests = max(4, args.requests // 16) if clients == 1 else args.requests
            before = dict(batcher.stats)
            run = run_load(batcher, ids, clients, requests, args.max_tokens, vocab)
            run["batcher"] = {k: v if k.startswith("max_") else v - before.get(k, 0)
                              for k, v in batcher.stats.items()}  # fmt: skip
            run["shared_pass_fallbacks"] = list(fallbacks[:3])
            run["n_shared_pass_fallbacks"] = len(fallbacks)
            fallbacks.clear()
            if args.device.startswith("cuda"):
                run["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["runs"].append(run)
            print(run, flush=True)
            save_json(result, args.out)
        one, rest = result["runs"][0], result["runs"][1:]
        for run in rest:
            run["x_one_client"] = run["aggregate_tok_s"] / one["aggregate_tok_s"]
        save_json(result, args.out)
    finally:
        batcher.close()


if __name__ == "__main__":
    main()
