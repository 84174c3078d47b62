"""Answering many requests over different memories at once: aggregate decode tokens/s of G decoders
(one memory each, --rows requests each, as G groups of a `beacon serve` replica) stepped one after
another ("apart": one pass per group) vs. in one pass (decode.step_together, what a replica does),
and, with --lanes, in one pass over an arena of lanes (decode_pool.LaneArena: `beacon serve --lanes`).

    python -m bench.decode_together --shape qwen2-7b --length 32768 --groups 1,4,16 --rows 1,4 \\
        --out docs/results/decode_together_7b.json        # 16 x 4 = 64 requests over 16 memories
    python -m bench.decode_together --shape qwen2-0.5b --device cpu --dtype fp32 --length 2048 --groups 1,2,4,8 \\
        --new 16 --out docs/results/decode_together_cpu.json

Random weights (bench.shapes, beacons as the official Qwen-2 checkpoint), G documents of --length
random tokens condensed at --ratio, a 32-token question read by each decoder, then --new tokens per
decoder, greedy. For each way, G and rows: the first step (cold: on a GPU, "apart" captures its
CUDA graphs there) and the median step after it (warm; a step = one token for every row), aggregate
tokens/s = G x rows / warm step. Decoders in "auto" mode (CUDA graphs on a GPU, each decoder alone;
"lanes": the arena's one step captured as a CUDA graph, on its first step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from beacon import Memory
from beacon.decode import step_together

from .shapes import environment, official_qwen2_lm, random_model, save_json


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rows_of(memory, b: int):
    """`memory` read as b identical rows (expanded views), as a replica's group of b requests reads it."""
    if b == 1:
        return memory.share()
    grow = lambda ts: None if ts is None else [None if t is None else t.expand(b, *t.shape[1:]) for t in ts]  # noqa: E731
    return Memory(grow(memory.keys), grow(memory.values), memory.state, grow(memory.rot_keys))


def steps(
    lm, memories, rows: int, question: torch.Tensor, new: int, together: bool, device: str, lanes: bool = False
) -> list[float]:
    """Seconds of each of `new` steps of one decoder per memory (`rows` rows each), after each read `question`."""
    decs = [lm.decoder(rows_of(m, rows), lanes=lanes) for m in memories]
    try:
        last = [d.read(question.expand(rows, -1)).argmax(-1, keepdim=True) for d in decs]
        times = []
        for _ in range(new):
            _sync(device)
            t0 = time.perf_counter()
            if together:
                outs = step_together(decs, last)
                bad = [o for o in outs if isinstance(o, Exception)]
                if bad:
                    raise bad[0]
            else:
                outs = [d.step(t) for d, t in zip(decs, last, strict=True)]
            last = [o.argmax(-1, keepdim=True) for o in outs]
            _sync(device)
            times.append(time.perf_counter() - t0)
        return times
    finally:
        for d in decs:
            d.close()


def lane_steps(lm, memories, question: torch.Tensor, new: int, device: str, window: int) -> list[float]:
    """`steps` together with every decoder in a lane of one arena (allocated first, as a replica does)."""
    from beacon.decode_pool import LANE_SCRATCH

    need = max(m.state.size for m in memories) + 2 * window + 64 + question.shape[1]
    lane_cap = -(-(need + LANE_SCRATCH) // 256) * 256
    lm.decode_buffers.enable_lanes(lm.parts, len(memories), lane_cap, lm.dtype, lm.device)
    try:
        times = steps(lm, memories, 1, question, new, True, device, lanes=True)
        if lm.decode_buffers.lanes.busy:
            raise RuntimeError("a decoder kept its lane after closing")
        return times
    finally:
        lm.decode_buffers.disable_lanes()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2-7b")
    p.add_argument("--length", type=int, default=32768, help="tokens of each document")
    p.add_argument("--groups", default="1,4,16", help="decoders (documents) stepped at once")
    p.add_argument("--rows", default="1", help="requests per decoder (rows reading one memory)")
    p.add_argument("--ratio", type=int, default=8)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--new", type=int, default=48, help="tokens per decoder")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--lanes", action="store_true", help="also step one-row decoders as lanes of one arena")
    p.add_argument("--out", default="docs/results/decode_together.json")
    args = p.parse_args()
    if args.new < 2:
        p.error("--new must be >= 2: the first step is reported apart from the warm ones")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    groups = [int(g) for g in args.groups.split(",")]
    result = {"command": " ".join(["python -m bench.decode_together"] + sys.argv[1:]), "env": environment(),
              "runs": []}  # fmt: skip
    model = random_model(args.shape, device=args.device, dtype=dtype)
    lm = official_qwen2_lm(model, args.window, args.ratio)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    question = torch.randint(0, vocab, (1, 32), generator=gen).to(args.device)
    memories = []
    for _ in range(max(groups)):
        memories.append(lm.condense(torch.randint(0, vocab, (1, args.length), generator=gen).to(args.device)))
    for rows in [int(r) for r in args.rows.split(",")]:
        for g in groups:
            ways = ["apart", "together"] + (["lanes"] if args.lanes and rows == 1 else [])
            for way in ways:
                if way == "lanes":
                    times = lane_steps(lm, memories[:g], question, args.new, args.device, args.window)
                else:
                    times = steps(lm, memories[:g], rows, question, args.new, way == "together", args.device)
                warm = statistics.median(times[1:])
                run = {"shape": args.shape, "length": args.length, "groups": g, "rows": rows,
                       "way": way, "first_step_s": times[0], "warm_step_s": warm,
                       "tok_s": g * rows / warm, "memory_entries": memories[0].state.size}  # fmt: skip
                result["runs"].append(run)
                print(run, flush=True)
                save_json(result, args.out)


if __name__ == "__main__":
    main()
