"""Beacon parameters plugged into a frozen Hugging Face model, under the official checkpoint names.

  model.beacon_embed_tokens.weight                        (1, hidden)
  model.layers.N.self_attn.beacon_{q,k,v,o}_proj.{weight,bias}

They are ordinary submodules of the HF model, so `state_dict()`/`save_pretrained` write the
official layout. Missing ones are initialised as the official code does: projections copied from
the ordinal ones, the embedding from the bos or eos token's embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import BeaconConfig
from .families import Parts

EMBED_NAME = "model.beacon_embed_tokens.weight"


def _like(linear: nn.Linear) -> nn.Linear:
    new = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    return new.to(device=linear.weight.device, dtype=linear.weight.dtype)


def add_beacon_modules(model: nn.Module, cfg: BeaconConfig) -> list[str]:
    """Attach beacon modules (uninitialised) to `model`; returns their parameter names."""
    inner = model.model
    embed = inner.embed_tokens
    beacon_embed = nn.Embedding(1, embed.embedding_dim)
    inner.beacon_embed_tokens = beacon_embed.to(device=embed.weight.device, dtype=embed.weight.dtype)
    for layer in inner.layers:
        attn = layer.self_attn
        for p in cfg.beacon_param:
            setattr(attn, f"beacon_{p}_proj", _like(getattr(attn, f"{p}_proj")))
    return beacon_parameter_names(model)


def beacon_parameter_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if ".beacon_" in n or n.startswith("model.beacon_")]


def beacon_parameters(model: nn.Module) -> list[nn.Parameter]:
    names = set(beacon_parameter_names(model))
    return [p for n, p in model.named_parameters() if n in names]


def freeze_base(model: nn.Module) -> None:
    """Base weights never receive gradients; beacon weights do."""
    names = set(beacon_parameter_names(model))
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


@torch.no_grad()
def init_missing(model: nn.Module, cfg: BeaconConfig, missing: set[str]) -> None:
    """Initialise the beacon parameters named in `missing` from the base model."""
    inner = model.model
    if EMBED_NAME in missing:
        config = model.config
        token = config.bos_token_id if cfg.beacon_embed_init == "bos" else config.eos_token_id
        if isinstance(token, (list, tuple)):
            token = token[0]
        if token is None:
            raise ValueError(
                f"beacon_embed_init={cfg.beacon_embed_init!r} but the model config has no"
                f" {cfg.beacon_embed_init}_token_id: set it in config.json or choose the other init"
            )
        inner.beacon_embed_tokens.weight.copy_(inner.embed_tokens.weight[token][None])
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        for p in cfg.beacon_param:
            base, beacon = getattr(attn, f"{p}_proj"), getattr(attn, f"beacon_{p}_proj")
            prefix = f"model.layers.{i}.self_attn.beacon_{p}_proj"
            if f"{prefix}.weight" in missing:
                beacon.weight.copy_(base.weight)
            if beacon.bias is not None and f"{prefix}.bias" in missing:
                beacon.bias.copy_(base.bias)


@dataclass(frozen=True)
class BeaconModules:
    """Handles to the beacon modules a forward pass or decode step uses."""

    embed: nn.Embedding  # (1, hidden)
    layers: tuple[dict[str, nn.Linear], ...]  # per layer: {"q" | "k" | "v" | "o": beacon projection}


def beacon_modules(parts: Parts, model: nn.Module, cfg: BeaconConfig) -> BeaconModules:
    attn = [layer.self_attn for layer in parts.layers]
    layers = tuple({p: getattr(a, f"beacon_{p}_proj") for p in cfg.beacon_param} for a in attn)
    return BeaconModules(model.model.beacon_embed_tokens, layers)


# ---- compact storage: beacon projections as quantized deltas from the base's -------------------
# int8: one scale per output row. int4: two values a byte (low nibble first, stored +8), one scale
# per GROUP input columns of each row (a row's delta spans more range than 15 steps keep). Scales
# are bf16 (fp32's range: a tiny delta keeps its own fine step), and the values are rounded against
# the stored scale, so its 8-bit mantissa costs nothing but a step 0.4% off amax / levels; bf16
# keeps the int8 form of a 0.5B model's q/k/v under 25 MB where fp32 scales would not.
DELTA, DELTA4, SCALE = ".delta_int8", ".delta_int4", ".delta_scale"
GROUP = 64
DELTA_BITS = (8, 4)


def _scale(amax: torch.Tensor, levels: int) -> torch.Tensor:
    """The bf16 scale that maps amax to about `levels` steps (as float32, exactly the stored value)."""
    return (amax / levels).clamp_min(1e-30).bfloat16().float()


@torch.no_grad()
def pack_deltas(model: nn.Module, bits: int = 8) -> dict[str, torch.Tensor]:
    """Beacon weights for shipping: each projection as (beacon - base), quantized to `bits` (8: a
    quarter of fp32's size, 4: an eighth plus its scales; the delta is small, so its rounding error
    is too), other beacon tensors (embedding, biases) as they are."""
    if bits not in DELTA_BITS:
        raise ValueError(f"bits must be one of {DELTA_BITS}, got {bits}")
    params = dict(model.named_parameters())
    packed: dict[str, torch.Tensor] = {}
    for name in beacon_parameter_names(model):
        value = params[name].detach().float().cpu()
        base = name.replace("beacon_", "")
        if value.dim() != 2 or base not in params or params[base].shape != value.shape:  # e.g. the embedding
            packed[name] = value.contiguous()
            continue
        delta = value - params[base].detach().float().cpu()
        if bits == 8 or delta.shape[1] % GROUP:  # int4 needs whole groups (every real model has them)
            scale = _scale(delta.abs().amax(dim=1), 127)
            packed[name + DELTA] = torch.round(delta / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        else:
            groups = delta.reshape(delta.shape[0], -1, GROUP)
            scale = _scale(groups.abs().amax(dim=2), 7)
            q = (torch.round(groups / scale[..., None]).clamp(-7, 7) + 8).to(torch.uint8).reshape(delta.shape[0], -1)
            packed[name + DELTA4] = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
        packed[name + SCALE] = scale.bfloat16().contiguous()
    return packed


@torch.no_grad()
def unpack_deltas(stored: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The inverse of `pack_deltas` against `model`'s base weights; tensors without deltas pass through."""
    params = dict(model.named_parameters())
    out = {k: v for k, v in stored.items() if not k.endswith((DELTA, DELTA4, SCALE))}
    for key in (k for k in stored if k.endswith((DELTA, DELTA4))):
        name = key[: -len(DELTA)]  # both suffixes have one length
        base = params.get(name.replace("beacon_", ""))
        if base is None or name + SCALE not in stored:
            raise ValueError(f"{key}: a quantized delta needs its base projection and {name + SCALE}")
        scale = stored[name + SCALE].float()
        if key.endswith(DELTA):
            delta = stored[key].float() * scale.reshape(-1, 1)
        else:
            q = stored[key]
            if q.dim() != 2 or 2 * q.shape[1] != base.shape[1] or scale.shape != (q.shape[0], base.shape[1] // GROUP):
                raise ValueError(f"{key}: int4 delta {tuple(q.shape)} / scale {tuple(scale.shape)} do not fit the"
                                 f" base projection {tuple(base.shape)}")  # fmt: skip
            values = torch.stack([q & 15, q >> 4], dim=-1).reshape(q.shape[0], -1).float() - 8
            delta = (values.reshape(q.shape[0], -1, GROUP) * scale[..., None]).reshape(q.shape[0], -1)
        if delta.shape != base.shape:
            raise ValueError(f"{key}: delta shape {tuple(delta.shape)} != base projection {tuple(base.shape)}")
        out[name] = (base.detach().float().cpu() + delta).to(base.dtype)
    return out
