"""Model shapes used by the benchmarks (random weights: speed does not depend on their values)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SHAPES: dict[str, dict] = {
    # Qwen2-1.5B and Qwen2-7B config.json values (architecture only)
    "qwen2-1.5b": dict(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen2-7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
    # Qwen2.5-0.5B (the default model's base family; its GGUF keeps the head untied)
    "qwen2-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    ),
    # for CPU smoke runs of the benchmark scripts
    "tiny": dict(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
}
COMMON = dict(
    max_position_embeddings=131072,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    bos_token_id=151643,
    eos_token_id=151645,
    use_sliding_window=False,
)


def hf_config(shape: str, **extra):
    from transformers import Qwen2Config

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")
    return Qwen2Config(**COMMON, **SHAPES[shape], **extra)


def random_model(shape: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, attn: str = "sdpa"):
    """A Qwen2ForCausalLM of `shape` with random weights, built directly on `device`."""
    from transformers import Qwen2ForCausalLM

    config = hf_config(shape)
    config._attn_implementation = attn
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


def official_qwen2_lm(model, window: int = 2048, ratio: int = 8, **overrides):
    """`model` with beacons set as the official Qwen-2 checkpoint is (interleave, full-coverage,
    q/k/v beacon weights), one fixed ratio: the setting every benchmark measures."""
    import beacon

    settings = dict(
        beacon_window=window,
        beacon_stride=window,
        beacon_ratio=[ratio],
        beacon_ratio_mix="step-random",
        beacon_pos="interleave",
        beacon_attn="full-coverage",
        beacon_param=["q", "k", "v"],
    )
    return beacon.from_hf(model, **(settings | overrides))


def environment() -> dict:
    """Versions and device, recorded next to every result."""
    import platform

    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:  # which library checks snapshot rows (zlib-ng, else zlib): it sets the pace of warm loads
        from snapshots import codec

        info["crc32"] = codec.CRC32_IMPL
    except ImportError:  # no pylance on this machine: no snapshots either
        pass
    return info


def save_json(result: dict, path: str | Path) -> None:
    """Write a benchmark's result where --out says (folders made), one JSON document, indented."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
