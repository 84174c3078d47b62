"""Write the tiny random checkpoints that parity fixtures and engine tests share.

    python tests/parity/make_checkpoints.py            # writes tests/fixtures/tiny/<family>/

Weights come from numpy's seeded generator, written with safetensors in the official beacon layout
(base weights + model.beacon_embed_tokens + beacon_{q,k,v,o}_proj, all random and distinct from
the base ones, so a test notices if beacon rows use the wrong projection). config.json is written
by hand in the classic format both transformers 4.44 (reference) and 5.x read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"

VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 256, 64, 128, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS

FAMILIES = {
    # name: (architecture, qkv bias, o bias, q/k norm)
    "qwen2": ("Qwen2ForCausalLM", True, False, False),
    "llama": ("LlamaForCausalLM", False, False, False),
    "mistral": ("MistralForCausalLM", False, False, False),
    "qwen3": ("Qwen3ForCausalLM", False, False, True),
}


def config_for(family: str) -> dict:
    arch, qkv_bias, _, _ = FAMILIES[family]
    cfg = {
        "architectures": [arch],
        "model_type": family,
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if family == "llama":
        cfg |= {"attention_bias": False, "mlp_bias": False}
    if family in ("qwen2", "qwen3"):
        cfg |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": LAYERS}
    if family == "qwen3":
        cfg |= {"head_dim": HEAD_DIM, "attention_bias": False}
    if family == "mistral":
        cfg |= {"sliding_window": None}
    # beacon settings of the checkpoint (tests override them per case)
    cfg |= {
        "beacon_window": 16,
        "beacon_stride": 16,
        "beacon_attn": "full-coverage",
        "beacon_ratio": [2, 4, 8],
        "beacon_ratio_mix": "step-random",
        "beacon_param": ["q", "k", "v", "o"],
        "beacon_embed_init": "eos",
        "beacon_sink_size": 0,
        "beacon_attend_prev": True,
        "beacon_pos": "interleave",
        "beacon_parallel_window": 1,
    }
    return cfg


def weights_for(family: str, seed: int) -> dict[str, np.ndarray]:
    _, qkv_bias, o_bias, qk_norm = FAMILIES[family]
    rng = np.random.default_rng(seed)

    def mat(out_dim: int, in_dim: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((out_dim, in_dim)) * gain / np.sqrt(in_dim)).astype(np.float32)

    def vec(n: int, scale: float = 0.1, center: float = 0.0) -> np.ndarray:
        return (center + rng.standard_normal(n) * scale).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": (rng.standard_normal((VOCAB, HIDDEN))).astype(np.float32),
        "model.norm.weight": vec(HIDDEN, 0.1, 1.0),
        "lm_head.weight": mat(VOCAB, HIDDEN, 3.0),
        "model.beacon_embed_tokens.weight": (rng.standard_normal((1, HIDDEN))).astype(np.float32),
    }
    dims = {
        "q": (HEADS * HEAD_DIM, HIDDEN),
        "k": (KV_HEADS * HEAD_DIM, HIDDEN),
        "v": (KV_HEADS * HEAD_DIM, HIDDEN),
        "o": (HIDDEN, HEADS * HEAD_DIM),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        w[f"{p}.input_layernorm.weight"] = vec(HIDDEN, 0.1, 1.0)
        w[f"{p}.post_attention_layernorm.weight"] = vec(HIDDEN, 0.1, 1.0)
        for name, (o, n) in dims.items():
            for prefix in ("", "beacon_"):
                w[f"{p}.self_attn.{prefix}{name}_proj.weight"] = mat(o, n, 1.5 if name in "qk" else 1.0)
                if (name in "qkv" and qkv_bias) or (name == "o" and o_bias):
                    w[f"{p}.self_attn.{prefix}{name}_proj.bias"] = vec(o, 0.1)
        if qk_norm:
            w[f"{p}.self_attn.q_norm.weight"] = vec(HEAD_DIM, 0.1, 1.0)
            w[f"{p}.self_attn.k_norm.weight"] = vec(HEAD_DIM, 0.1, 1.0)
        w[f"{p}.mlp.gate_proj.weight"] = mat(INTER, HIDDEN)
        w[f"{p}.mlp.up_proj.weight"] = mat(INTER, HIDDEN)
        w[f"{p}.mlp.down_proj.weight"] = mat(HIDDEN, INTER)
    return w


def main(out: Path = OUT) -> None:
    for seed, family in enumerate(FAMILIES):
        folder = out / family
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config_for(family), indent=2) + "\n")
        save_file(weights_for(family, seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
        print(f"wrote {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
