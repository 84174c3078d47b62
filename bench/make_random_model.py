"""A beacon checkpoint of a real model's shape with random weights, for throughput runs.

    python -m bench.make_random_model --shape qwen2-1.5b --tokenizer models/beacon-tiny-code --out /root/m15

Weights are random (speed does not depend on them); the tokenizer is borrowed from another folder
(its ids must be < the shape's vocabulary) so that the text pipelines can run. Answers are noise.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from .shapes import official_qwen2_lm, random_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2-1.5b")
    p.add_argument("--tokenizer", default="models/beacon-tiny-code")
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--ratio", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    lm = official_qwen2_lm(random_model(args.shape, device=args.device), args.window, args.ratio)
    lm.save_pretrained(args.out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        src = Path(args.tokenizer) / name
        if src.exists():
            shutil.copy(src, Path(args.out) / name)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
