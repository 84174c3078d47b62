"""BeaconConfig: defaults, conversion and every invalid combination's error."""

from __future__ import annotations

import pytest

from beacon import BeaconConfig


def test_defaults_match_the_official_configuration_classes():
    cfg = BeaconConfig()
    assert (cfg.beacon_window, cfg.beacon_stride, cfg.beacon_attn, cfg.beacon_pos) == (
        1024,
        1024,
        "full-coverage",
        "interleave",
    )
    assert cfg.beacon_ratio == [2, 4, 8, 16, 32] and cfg.beacon_ratio_mix == "step-random"
    assert cfg.beacon_param == [] and cfg.beacon_embed_init == "eos" and cfg.beacon_attend_prev


def test_from_dict_ignores_unknown_keys_and_applies_overrides():
    cfg = BeaconConfig.from_dict({"beacon_window": 64, "beacon_stride": 64, "hidden_size": 7}, beacon_ratio=[8])
    assert cfg.beacon_window == 64 and cfg.beacon_ratio == [8]
    with pytest.raises(ValueError, match="unknown beacon settings"):
        BeaconConfig.from_dict({}, beacon_windw=3)


def test_adapt_future_is_parsed():
    assert BeaconConfig(beacon_ratio_mix="adapt-1024").adapt_future == 1024
    assert BeaconConfig().adapt_future is None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"beacon_window": 0}, "must be >= 1"),
        ({"beacon_window": 8, "beacon_stride": 16, "beacon_pos": "append", "beacon_ratio": [8]}, "must be <="),
        ({"beacon_attn": "sliding"}, "beacon_attn"),
        ({"beacon_pos": "middle"}, "beacon_pos"),
        ({"beacon_ratio_mix": "adapt"}, "adapt-N"),
        ({"beacon_ratio": []}, "empty"),
        ({"beacon_ratio": [-2]}, "negative"),
        ({"beacon_ratio": [3]}, "does not divide"),
        ({"beacon_ratio": [2048]}, "does not divide"),
        ({"beacon_param": ["q", "x"]}, "unknown"),
        ({"beacon_embed_init": "pad"}, "beacon_embed_init"),
        ({"beacon_sink_size": 1024}, "beacon_sink_size"),
        ({"beacon_parallel_window": 0}, "parallel"),
        ({"beacon_stride": 512, "beacon_ratio": [8]}, "needs beacon_stride == beacon_window"),
        ({"beacon_attn": "step-expansion", "beacon_attend_prev": True}, "beacon_attend_prev=False"),
    ],
)
def test_invalid_settings_say_what_to_change(changes, message):
    with pytest.raises(ValueError, match=message):
        BeaconConfig(**changes)


def test_valid_combinations_build():
    BeaconConfig(beacon_pos="append", beacon_stride=512, beacon_ratio=[0, 8], beacon_attn="segmentation")
    BeaconConfig(beacon_pos="interleave", beacon_attn="segmentation", beacon_attend_prev=False)
    cfg = BeaconConfig(beacon_ratio=[8]).replace(beacon_ratio=[4])
    assert cfg.beacon_ratio == [4]
    with pytest.raises(ValueError):
        cfg.replace(beacon_ratio=[5])
