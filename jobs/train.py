"""`ray job submit -- python -m jobs.train MODEL DATA --output-dir DIR --workers N [--gpu] [--set key=value ...]`

A thin entrypoint: parse arguments, build a TrainConfig, make one pipeline call, print the summary.
Any TrainConfig field can be set with --set (values are JSON, or plain strings), e.g.
--set max_steps=2000 --set beacon_ratio=[2,4,8,16,32] --set bf16=true.
"""

from __future__ import annotations

import argparse
import json

from beacon.train import TrainConfig
from pipelines.train import train_on_ray


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Train beacons on Ray Train (TorchTrainer, DDP).")
    parser.add_argument("model", help="base or beacon checkpoint (HF folder or hub id)")
    parser.add_argument("data", help="text folder or JSONL corpus")
    parser.add_argument("--output-dir", required=True, help="checkpoints and final model; reruns resume here")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (one GPU each with --gpu)")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None, help="workers use GPUs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrainConfig field")
    args = parser.parse_args(argv)
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: write KEY=VALUE, e.g. --set max_steps=500")
        settings[key] = _value(value)
    cfg = TrainConfig.from_dict({"model": args.model, "data": args.data, "output_dir": args.output_dir, **settings})
    summary = train_on_ray(cfg, num_workers=args.workers, use_gpu=args.gpu)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
