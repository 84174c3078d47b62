"""What a fresh Condenser pays before its first result: model load, first call (compiles), next call.

    python -m bench.make_random_model --shape qwen2-1.5b --out /root/m15
    python -m bench.startup --model /root/m15 --compile 1   # run twice: cold, then warm compile caches
    python -m bench.startup --model /root/m15 --compile 0

One process = one actor's life: `beacon.load` (bf16, CUDA), then `condense_many` of the same
batch twice (8 documents of --tokens tokens, as the ingestion bench's Condenser gets them).
Prints one JSON line; --out appends it to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import beacon

from .shapes import environment


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--compile", type=int, default=1, help="1: compile the decoder layer, 0: eager")
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--tokens", type=int, default=18000)
    p.add_argument("--out", default="")
    args = p.parse_args()
    t0 = time.perf_counter()
    lm = beacon.load(args.model, device="cuda", dtype="bf16", tokenizer=False)
    _sync()
    load_s = time.perf_counter() - t0
    lm.compile_layers = bool(args.compile)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, lm.parts.vocab_size, (args.tokens,), generator=g) for _ in range(args.docs)]
    calls = []
    for _ in range(2):
        _sync()
        t = time.perf_counter()
        lm.condense_many(docs, batch_size=args.docs)
        _sync()
        calls.append(time.perf_counter() - t)
    tokens = args.docs * args.tokens
    result = {
        "command": " ".join(["python -m bench.startup"] + sys.argv[1:]),
        "env": environment(),
        "compile": bool(args.compile),
        "load_s": load_s,
        "first_call_s": calls[0],
        "second_call_s": calls[1],
        "tokens_per_call": tokens,
        "steady_tok_s": tokens / calls[1],
    }
    print(json.dumps(result), flush=True)
    if args.out:
        with open(Path(args.out), "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
