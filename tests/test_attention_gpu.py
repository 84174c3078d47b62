"""Attention kernels only a GPU has, at a real head dim (bf16): FlexAttention, cuDNN, flex-outer.

Run with `pytest -m gpu tests/test_attention_gpu.py` on a CUDA machine (skipped elsewhere).
The tiny test models' head dim (16) has no compiled FlexAttention kernel, so these build a small
random Qwen2 with head dim 128 instead.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _reference(q, k, v, scale):
    """float32 math, every row over every key (GQA: key/value heads repeated)."""
    g = q.shape[1] // k.shape[1]
    k, v = k.float().repeat_interleave(g, 1), v.float().repeat_interleave(g, 1)
    return torch.softmax((q.float() @ k.transpose(-1, -2)) * scale, dim=-1) @ v


def _small_lm(device: str = "cuda"):
    """A 2-layer random Qwen2 in bf16 on the GPU with head dim 128 (GQA 2:1), beacons as the official
    Qwen-2 checkpoint sets them, window 128, ratio 2."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import beacon
    from bench.shapes import COMMON

    config = Qwen2Config(
        **(COMMON | dict(max_position_embeddings=8192, bos_token_id=0, eos_token_id=1)),
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
    )
    torch.manual_seed(1)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    lm = beacon.from_hf(
        model,
        beacon_window=128,
        beacon_stride=128,
        beacon_ratio=[2],
        beacon_pos="interleave",
        beacon_attn="full-coverage",
        beacon_param=["q", "k", "v"],
    )
    return lm


def test_unmasked_part_and_merge_equal_one_attention():
    """O by the unmasked fused kernel (cuDNN where it serves) + the rest by FlexAttention, merged by
    log-sum-exp == one attention over all keys."""
    from torch.nn.attention.flex_attention import flex_attention

    from beacon.attention import _LSE, attend_unmasked, merge_attention, unmasked_kernel

    torch.manual_seed(0)
    q = torch.randn(2, 12, 640, 128, device="cuda", dtype=torch.bfloat16)  # a batch of 2, GQA 6:1
    k = torch.randn(2, 2, 5000 + 700, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    scale = 128**-0.5
    kernel = unmasked_kernel(q.device, q.dtype, 128)
    assert kernel in ("cudnn", "flash")
    out_o, lse_o = attend_unmasked(q, k[:, :, :5000], v[:, :, :5000], scale, kernel)
    assert lse_o.shape == (2, 12, 640) and lse_o.dtype == torch.float32
    out_w, aux = torch.compile(flex_attention)(q, k[:, :, 5000:], v[:, :, 5000:], scale=scale, enable_gqa=True, **_LSE)
    lse_w = aux if isinstance(aux, torch.Tensor) else aux.lse
    merged = merge_attention(out_o, lse_o, out_w, lse_w)
    ref = _reference(q, k, v, scale)
    assert _rel(merged, ref) < 1e-2, kernel
    assert _rel(out_o, _reference(q, k[:, :, :5000], v[:, :, :5000], scale)) < 1e-2


def test_flex_outer_equals_flex_and_dense_in_the_engine():
    """The three layouts of parallel windows over a growing memory give the same logits and memory
    (bf16: within a few times the rounding flex itself shows against the dense mask)."""
    lm = _small_lm()
    lm.parallel_window = 4
    assert lm.parts.head_dim == 128
    ids = torch.randint(0, 512, (1, 3000), generator=torch.Generator().manual_seed(2))
    results = {}
    for mode in ("dense", "flex", "flex-outer"):
        lm.attn_mode = mode
        with torch.no_grad():
            memory, logits = lm.forward(ids, logits="all")
        results[mode] = (memory, logits)
    assert results["dense"][0].state.n_outer > 1000
    base = _rel(results["flex"][1], results["dense"][1])
    assert _rel(results["flex-outer"][1], results["dense"][1]) < max(3 * base, 1e-3)
    assert _rel(results["flex-outer"][1], results["flex"][1]) < max(3 * base, 1e-3)
    for key in ("keys", "values"):
        a, b = results["flex-outer"][0].export()[0][key], results["dense"][0].export()[0][key]
        assert a.shape == b.shape and _rel(a, b) < 2e-2


def _compiled_graph_breaks(modes: tuple[str, ...], seed: int) -> tuple[dict, dict]:
    """Per attention mode: the graph breaks of one compiled forward over 2,000 tokens, 4 windows per
    pass (a break inside the decoder layer costs host time every layer), and its logits."""
    from torch._dynamo.utils import counters

    lm = _small_lm()
    lm.parallel_window = 4
    lm.compile_layers = True
    ids = torch.randint(0, 512, (1, 2000), generator=torch.Generator().manual_seed(seed))
    breaks, logits = {}, {}
    for mode in modes:
        lm.attn_mode = mode
        counters.clear()
        with torch.no_grad():
            _, logits[mode] = lm.forward(ids, logits="all")
        breaks[mode] = sum(counters["graph_break"].values())
    lm.attn_mode = "auto"
    return breaks, logits


def test_flex_outer_adds_no_graph_break_to_the_compiled_layer():
    """Its kernel and merge are chosen on the host: inside the compiled decoder layer flex-outer
    breaks the graph no more often than flex does (a break there costs host time every layer)."""
    breaks, logits = _compiled_graph_breaks(("flex", "flex-outer"), seed=3)
    assert breaks["flex-outer"] <= breaks["flex"], breaks
    assert _rel(logits["flex-outer"], logits["flex"]) < 2e-2


def test_eager_flex_compiles_nothing_after_warm_up():
    """Eager layers still compile FlexAttention (and the merge of a memory attended apart) on first
    use: after beacon.warmup.warm_up, documents of new lengths, long enough for flex-outer, compile
    no graph."""
    from torch._dynamo.utils import counters

    from beacon import warmup

    lm = _small_lm()
    lm.parallel_window = 4
    assert warmup.compiles(lm) and not lm.compile_layers
    assert warmup.warm_up(lm) > 0
    warmed = counters["stats"]["unique_graphs"]
    for n in (1000, 3001, 9000):  # 9,000 tokens: a memory of 4,480 entries, attended apart
        lm.condense(torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(n)))
    assert counters["stats"]["unique_graphs"] == warmed, "graphs compiled after the warm-up"


@pytest.mark.parametrize("mode", ["dense", "split"])
def test_training_attention_keeps_gradients_finite_where_cudnn_gives_nan(mode):
    """Keys % 128 == 64 and every row's log-sum-exp below -88.7 (Qwen2.5's massive-activation heads):
    cuDNN's SDPA backward returns nan query gradients there (pytorch/pytorch#196678); attend must
    not take it where gradients are taken, and its gradients match float32 math."""
    import math

    from beacon.attention import AttnLayout, attend

    torch.manual_seed(0)
    n, d = 704, 64  # 704 % 128 == 64
    q = torch.randn(1, 2, n, d, device="cuda", dtype=torch.bfloat16) * 0.1
    k = torch.randn(1, 1, n, d, device="cuda", dtype=torch.bfloat16) * 0.1
    v = torch.randn(1, 1, n, d, device="cuda", dtype=torch.bfloat16)
    q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(d)  # every logit about -120
    mask = torch.ones(n, n, dtype=torch.bool, device="cuda").tril()
    if mode == "dense":
        layout = AttnLayout("dense", 0, n, 0, 0, {}, mask=mask)
    else:  # the first half of the rows as a causal prefix, the rest under the dense mask
        from torch.nn.attention.bias import causal_lower_right

        half = n // 2
        layout = AttnLayout("split", 0, n, half, half, {}, mask=mask[half:], causal=causal_lower_right(half, half))
    empty = k[:, :, :0]
    grads = []
    for dtype in (torch.bfloat16, torch.float32):  # float32: the reference
        qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        out = attend(qq, empty.to(dtype), empty.to(dtype), kk, vv, layout, 1 / math.sqrt(d), True)
        out.float().backward(torch.ones_like(out, dtype=torch.float32))
        grads.append((qq.grad, kk.grad, vv.grad))
    for got, want in zip(grads[0], grads[1], strict=True):
        assert torch.isfinite(got).all()
        # column 0 of q's gradient is 0 in exact math (every key holds the same -960 there, so its share
        # cancels) and bf16 rounding times 960 in any kernel: compared where the gradient carries signal
        # (the other columns of q, all of k and v: within 0.4% of float32 on an H100)
        assert _rel(got[..., 1:], want[..., 1:]) < 0.05
