"""Base models from the package registry (beacon.bases) and compact model folders (save_compact):
the GGUF is checked before conversion, a compact folder rebuilds the same model from its base, and
its int8 beacon deltas stay within rounding of the trained weights."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

import beacon
from beacon import bases
from beacon.loading import save_compact
from beacon.params import beacon_parameter_names, init_missing, pack_deltas, unpack_deltas

from .conftest import tiny_path, tokens


def fake_base(monkeypatch, tmp_path, family: str = "llama") -> bases.Base:
    """A registered base whose converted folder is already in the cache (a tiny checkpoint)."""
    base = bases.Base(name="tiny-test", package="none", version="0", module="no_such_module", gguf="tiny.gguf",
                      sha256=hashlib.sha256(b"tiny").hexdigest(), license="none")  # fmt: skip
    monkeypatch.setitem(bases.BASES, base.name, base)
    monkeypatch.setenv("BEACON_CACHE", str(tmp_path / "cache"))
    folder = bases.cache_root() / "bases" / f"{base.name}-{base.sha256[:12]}"
    shutil.copytree(tiny_path(family), folder)
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


def test_int8_deltas_round_trip_within_half_a_step():
    lm = trained()
    packed = pack_deltas(lm.model)
    assert any(k.endswith(".delta_int8") and v.dtype == torch.int8 for k, v in packed.items())
    assert "model.beacon_embed_tokens.weight" in packed  # not a projection: kept whole
    params = dict(lm.model.named_parameters())
    for name, value in unpack_deltas(packed, lm.model).items():
        step = packed[name + ".delta_scale"][:, None] if name + ".delta_scale" in packed else 0.0
        assert torch.all((value - params[name]).abs() <= step / 2 + 1e-6), name


def test_a_compact_folder_rebuilds_the_model_from_its_base(monkeypatch, tmp_path):
    base = fake_base(monkeypatch, tmp_path)
    lm = trained()
    save_compact(lm, tmp_path / "compact", base.name)
    names = {p.name for p in (tmp_path / "compact").iterdir()}
    assert names >= {"config.json", "beacon.safetensors"} and "model.safetensors" not in names
    assert json.loads((tmp_path / "compact" / "config.json").read_text())["beacon_base"] == base.name
    again = beacon.load(tmp_path / "compact")
    ids = tokens(70, seed=4)
    init = beacon.load(tiny_path("llama"), beacon_param=["q", "k", "v"])
    init_missing(init.model, init.config, set(beacon_parameter_names(init.model)))
    trained_effect = (lm.nll(ids) - init.nll(ids)).abs().mean()
    rounding = (again.nll(ids) - lm.nll(ids)).abs().mean()
    assert rounding < 0.05 * trained_effect, (rounding, trained_effect)  # int8 deltas keep what training moved
    assert again.fingerprint()["beacon_config"] == lm.fingerprint()["beacon_config"]


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
