"""beacon.staging.Stager on a GPU: every pass's index vectors arrive intact, the pinned ring is
allocated once, and a pass larger than a slot grows that slot without disturbing the others.

Run with `pytest -m gpu tests/test_staging_gpu.py` on a CUDA machine (skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from beacon.staging import Stager

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_stager_moves_every_pass_intact_through_one_pinned_ring():
    stager = Stager(torch.device("cuda"), slots=4)
    g = torch.Generator().manual_seed(0)
    sizes = [10, 3000, 70_000, 5, 200_000, 17, 64, 1]  # two passes outgrow a slot
    sent, received = [], []
    for i, n in enumerate(sizes * 3):
        named = {"a": torch.randint(-(10**12), 10**12, (n,), generator=g), "b": torch.arange(i + 1)}
        sent.append(named)
        received.append(stager.move(named))  # no synchronize in between: copies stay in flight
        if i == 0:
            ring = stager._slots[0].buffer.untyped_storage().data_ptr()
            assert all(s.buffer.untyped_storage().data_ptr() == ring for s in stager._slots)
    torch.cuda.synchronize()
    for host, device in zip(sent, received, strict=True):
        for name in host:
            assert device[name].device.type == "cuda"
            assert torch.equal(device[name].cpu(), host[name])
