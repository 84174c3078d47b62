"""What a fresh Condenser pays before its first result: model load, first call (compiles), next call.

    python -m bench.make_random_model --shape qwen2-1.5b --out /root/m15
    python -m bench.startup --model /root/m15 --compile 1   # run twice: cold, then warm compile caches
    python -m bench.startup --model /root/m15 --compile 0

One process = one actor's life: `beacon.load` (bf16, CUDA), then `condense_many` of the same
batch twice (8 documents of --tokens tokens, as the ingestion bench's Condenser gets them).

--lengths L1,L2,...: instead, one document of each length, each read twice — its first call (a
length no earlier call had) against the second (steady) — after the Condenser's warm-up
(beacon.warmup.warm_up) with --warmup 1. `graphs` counts what each call compiled. Cold and warm
compile caches are two processes over one cache folder (bench/recipes/startup.sh):

    export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
    python -m bench.startup --model /root/m15 --lengths 8192,32768,131072,50001 --warmup 1 --label cold
    python -m bench.startup --model /root/m15 --lengths 8192,32768,131072,50001 --warmup 1 --label warm

--compile-cache FILE loads torch's cache artefacts from FILE first and writes them after the
warm-up (beacon.warmup.load_cache / save_cache). Prints one JSON line; --out appends it to a
JSON-lines file.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

import beacon
from beacon import warmup

from .shapes import environment


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> tuple[float, int]:
    """(seconds, graphs compiled) of one call of `fn`, the device synchronised on both sides."""
    graphs = counters["stats"]["unique_graphs"]
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t, counters["stats"]["unique_graphs"] - graphs


def _batch_calls(lm, args) -> dict:
    """condense_many of one batch, twice (the first call compiles)."""
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, lm.parts.vocab_size, (args.tokens,), generator=g) for _ in range(args.docs)]
    calls = [_timed(lambda: lm.condense_many(docs, batch_size=args.docs))[0] for _ in range(2)]
    tokens = args.docs * args.tokens
    return {
        "first_call_s": calls[0],
        "second_call_s": calls[1],
        "tokens_per_call": tokens,
        "steady_tok_s": tokens / calls[1],
    }


def _length_calls(lm, args) -> dict:
    """Per length: one document read twice; first / steady is what a new length costs."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in [int(x) for x in args.lengths.split(",")]:
        ids = torch.randint(0, lm.parts.vocab_size, (n,), generator=g)
        read = functools.partial(lm.condense, ids)
        (first, first_graphs), (steady, steady_graphs) = _timed(read), _timed(read)
        rows.append({"length": n, "first_s": first, "steady_s": steady, "first_over_steady": first / steady,
                     "graphs": first_graphs, "steady_graphs": steady_graphs, "steady_tok_s": n / steady})  # fmt: skip
    return {"lengths": rows, "worst_first_over_steady": max(r["first_over_steady"] for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--compile", type=int, default=1, help="1: compile the decoder layer, 0: eager")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--tokens", type=int, default=18000)
    p.add_argument("--lengths", default="", help="comma-separated: one document per length, read twice")
    p.add_argument("--warmup", type=int, default=0, help="1: warm the compiled layer first (beacon.warmup)")
    p.add_argument("--batch-sizes", default="1", help="batch sizes the warm-up covers (2 covers any > 1)")
    p.add_argument("--compile-cache", default="", help="a file of torch cache artefacts: read first, written after")
    p.add_argument("--label", default="", help="recorded as is (e.g. cold / warm)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    t0 = time.perf_counter()
    lm = beacon.load(args.model, device=args.device, dtype=args.dtype, tokenizer=False)
    _sync()
    load_s = time.perf_counter() - t0
    lm.compile_layers = bool(args.compile)
    cache_loaded = bool(args.compile_cache) and warmup.load_cache(args.compile_cache)
    warmup_s, warmup_graphs = 0.0, 0
    if args.warmup:
        sizes = tuple(int(b) for b in args.batch_sizes.split(","))
        warmup_s, warmup_graphs = _timed(lambda: warmup.warm_up(lm, batch_sizes=sizes))
    if args.compile_cache:
        warmup.save_cache(args.compile_cache)
    result = {
        "command": " ".join(["python -m bench.startup"] + sys.argv[1:]),
        "env": environment(),
        "label": args.label,
        "compile": bool(args.compile),
        "caches": {k: os.environ.get(k, "") for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")},
        "compile_cache_loaded": cache_loaded,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "warmup_graphs": warmup_graphs,
        **(_length_calls(lm, args) if args.lengths else _batch_calls(lm, args)),
    }
    print(json.dumps(result), flush=True)
    if args.out:
        with open(Path(args.out), "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
