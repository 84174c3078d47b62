"""Beacon training on Ray Train with 2 CPU workers (gloo DDP) equals one process with 2 micro-batches."""

from __future__ import annotations

import pytest
import torch

from beacon.train import train

from .test_train import CORPUS, beacon_tensors, char_tokenizer, settings, tiny_model  # noqa: F401

ray = pytest.importorskip("ray")


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_ray_workers_match_gradient_accumulation(tiny_model, tmp_path, local_ray):  # noqa: F811
    from pipelines.train import train_on_ray

    common = dict(max_steps=6, save_every=3, log_every=2, max_train_tokens=10_000)
    summary = train_on_ray(settings(tiny_model, tmp_path / "ray", **common), num_workers=2, use_gpu=False)
    assert summary["finished"] and summary["world_size"] == 2 and summary["position"] == 12
    train(settings(tiny_model, tmp_path / "one", grad_accum=2, **common))
    a, b = beacon_tensors(tmp_path / "ray"), beacon_tensors(tmp_path / "one")
    for k in a:  # the same micro-batches, averaged by DDP instead of accumulated: equal up to fp32 rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_torchrun_two_processes_match_gradient_accumulation(tiny_model, tmp_path):  # noqa: F811
    import subprocess
    import sys

    args = [
        *(str(tiny_model), str(CORPUS), "--ratios", "2,4,8", "--min-length", "48", "--max-length", "96", "--pack"),
        *("--max-train-tokens", "10000", "--batch-size", "2", "--steps", "4", "--lr", "3e-3", "--device", "cpu"),
        *("--warmup-steps", "3", "--schedule", "cosine"),
        "--no-progress",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [*torchrun, "-m", "beacon_cli.main", "train", *args, "-o", str(tmp_path / "ddp")], check=True, env=env
    )
    train(settings(tiny_model, tmp_path / "one", max_steps=4, max_train_tokens=10_000, grad_accum=2, log_every=10))
    a, b = beacon_tensors(tmp_path / "ddp"), beacon_tensors(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
