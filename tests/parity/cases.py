"""Parity cases shared by the reference harness (ref venv) and our tests. Plain data, no imports.

Each case: a tiny checkpoint family, beacon settings, optional config.json patches, and the input
sizes. Inputs are numpy-seeded token ids (see `token_ids`).
"""

WINDOW = {"beacon_window": 16, "beacon_stride": 16}

CASES = [
    # the official Qwen-2 checkpoint's setting: interleave + full-coverage, q/k/v beacon weights
    {
        "name": "qwen2_interleave_fc",
        "family": "qwen2",
        "beacon": WINDOW
        | {
            "beacon_pos": "interleave",
            "beacon_attn": "full-coverage",
            "beacon_ratio": [2],
            "beacon_param": ["q", "k", "v"],
            "beacon_sink_size": 0,
            "beacon_attend_prev": True,
        },
    },
    {
        "name": "qwen2_interleave_fc_sink",
        "family": "qwen2",
        "beacon": WINDOW
        | {
            "beacon_pos": "interleave",
            "beacon_attn": "full-coverage",
            "beacon_ratio": [4],
            "beacon_param": ["q", "k", "v"],
            "beacon_sink_size": 5,
            "beacon_attend_prev": True,
        },
    },
    # adapt-N picks one ratio per sequence from its length: here reach(2)=112 < 100+16 <= reach(4)=208
    {
        "name": "qwen2_interleave_fc_adapt",
        "family": "qwen2",
        "hf_config": {"max_position_embeddings": 64},
        "beacon": WINDOW
        | {
            "beacon_pos": "interleave",
            "beacon_attn": "full-coverage",
            "beacon_ratio": [2, 4, 8],
            "beacon_ratio_mix": "adapt-16",
            "beacon_param": ["q", "k", "v"],
        },
    },
    {
        "name": "qwen2_interleave_fc_sequence",
        "family": "qwen2",
        "beacon": WINDOW
        | {
            "beacon_pos": "interleave",
            "beacon_attn": "full-coverage",
            "beacon_ratio": [2, 4, 8],
            "beacon_ratio_mix": "sequence",
            "beacon_param": ["q", "k", "v"],
        },
    },
    {
        "name": "llama_append_se",
        "family": "llama",
        "beacon": WINDOW
        | {
            "beacon_pos": "append",
            "beacon_attn": "step-expansion",
            "beacon_ratio": [4],
            "beacon_param": ["q", "k", "v", "o"],
            "beacon_attend_prev": True,
        },
    },
    {
        "name": "llama_append_se_noprev_sink",
        "family": "llama",
        "beacon": WINDOW
        | {
            "beacon_pos": "append",
            "beacon_attn": "step-expansion",
            "beacon_ratio": [2],
            "beacon_param": ["q", "k", "v"],
            "beacon_attend_prev": False,
            "beacon_sink_size": 3,
        },
    },
    {
        "name": "mistral_append_fc",
        "family": "mistral",
        "beacon": WINDOW
        | {
            "beacon_pos": "append",
            "beacon_attn": "full-coverage",
            "beacon_ratio": [4],
            "beacon_param": ["q", "k", "v"],
        },
    },
    {
        "name": "mistral_append_fc_ratio0",
        "family": "mistral",
        "beacon": WINDOW
        | {
            "beacon_pos": "append",
            "beacon_attn": "full-coverage",
            "beacon_ratio": [0],
            "beacon_param": ["q", "k", "v"],
        },
    },
]

NLL_LEN = 100  # tokens scored (6 windows and a partial one)
PROMPT_LEN = 58  # 3 windows + 10 raw tokens: generation crosses window boundaries at 64 and 80
NEW_TOKENS = 24


def token_ids(case_index: int, n: int) -> list[int]:
    """Deterministic token ids in [3, 256) for case `case_index` (avoids bos/eos/pad)."""
    import numpy as np

    return np.random.default_rng(1000 + case_index).integers(3, 256, size=n).tolist()
