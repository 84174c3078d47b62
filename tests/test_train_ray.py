"""Beacon training on Ray Train with 2 CPU workers (gloo DDP) equals one process with 2 micro-batches."""

from __future__ import annotations

import pytest
import torch

from beacon.train import train

from .test_train import beacon_tensors, char_tokenizer, settings, tiny_model  # noqa: F401

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
