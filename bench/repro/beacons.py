"""Stage 4: train the beacons of a pretrained base with `beacon.train` (the library recipe).

    python -m bench.repro.beacons --base WORK/base --corpus WORK/corpus --out WORK/beacon --time-budget 200
    python -m bench.repro.beacons ... --qa-rows 8000      # the default model: code + synthetic lookups

Code sequences are packed from train.jsonl (neighbouring files of one package) to lengths of
`--min-length`..`--max-length` tokens (8-16 windows by default), ratios drawn per window. With
`--qa-rows N`, N lookup samples (qa style, labels on the answer only, lengths up to
--max-length) are mixed in: the official fine-tuning stage in miniature.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from beacon.train import TrainConfig, train


def write_qa_rows(base: Path, corpus: Path, path: Path, n: int, min_len: int, max_len: int, seed: int) -> None:
    """N pre-tokenized lookup samples as JSONL rows {"input_ids", "labels"} (loss on the answer)."""
    from transformers import AutoTokenizer

    from .tasks import line_ends, make_sample

    tok = AutoTokenizer.from_pretrained(base)
    data = np.memmap(corpus / "train.bin", dtype=np.uint16, mode="r")
    ends = line_ends(tok)
    rng = np.random.default_rng([seed, 11])
    with path.open("w") as f:
        for i in range(n):
            length = int(rng.integers(min_len, max_len - 16))
            s = make_sample(tok, data, ends, rng, length=length, kind=("kv", "passkey")[i % 2])
            ids = s.prompt + s.answer_ids
            labels = [-100] * len(s.prompt) + s.answer_ids
            f.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")


def write_code_rows(corpus: Path, path: Path, max_chars: int) -> None:
    """The first `max_chars` characters of train.jsonl as text rows (package order kept)."""
    n = 0
    with (corpus / "train.jsonl").open() as src, path.open("w") as f:
        for line in src:
            text = json.loads(line)["text"]
            f.write(json.dumps({"text": text}) + "\n")
            n += len(text)
            if n >= max_chars:
                break


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="pretrained base (HF folder with tokenizer)")
    ap.add_argument("--corpus", required=True, help="output folder of bench.repro.corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--ratios", default="2,4,8,16,32")
    ap.add_argument("--min-length", type=int, default=1024)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--train-mb", type=float, default=100, help="characters of code to read (millions)")
    ap.add_argument("--qa-rows", type=int, default=0, help="synthetic lookup samples to mix in")
    ap.add_argument("--qa-min-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--time-budget", type=float, default=200)
    ap.add_argument("--parallel-window", type=int, default=1)
    ap.add_argument("--attn-mode", default="dense", help="dense: no compile step (flex compiles on CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    base, corpus, out = Path(args.base), Path(args.corpus), Path(args.out)
    data_dir = out.with_name(out.name + "-data")
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not (data_dir / "done").exists():
        write_code_rows(corpus, data_dir / "code.jsonl", int(args.train_mb * 1e6))
        if args.qa_rows:
            write_qa_rows(
                base, corpus, data_dir / "qa.jsonl", args.qa_rows, args.qa_min_length, args.max_length, args.seed
            )
        (data_dir / "done").write_text("")
    cfg = TrainConfig(
        model=str(base),
        data=str(data_dir),
        output_dir=str(out),
        beacon_window=args.window,
        beacon_stride=args.window,
        beacon_ratio=[int(r) for r in args.ratios.split(",")],
        beacon_ratio_mix="step-random",
        beacon_param=["q", "k", "v"],
        beacon_attn="full-coverage",
        beacon_pos="interleave",
        beacon_parallel_window=args.parallel_window,
        attn_mode=args.attn_mode,
        min_length=args.min_length,
        max_length=args.max_length,
        pack=True,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        lr=args.lr,
        warmup_steps=max(args.max_steps // 50, 1),
        schedule="cosine",
        min_lr_ratio=0.1,
        time_budget_s=args.time_budget,
        schedule_by_time=True,
        log_every=10,
        save_every=100,
        seed=args.seed,
        progress=sys.stderr.isatty(),  # in the background the JSONL log tells progress
    )
    summary = train(cfg)
    summary["data_seconds"] = round(time.time() - t0 - summary["elapsed_s"], 1)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
