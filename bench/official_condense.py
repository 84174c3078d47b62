"""Time the official Activation Beacon implementation on the same synthetic setting as bench.condense.

Runs in its own process with transformers 4.44 first on PYTHONPATH (bench.condense does that).
The official src/ folder is imported as a package without its __init__.py; none of its code is
part of this repository.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import types
from pathlib import Path

import torch

from .shapes import COMMON, SHAPES
from .timing import median_time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--src", required=True)
    p.add_argument("--shape", required=True)
    p.add_argument("--lengths", required=True)
    p.add_argument("--ratios", required=True)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--pos", default="interleave")
    p.add_argument("--attn", default="full-coverage")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    pkg = types.ModuleType("absrc")
    pkg.__path__ = [args.src]
    sys.modules["absrc"] = pkg
    conf = importlib.import_module("absrc.qwen2.configuration_qwen2")
    modeling = importlib.import_module("absrc.qwen2.modeling_qwen2")
    beacon_mod = importlib.import_module("absrc.modeling_beacon")
    import transformers

    ratios = [int(x) for x in args.ratios.split(",")]
    config = conf.Qwen2Config(
        **COMMON,
        **SHAPES[args.shape],
        beacon_window=args.window,
        beacon_stride=args.window,
        beacon_attn=args.attn,
        beacon_ratio=[ratios[0]],
        beacon_ratio_mix="step-random",
        beacon_param=["q", "k", "v"],
        beacon_pos=args.pos,
        beacon_sink_size=0,
        beacon_attend_prev=True,
    )
    config._attn_implementation = "sdpa"
    config.torch_dtype = torch.bfloat16  # its Memory reads the dtype from the config
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = modeling.Qwen2ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.eval()
    model.memory = beacon_mod.Memory(model_config=config, k_seq_dim=2, v_seq_dim=2)

    runs = []
    for ratio in ratios:
        model.memory.set(verbose=False, beacon_ratio=[ratio])
        for length in [int(x) for x in args.lengths.split(",")]:
            ids = torch.randint(0, 150_000, (1, length), device="cuda")
            model.memory.reset()
            with torch.no_grad():
                model(input_ids=ids[:, : 2 * args.window + 100])  # warm-up
            model.memory.reset()
            torch.cuda.reset_peak_memory_stats()

            def once(ids=ids) -> float:
                model.memory.reset()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.no_grad():
                    model(input_ids=ids)
                torch.cuda.synchronize()
                return time.perf_counter() - t0

            seconds, times = median_time(once)
            runs.append(
                {
                    "kind": "official",
                    "length": length,
                    "ratio": ratio,
                    "seconds": seconds,
                    "times": times,
                    "tok_s": length / seconds,
                    "first_tok_s": length / times[0],
                    "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                    "memory_sizes": list(model.memory.get_memory_size()),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
            model.memory.reset()
    env = {"torch": torch.__version__, "transformers": transformers.__version__}
    Path(args.out).write_text(json.dumps({"env": env, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
