"""Batched condensing: several documents per forward pass in one process (windows in lockstep).

    python -m bench.batched --shape qwen2-1.5b --docs 16 --min-len 4096 --max-len 12288 --batch 1,2,4,8

Documents of uneven length (uniform in [min, max]); tokens/s = all their tokens / wall seconds of
lm.condense_many(documents, batch_size=B). Exactly the memories of condensing one by one.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .condense import timed
from .shapes import environment, official_qwen2_lm, random_model, save_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2-1.5b")
    p.add_argument("--docs", type=int, default=16)
    p.add_argument("--min-len", type=int, default=4096)
    p.add_argument("--max-len", type=int, default=12288)
    p.add_argument("--batch", default="1,2,4,8")
    p.add_argument("--ratio", type=int, default=8)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="docs/results/batched.json")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.docs,), generator=g).tolist()
    docs = [torch.randint(0, 150_000, (1, n), generator=g).to(args.device) for n in lengths]
    model = random_model(args.shape, device=args.device)
    lm = official_qwen2_lm(model, args.window, args.ratio)
    result = {
        "command": " ".join(["python -m bench.batched"] + sys.argv[1:]),
        "env": environment(),
        "lengths": lengths,
        "runs": [],
    }
    for batch in [int(x) for x in args.batch.split(",")]:
        lm.condense_many(docs, batch_size=batch)  # warm-up: FlexAttention compiles for new shapes here
        times = [timed(lambda b=batch: lm.condense_many(docs, batch_size=b)) for _ in range(args.repeats)]
        seconds, peak = sorted(times)[len(times) // 2]  # median
        run = {
            "batch": batch,
            "seconds": seconds,
            "all_seconds": [t for t, _ in times],
            "tok_s": sum(lengths) / seconds,
            "peak_gib": peak,
            "windows_per_pass": lm.windows_per_pass(),
        }
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        save_json(result, args.out)


if __name__ == "__main__":
    main()
