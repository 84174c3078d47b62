"""Answering speed: decode tokens/s from a beacon memory vs. plain decoding with the full KV cache.

    python -m bench.decode --shapes qwen2-7b --lengths 32768,131072 --ratio 8 --out docs/results/decode.json

The document is condensed (beacon) or prefilled (plain); then a 32-token question and `--new`
greedy tokens. Decode tok/s = new tokens after the first / their seconds. Random bf16 weights,
batch 1. Beacon, each `BeaconLM.decode_mode`: "eager" (the general forward per token), "static"
(decode.StaticDecoder's buffers, no graphs), "auto" (the same, replayed as CUDA graphs),
"compiled" (the step compiled, then graphed).
Plain: transformers with SDPA and a DynamicCache, eager; and at --compiled-lengths,
`generate(cache_implementation="static")`, which transformers compiles into CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .condense import timed
from .shapes import environment, official_qwen2_lm, random_model, save_json


def beacon_decode(lm, memory, question: torch.Tensor, new: int, mode: str) -> dict:
    lm.decode_mode = mode
    # warm-up: captures (and for "compiled" compiles) the one-row and, past a beacon, two-row steps
    lm.generate(question, memory=memory, max_new_tokens=3 * lm.config.beacon_ratio[0] + 4)
    first, _ = timed(lambda: lm.generate(question, memory=memory, max_new_tokens=1))
    total, peak = timed(lambda: lm.generate(question, memory=memory, max_new_tokens=new))
    lm.decode_mode = "auto"
    return {
        "kind": f"beacon-{mode}",
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
        "kind": "plain-eager",
        "first_token_s": first,
        "decode_tok_s": (new - 1) / (total - first),
        "kv_entries": entries,
        "peak_gib": peak,
    }


@torch.no_grad()
def plain_compiled_decode(model, doc: torch.Tensor, question: torch.Tensor, new: int) -> dict:
    """transformers' own fast path: a static KV cache, the decode step compiled (CUDA graphs)."""
    ids = torch.cat([doc, question], 1)

    def run(n_new: int) -> None:
        model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                       cache_implementation="static", pad_token_id=0)  # fmt: skip

    run(4)  # compiles
    run(4)
    first, _ = timed(lambda: run(1))
    total, peak = timed(lambda: run(new))
    return {
        "kind": "plain-static-compiled",
        "first_token_s": first,
        "decode_tok_s": (new - 1) / (total - first),
        "kv_entries": ids.shape[1],
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
    p.add_argument("--modes", default="eager,static,auto", help="beacon decode modes to time")
    p.add_argument("--no-plain", action="store_true")
    p.add_argument("--compiled-lengths", default="32768", help="lengths for the compiled plain baseline")
    p.add_argument("--out", default="docs/results/decode.json")
    args = p.parse_args()
    result = {"command": " ".join(["python -m bench.decode"] + sys.argv[1:]), "env": environment(), "runs": []}
    for shape in args.shapes.split(","):
        model = random_model(shape, device=args.device)
        lm = official_qwen2_lm(model, args.window, args.ratio)
        for length in [int(x) for x in args.lengths.split(",")]:
            doc = torch.randint(0, 150_000, (1, length), device=args.device)
            question = torch.randint(0, 150_000, (1, 32), device=args.device)
            memory = lm.condense(doc)
            runs = [beacon_decode(lm, memory, question, args.new, mode) for mode in args.modes.split(",")]
            runs[-1]["memory_tokens"] = memory.n_tokens
            del memory
            compiled = [int(x) for x in args.compiled_lengths.split(",") if x]
            baselines = [] if args.no_plain else [plain_decode]
            baselines += [plain_compiled_decode] if length in compiled and not args.no_plain else []
            for fn in baselines:
                try:
                    runs.append(fn(model, doc, question, args.new))
                except Exception as err:  # noqa: BLE001 — a baseline that fails is reported, not fatal
                    runs.append({"kind": fn.__name__, "error": f"{type(err).__name__}: {err}"[:300]})
            for run in runs:
                result["runs"].append({"shape": shape, "length": length, **run})
                print(json.dumps(result["runs"][-1]), flush=True)
            save_json(result, args.out)
        del lm, model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
