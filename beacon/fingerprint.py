"""What produced a memory: base model identity, beacon weights, beacon config, dtype.

A snapshot records this; reading it with a model whose fingerprint differs is refused, because its
activations would not be what that model computes.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from .config import BeaconConfig

# config fields that define the computation; read the same way across transformers releases
_ARCH_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "hidden_act",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
)


def _tensor_digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        data = t.detach().contiguous().cpu()
        h.update(str(tuple(data.shape)).encode())
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


def _rope(hf_config) -> dict:
    # transformers 4.x keeps rope_theta/rope_scaling, 5.x folds them into rope_parameters
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    theta = getattr(hf_config, "rope_theta", None) or params.pop("rope_theta", None)
    params.update(scaling)
    params.pop("rope_theta", None)
    if params.get("rope_type", params.get("type")) == "default":
        params = {}
    return {"theta": theta, **{k: params[k] for k in sorted(params) if k != "type"}}


def base_config_digest(hf_config) -> str:
    """sha256 of the config fields that define the base model's computation (no beacon_* fields)."""
    d = {k: getattr(hf_config, k, None) for k in _ARCH_KEYS} | {"rope": _rope(hf_config)}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(model: nn.Module, cfg: BeaconConfig, name: str) -> dict:
    """A JSON-able description of what computes memories; `id` summarises all of it.

    The base weights are identified by a probe (embedding, first and last layer's attention and
    the output head, as loaded) rather than a full hash, so it costs milliseconds on a 7B model;
    the beacon weights are hashed in full.
    """
    inner = model.model
    first, last = inner.layers[0].self_attn, inner.layers[-1].self_attn
    probe = [
        inner.embed_tokens.weight[:64],
        first.q_proj.weight,
        first.k_proj.weight,
        last.v_proj.weight,
        last.o_proj.weight,
        model.lm_head.weight[:64],
    ]
    beacon_tensors = [p for n, p in sorted(model.named_parameters()) if "beacon_" in n]
    facts = {
        "model_type": model.config.model_type,
        "name": name,
        "dtype": str(inner.embed_tokens.weight.dtype).replace("torch.", ""),
        "base_config_sha256": base_config_digest(model.config),
        "base_probe_sha256": _tensor_digest(probe),
        "beacon_weights_sha256": _tensor_digest(beacon_tensors),
        "beacon_config": {k: v for k, v in cfg.to_dict().items() if k not in ("beacon_parallel_window",)},
    }
    # what must match for a memory to be reused: everything except the name people call it by
    key = {k: v for k, v in facts.items() if k != "name"}
    facts["id"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return facts
