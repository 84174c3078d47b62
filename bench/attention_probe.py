"""Which SDPA path serves beacon attention fastest on this GPU, and do they agree?

    python -m bench.attention_probe        # prints ms per call and max |difference|

Rows n = 2304 (a 2048-token window + 256 beacons) over m memory entries + the window,
Qwen2-1.5B heads (12 query, 2 key/value, head dim 128), bf16.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def bench(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def probe(m: int, n: int = 2304, h: int = 12, h_kv: int = 2, d: int = 128) -> dict:
    """Time each path for n rows over m memory entries + the window."""
    q = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, h_kv, m + n, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    bias = causal_lower_right(n, m + n)
    rep = h // h_kv
    dense = torch.ones(n, m + n, dtype=torch.bool, device="cuda").tril(diagonal=m)

    def repeat():
        return F.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=bias
        )

    def gqa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)

    def masked():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)

    def unmasked():
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))

    ref = repeat()
    row: dict = {}
    for name, fn in [("causal+repeat", repeat), ("causal+gqa", gqa), ("dense mask", masked), ("no mask", unmasked)]:
        try:
            diff = (fn() - ref).abs().max().item() if name != "no mask" else float("nan")
            row[name] = {"ms": bench(fn), "max_diff": diff}
        except Exception as err:  # a path this build lacks
            row[name] = {"error": f"{type(err).__name__}: {err}"[:200]}
    return row


def main() -> None:
    out = {}
    more = len(sys.argv) > 2 and sys.argv[2] == "more"
    for m in (4096, 16384):
        out[m] = probe_more(m) if more else probe(m)
        print(m, json.dumps(out[m]), flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f, indent=1)


def probe_more(m: int, n: int = 2304, h: int = 12, h_kv: int = 2, d: int = 128, windows: int = 4) -> dict:
    """Direct flash op (lower-right causal), FlexAttention, and P windows batched with a dense mask."""
    q = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, h_kv, m + n, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    rep = h // h_kv
    kr, vr = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    ref = F.scaled_dot_product_attention(q, kr, vr, attn_mask=causal_lower_right(n, m + n))
    row: dict = {}

    def flash_op():
        return torch.ops.aten._scaled_dot_product_flash_attention(q, kr, vr, 0.0, True, False)[0]

    def flash_op_gqa():
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False)[0]

    for name, fn in [("flash-op", flash_op), ("flash-op gqa", flash_op_gqa)]:
        try:
            row[name] = {"ms": bench(fn), "max_diff": (fn() - ref).abs().max().item()}
        except Exception as err:
            row[name] = {"error": f"{type(err).__name__}: {err}"[:200]}
    try:
        import time

        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex = torch.compile(flex_attention, dynamic=False)

        def causal(b, hh, qi, ki):
            return ki <= qi + m

        t0 = time.perf_counter()
        bm = create_block_mask(causal, None, None, n, m + n, device="cuda")
        out = flex(q, k, v, block_mask=bm, enable_gqa=True)
        torch.cuda.synchronize()
        row["flex compile s"] = time.perf_counter() - t0
        row["flex"] = {
            "ms": bench(lambda: flex(q, k, v, block_mask=bm, enable_gqa=True)),
            "max_diff": (out - ref).abs().max().item(),
        }
        row["flex block-mask ms"] = bench(lambda: create_block_mask(causal, None, None, n, m + n, device="cuda"), 5)
    except Exception as err:
        row["flex"] = {"error": f"{type(err).__name__}: {err}"[:300]}
    # P windows as a batch, each over O + copies + its own entries, dense mask
    nb = n // 9
    qb = torch.randn(windows, h, n, d, device="cuda", dtype=torch.bfloat16)
    kb = torch.randn(windows, h_kv, m + (windows - 1) * nb + n, d, device="cuda", dtype=torch.bfloat16)
    vb = torch.randn_like(kb)
    mask = torch.ones(windows, 1, n, kb.shape[2], dtype=torch.bool, device="cuda").tril(diagonal=kb.shape[2] - n)
    row[f"batched {windows} windows dense, ms per window"] = (
        bench(lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=True)) / windows
    )
    return row


if __name__ == "__main__":
    main()
