"""Loading official-layout checkpoints (no remote code), plain base models, and saving back."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

import beacon

from .conftest import tiny_path, tokens


def _stored(folder, key):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(key)


def test_official_checkpoint_loads_without_running_its_code(tmp_path):
    folder = tmp_path / "official"
    shutil.copytree(tiny_path("qwen2"), folder)
    # an official checkpoint ships modeling code through auto_map: it must never run
    trap = "raise RuntimeError('checkpoint code was executed')\n"
    (folder / "modeling_qwen2.py").write_text(trap)
    (folder / "configuration_qwen2.py").write_text(trap)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_qwen2.Qwen2Config",
        "AutoModelForCausalLM": "modeling_qwen2.Qwen2ForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    lm = beacon.load(folder)
    assert lm.config.beacon_param == ["q", "k", "v", "o"] and lm.config.beacon_pos == "interleave"
    attn = lm.model.model.layers[1].self_attn
    torch.testing.assert_close(
        attn.beacon_k_proj.weight, _stored(folder, "model.layers.1.self_attn.beacon_k_proj.weight")
    )
    torch.testing.assert_close(attn.beacon_q_proj.bias, _stored(folder, "model.layers.1.self_attn.beacon_q_proj.bias"))
    torch.testing.assert_close(
        lm.model.model.beacon_embed_tokens.weight, _stored(folder, "model.beacon_embed_tokens.weight")
    )
    assert not torch.equal(attn.beacon_k_proj.weight, attn.k_proj.weight)


@pytest.mark.parametrize("init, token", [("eos", 2), ("bos", 1)])
def test_plain_base_model_gets_beacon_weights_from_its_own(tmp_path, init, token):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    lm = beacon.load(
        tmp_path / "base",
        beacon_param=["q", "k", "v", "o"],
        beacon_embed_init=init,
        beacon_window=16,
        beacon_stride=16,
        beacon_ratio=[4],
    )
    inner = lm.model.model
    for layer in inner.layers:
        for p in "qkvo":
            assert torch.equal(
                getattr(layer.self_attn, f"beacon_{p}_proj").weight, getattr(layer.self_attn, f"{p}_proj").weight
            )
    assert torch.equal(inner.beacon_embed_tokens.weight[0], inner.embed_tokens.weight[token])
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert trainable == set(beacon.params.beacon_parameter_names(lm.model))
    assert len(trainable) == 1 + 2 * 4


def test_save_pretrained_writes_the_official_layout_and_reloads_identically(tmp_path):
    lm = beacon.load(
        tiny_path("llama"),
        beacon_pos="append",
        beacon_attn="step-expansion",
        beacon_ratio=[4],
        beacon_param=["q", "k", "v"],
    )
    out = tmp_path / "saved"
    lm.save_pretrained(out)
    saved_cfg = json.loads((out / "config.json").read_text())
    assert saved_cfg["beacon_attn"] == "step-expansion" and saved_cfg["beacon_ratio"] == [4]
    keys = set()
    for path in out.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            keys |= set(f.keys())
    assert "model.beacon_embed_tokens.weight" in keys
    assert "model.layers.0.self_attn.beacon_q_proj.weight" in keys
    assert not any("beacon_o_proj" in k for k in keys)
    again = beacon.load(out)
    ids = tokens(40, seed=1)
    torch.testing.assert_close(again.nll(ids), lm.nll(ids), atol=0, rtol=0)
    assert again.fingerprint()["id"] == lm.fingerprint()["id"]


def test_fingerprint_tells_models_and_settings_apart():
    a = beacon.load(tiny_path("qwen2"), beacon_ratio=[2])
    b = beacon.load(tiny_path("qwen2"), beacon_ratio=[4])
    c = beacon.load(tiny_path("qwen3"), beacon_ratio=[2])
    assert len({a.fingerprint()["id"], b.fingerprint()["id"], c.fingerprint()["id"]}) == 3
    assert a.fingerprint()["base_probe_sha256"] == b.fingerprint()["base_probe_sha256"]
    d = beacon.load(tiny_path("qwen2"), beacon_ratio=[2], dtype="bfloat16")
    assert d.fingerprint()["id"] != a.fingerprint()["id"] and d.fingerprint()["dtype"] == "bfloat16"
    with torch.no_grad():
        a.model.model.beacon_embed_tokens.weight.add_(1.0)
    assert a.fingerprint()["beacon_weights_sha256"] != b.fingerprint()["beacon_weights_sha256"]


def test_unsupported_models_and_settings_fail_clearly(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="not supported; supported families"):
        beacon.load(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="dtype"):
        beacon.load(tiny_path("qwen2"), dtype="float8")
    with pytest.raises(ValueError, match="unknown beacon settings"):
        beacon.load(tiny_path("qwen2"), beacon_windw=8)
    with pytest.raises(ValueError, match="does not divide"):
        beacon.load(tiny_path("qwen2"), beacon_ratio=[3])


def test_missing_model_path_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not a local folder"):
        beacon.load(tmp_path / "nothing-here")
