"""Stage 6b: turn the trained default-model checkpoint into the shipped folder (models/beacon-tiny-code).

Sets the inference settings (ratios 2..32 chosen per document by `adapt-N`), adds the question
format as the tokenizer's chat template, writes bf16 weights, and checks the size budget.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

import beacon

from .tasks import CHAT_TEMPLATE

MAX_BYTES = 16_000_000  # the repository budget for the default model, tokenizer included


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beacon", required=True, help="trained checkpoint (bench.repro.beacons --qa-rows)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ratio-mix", default="adapt-128", help="inference ratio choice")
    args = ap.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    lm = beacon.load(args.beacon, dtype=torch.bfloat16, beacon_ratio_mix=args.ratio_mix, beacon_parallel_window=1)
    lm.tokenizer.chat_template = CHAT_TEMPLATE
    lm.save_pretrained(str(out))
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    total = sum(files.values())
    if total > MAX_BYTES:
        raise SystemExit(f"{out} is {total / 1e6:.1f} MB > 16 MB: use a smaller preset")
    info = {"files": files, "total_bytes": total, "params": sum(p.numel() for p in lm.model.parameters())}
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
