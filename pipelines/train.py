"""Beacon training on Ray Train: one TorchTrainer, every worker runs `beacon.train.train`.

Ray starts the workers and the process group (NCCL on GPUs, gloo on CPUs); each worker loads the
model, reads its share of the micro-batches and DDP averages the beacon gradients; rank 0 writes
checkpoints in the official layout to `output_dir` (a path every worker can reach: one node, or
shared storage). Rerunning with the same output_dir resumes, as a single-process run does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from beacon.train import SUMMARY_FILE, TrainConfig

from .cluster import ensure_ray

WORKER_GROUP_START_TIMEOUT_S = 600.0


def _absolute(path: str) -> str:
    """Workers may run elsewhere: local paths become absolute; hub ids stay as they are."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def _worker(config: dict) -> None:
    """Ray Train's train_loop_per_worker: pick this worker's device, then the plain recipe."""
    import ray.train
    import ray.train.torch

    from beacon.train import train

    cfg = TrainConfig.from_dict(config)
    if cfg.device == "auto":
        cfg = dataclasses.replace(cfg, device=str(ray.train.torch.get_device()))
    train(cfg, on_log=lambda record: ray.train.report(record))


def train_on_ray(cfg: TrainConfig, *, num_workers: int = 2, use_gpu: bool | None = None) -> dict:
    """Train `cfg` on `num_workers` Ray Train workers (one GPU each if use_gpu); returns the summary.

    use_gpu=None uses GPUs when the Ray cluster has at least `num_workers` of them. Connects to a
    running cluster (RAY_ADDRESS, `ray job submit`) or starts a local one.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    ensure_ray()  # a local Ray unless RAY_ADDRESS names one: never a cluster left running here, silently
    # Ray Train tears the worker group down (and removes its placement group) when its workers are not
    # all up within 60 s (its default): on a busy machine two workers importing torch can take longer.
    # Ray Train passes this variable from the driver to its controller and workers.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(WORKER_GROUP_START_TIMEOUT_S))
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= num_workers
    cfg = dataclasses.replace(
        cfg,
        model=_absolute(cfg.model),
        data=_absolute(cfg.data),
        tokenizer=None if cfg.tokenizer is None else _absolute(cfg.tokenizer),
        output_dir=str(Path(cfg.output_dir).resolve()),
    )
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name="beacon-train", storage_path=str(Path(cfg.output_dir) / "ray")),
    )
    trainer.fit()
    return json.loads((Path(cfg.output_dir) / SUMMARY_FILE).read_text())
