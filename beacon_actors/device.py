"""Which device an actor's model goes to."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> str:
    """`device`, or for "auto": "cuda" when CUDA is usable here, else "cpu".

    Inside a Ray worker, "auto" means CUDA only if Ray gave this actor a GPU (`num_gpus` > 0):
    Ray then sets CUDA_VISIBLE_DEVICES to that GPU. GPUs that are only logical resources (a CPU
    test cluster) fall back to the CPU.
    """
    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    try:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            return "cuda" if ray.get_gpu_ids() else "cpu"
    except ImportError:
        pass
    return "cuda"


def worker_name() -> str:
    """'<last 12 hex digits of the node id>:<pid>' inside Ray, 'local:<pid>' outside."""
    import os

    try:
        import ray

        if ray.is_initialized():
            return f"{ray.get_runtime_context().get_node_id()[-12:]}:{os.getpid()}"
    except ImportError:
        pass
    return f"local:{os.getpid()}"
