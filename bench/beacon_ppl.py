"""Perplexity of a continuation under beaconed auto-regression only, at given lengths and ratios — the
beacon rows of `beacon eval --parts ppl` (same text stream, same seeded spans, same 256-token
continuation) without its baselines, for a quick look at a checkpoint on a CPU.

    python -m bench.beacon_ppl --model M --text DIR --lengths 16384,32768 --ratios 2 --out R.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import numpy as np
import torch

import beacon
from pipelines.eval_tasks import random_slice, read_texts, token_stream
from pipelines.evaluate import SALT_PPL, continuation_nll_beacon


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True, help="a text file or folder (as beacon eval --text)")
    ap.add_argument("--lengths", default="4096", help="tokens of context, comma-separated")
    ap.add_argument("--ratios", default="2,8,32", help="fixed ratios, comma-separated")
    ap.add_argument("--continuation", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    lm = beacon.load(args.model, device=args.device, dtype=args.dtype)
    stream = token_stream(lm.tokenizer, read_texts(args.text))
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        rng = np.random.default_rng([args.seed, SALT_PPL, length])  # beacon eval's span for this length
        offset, span = random_slice(stream, rng, length + args.continuation)
        ids = torch.from_numpy(span[None]).long().to(lm.device)
        for ratio in (int(x) for x in args.ratios.split(",")):
            start = time.perf_counter()
            nll = continuation_nll_beacon(lm, ids, args.continuation, ratio)
            row = {"length": length, "ratio": ratio, "offset": int(offset), "ppl": round(float(nll.mean().exp()), 2),
                   "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python -m bench.beacon_ppl " + shlex.join(argv or sys.argv[1:]),
                       "model": args.model, "text": args.text, "stream_tokens": int(len(stream)), "rows": rows}, f,
                      indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
