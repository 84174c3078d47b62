"""`beacon train` — train the beacon parameters of a frozen model (a thin shim over beacon.train)."""

from __future__ import annotations

import json

import click

from .pipeline_options import settings_option


def _ints(_ctx, _param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.replace(",", " ").split()]
    except ValueError as err:
        raise click.BadParameter(f"{value!r}: give integers separated by commas, e.g. 2,4,8,16,32") from err


def _names(_ctx, _param, value: str | None) -> list[str] | None:
    return None if value is None else [v for v in value.replace(",", " ").split() if v]


@click.command("train")
@click.argument("model")
@click.argument("data")
@click.option("-o", "--output-dir", default="runs/beacon", show_default=True, help="Checkpoints, log, final model.")
@click.option("--tokenizer", default=None, help="Tokenizer folder, if MODEL has none.")
@click.option("--window", "beacon_window", type=int, default=None, help="beacon_window (default: the model's).")
@click.option("--stride", "beacon_stride", type=int, default=None, help="beacon_stride (default: the model's).")
@click.option("--ratios", "beacon_ratio", callback=_ints, default=None, help="Candidate ratios, e.g. 2,4,8,16,32.")
@click.option("--ratio-mix", "beacon_ratio_mix", default="step-random", show_default=True, help="How ratios are drawn.")
@click.option("--param", "beacon_param", callback=_names, default=None, help="Beacon projections, e.g. q,k,v.")
@click.option("--attn", "beacon_attn", default=None, help="segmentation | step-expansion | full-coverage.")
@click.option("--pos", "beacon_pos", default=None, help="append | interleave.")
@click.option("--sink", "beacon_sink_size", type=int, default=None, help="beacon_sink_size.")
@click.option("--parallel-window", "beacon_parallel_window", type=int, default=None, help="Windows per pass.")
@click.option("--min-length", type=int, default=1024, show_default=True, help="Shorter documents are dropped/joined.")
@click.option("--max-length", type=int, default=8192, show_default=True, help="Longer documents are cut.")
@click.option("--pack/--no-pack", default=False, show_default=True, help="Join short documents into sequences.")
@click.option("--max-train-tokens", type=int, default=None, help="Read at most this many corpus tokens.")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Sequences per micro-batch (per GPU).")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per optimizer step.")
@click.option("--steps", "max_steps", type=int, default=1000, show_default=True, help="Optimizer steps.")
@click.option("--lr", type=float, default=5e-5, show_default=True, help="Peak learning rate.")
@click.option("--min-lr-ratio", type=float, default=0.0, show_default=True, help="Final lr / peak lr.")
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default="linear", show_default=True)
@click.option("--warmup-steps", type=int, default=0, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Max grad norm (0 = off).")
@click.option("--time-budget", "time_budget_s", type=float, default=None, help="Stop after this many seconds.")
@click.option("--schedule-by-time", is_flag=True, help="Decay the lr over the time budget (ends on time).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--dtype", default="auto", show_default=True, help="Base weights: auto | bf16 | fp32.")
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute layers in backward (less memory).")
@click.option("--attn-mode", default="auto", show_default=True, help="auto | causal | split | dense | flex.")
@click.option("--seed", type=int, default=0, show_default=True, help="Data order and ratio draws.")
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option("--save-every", type=int, default=200, show_default=True, help="Steps per checkpoint (0 = end only).")
@click.option("--save-total-limit", type=int, default=2, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--workers", type=int, default=0, help="Train on Ray Train with this many workers (0 = this process).")
@click.option("--gpu/--no-gpu", "use_gpu", default=None, help="Ray workers use GPUs (default: if CUDA is here).")
@settings_option("TrainConfig")
def train(model: str, data: str, workers: int, use_gpu: bool | None, settings: dict, **options) -> None:
    """Train the beacons of MODEL (HF folder or hub id) on DATA (text folder or JSONL); base stays frozen.

    Rerunning with the same --output-dir resumes from its newest checkpoint.
    """
    from beacon.train import TrainConfig
    from beacon.train import train as run

    try:
        cfg = TrainConfig.from_dict({"model": model, "data": data, **options, **settings})
        if workers > 0:
            from pipelines.train import train_on_ray

            summary = train_on_ray(cfg, num_workers=workers, use_gpu=use_gpu)
        else:
            summary = run(cfg)
    except (OSError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps(summary, indent=2))
