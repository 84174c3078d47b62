"""The one place that knows Hugging Face model families: which modules we use and what differs.

We read a model only through stable module attributes (embed_tokens, layers[i].input_layernorm,
layers[i].self_attn.{q,k,v,o}_proj, optional q_norm/k_norm, post_attention_layernorm, mlp, norm,
rotary_emb, lm_head) and never call a private forward, whose signature changes between releases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    """What differs between supported decoder families."""

    name: str
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (Qwen3)


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", qk_norm=False),
    "mistral": Family("mistral", qk_norm=False),
    "qwen2": Family("qwen2", qk_norm=False),
    "qwen3": Family("qwen3", qk_norm=True),
}


@dataclass
class Parts:
    """Handles to a causal LM's modules and the attention shape (b, h, s, d conventions)."""

    family: Family
    embed_tokens: nn.Embedding
    layers: nn.ModuleList
    norm: nn.Module
    rotary_emb: nn.Module
    lm_head: nn.Module
    n_heads: int
    n_kv_heads: int
    head_dim: int
    # stored, not derived: under torch.compile(dynamic=True) the int fields above are symbolic, a
    # bool derived from them a SymBool, which SDPA's enable_gqa rejects (a graph break per layer)
    gqa: bool  # n_heads != n_kv_heads: query heads share key/value heads
    scaling: float
    hidden_size: int
    vocab_size: int
    max_positions: int  # positions the model was trained for (times any RoPE scaling factor)


def family_of(model_type: str) -> Family:
    """The family of a HF `model_type`, or an error listing what is supported."""
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported families: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def _max_positions(config) -> int:
    n = int(config.max_position_embeddings)
    # as the official code does: max_position_embeddings times the RoPE scaling factor, if any
    scaling = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    return int(n * factor) if factor else n


def model_parts(model: nn.Module) -> Parts:
    """Find the modules of a *ForCausalLM of a supported family, checking each exists."""
    config = model.config
    family = family_of(config.model_type)
    inner = getattr(model, "model", None)
    missing = [a for a in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(inner, a)]
    if inner is None or missing or not hasattr(model, "lm_head"):
        raise ValueError(
            f"{type(model).__name__} lacks {missing or ['model/lm_head']}: not a supported causal LM layout"
        )
    attn = inner.layers[0].self_attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj") + (("q_norm", "k_norm") if family.qk_norm else ()):
        if not hasattr(attn, name):
            raise ValueError(f"{type(attn).__name__} has no {name}: unsupported attention layout")
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(attn, "head_dim", None) or config.hidden_size // n_heads)
    scaling = float(getattr(attn, "scaling", head_dim**-0.5))
    return Parts(
        family=family,
        embed_tokens=inner.embed_tokens,
        layers=inner.layers,
        norm=inner.norm,
        rotary_emb=inner.rotary_emb,
        lm_head=model.lm_head,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        gqa=n_heads != n_kv,
        scaling=scaling,
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        max_positions=_max_positions(config),
    )


def rope_cos_sin(parts: Parts, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (1, 1, n, d) for int64 `positions` (n,), in `like`'s dtype and device."""
    cos, sin = parts.rotary_emb(like, positions.to(like.device)[None])
    return cos[:, None], sin[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (b, h, n, d) by RoPE angles (1, 1, n, d) — the usual rotate-half form."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
