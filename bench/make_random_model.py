"""A beacon checkpoint of a real model's shape with random weights, for throughput runs.

    python -m bench.make_random_model --shape qwen2-1.5b --tokenizer models/beacon-tiny-code --out /root/m15

Weights are random (speed does not depend on them); the tokenizer is borrowed from another folder
(its ids must be < the shape's vocabulary) so that the text pipelines can run. Answers are noise.

`--trim-head` zeroes the output head's rows past the tokenizer's vocabulary (models/beacon-tiny-code
has 8,192 ids, the shapes ~152K): greedy decoding then picks only ids the tokenizer can write, so a
served answer streams text (an id past the vocabulary decodes to nothing: no content chunk, no
inter-token gap). The other rows' logits are random around 0; their max is above the zeroed rows'.
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
    p.add_argument("--trim-head", action="store_true", help="Zero the head rows past the tokenizer's vocabulary.")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    model = random_model(args.shape, device=args.device)
    if args.trim_head:
        from transformers import AutoTokenizer

        n = len(AutoTokenizer.from_pretrained(args.tokenizer))
        with torch.no_grad():
            model.get_output_embeddings().weight[n:] = 0
    lm = official_qwen2_lm(model, args.window, args.ratio)
    # written beside, then renamed: a build cut short (a device call's time limit) leaves no folder that
    # the recipes' "model already here" checks would take for a whole one
    tmp = Path(f"{args.out}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(str(tmp))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        src = Path(args.tokenizer) / name
        if src.exists():
            shutil.copy(src, tmp / name)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
