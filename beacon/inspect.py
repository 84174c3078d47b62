"""Facts about a checkpoint without loading its weights (for `beacon info`)."""

from __future__ import annotations

from pathlib import Path

from .config import BeaconConfig
from .families import family_of


def describe(name_or_path: str) -> dict:
    """Family, shape, beacon settings, whether beacon weights are stored, and KV bytes per entry."""
    from transformers import AutoConfig

    from .loading import _local_folder, _weight_files

    folder = _local_folder(name_or_path)
    hf = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    family = family_of(hf.model_type)
    cfg = BeaconConfig.from_dict(vars(hf) | hf.to_dict())
    n_heads = hf.num_attention_heads
    n_kv = getattr(hf, "num_key_value_heads", None) or n_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // n_heads
    stored = []
    from safetensors import safe_open

    for path in _weight_files(Path(folder)):
        with safe_open(str(path), framework="pt") as f:
            stored += [k for k in f.keys() if "beacon_" in k]
    bytes_per_entry = 2 * hf.num_hidden_layers * n_kv * head_dim * 2  # K and V, bf16
    return {
        "path": str(folder),
        "family": family.name,
        "layers": hf.num_hidden_layers,
        "hidden_size": hf.hidden_size,
        "heads (q/kv)": f"{n_heads}/{n_kv}",
        "head_dim": head_dim,
        "vocab_size": hf.vocab_size,
        "max_positions": hf.max_position_embeddings,
        "beacon_weights_stored": len(stored),
        "kv_bytes_per_entry_bf16": bytes_per_entry,
        **{k: v for k, v in cfg.to_dict().items()},
    }
