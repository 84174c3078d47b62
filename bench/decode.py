"""Answering speed: decode tokens/s from a beacon memory vs. plain decoding with the full KV cache.

    python -m bench.decode --shapes qwen2-7b --lengths 32768,131072 --ratio 8 --out docs/results/decode.json

The document is condensed (beacon) or prefilled (plain, transformers with SDPA and a DynamicCache);
then a 32-token question and `--new` greedy tokens. Decode tok/s = new tokens after the first /
their seconds. Random bf16 weights, batch 1, eager PyTorch on both sides (no CUDA graphs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .condense import timed
from .shapes import environment, official_qwen2_lm, random_model


def beacon_decode(lm, doc: torch.Tensor, question: torch.Tensor, new: int) -> dict:
    memory = lm.condense(doc)
    lm.generate(question, memory=memory, max_new_tokens=4)  # warm-up
    first, _ = timed(lambda: lm.generate(question, memory=memory, max_new_tokens=1))
    total, peak = timed(lambda: lm.generate(question, memory=memory, max_new_tokens=new))
    return {
        "kind": "beacon",
        "first_token_s": first,
        "decode_tok_s": (new - 1) / (total - first),
        "memory_entries": memory.state.size,
        "memory_gib": memory.nbytes() / 2**30,
        "peak_gib": peak,
    }


@torch.no_grad()
def plain_decode(model, doc: torch.Tensor, question: torch.Tensor, new: int) -> dict:
    from transformers import DynamicCache

    def run(n_new: int) -> None:
        cache = DynamicCache()
        out = model(input_ids=torch.cat([doc, question], 1), past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(n_new - 1):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)

    run(2)  # warm-up
    first, _ = timed(lambda: run(1))
    total, peak = timed(lambda: run(new))
    entries = doc.shape[1] + question.shape[1]
    return {
        "kind": "plain",
        "first_token_s": first,
        "decode_tok_s": (new - 1) / (total - first),
        "kv_entries": entries,
        "peak_gib": peak,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="qwen2-7b")
    p.add_argument("--lengths", default="8192,32768,131072")
    p.add_argument("--ratio", type=int, default=8)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--new", type=int, default=65)
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-plain", action="store_true")
    p.add_argument("--out", default="docs/results/decode.json")
    args = p.parse_args()
    result = {"command": " ".join(["python -m bench.decode"] + sys.argv[1:]), "env": environment(), "runs": []}
    for shape in args.shapes.split(","):
        model = random_model(shape, device=args.device)
        lm = official_qwen2_lm(model, args.window, args.ratio)
        for length in [int(x) for x in args.lengths.split(",")]:
            doc = torch.randint(0, 150_000, (1, length), device=args.device)
            question = torch.randint(0, 150_000, (1, 32), device=args.device)
            runs = [beacon_decode(lm, doc, question, args.new)]
            if not args.no_plain:
                try:
                    runs.append(plain_decode(model, doc, question, args.new))
                except torch.OutOfMemoryError as err:
                    runs.append({"kind": "plain", "error": f"OOM: {err}"[:200]})
            for run in runs:
                result["runs"].append({"shape": shape, "length": length, **run})
                print(json.dumps(result["runs"][-1]), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        del lm, model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
