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
    for m in (4096, 16384):
        out[m] = probe(m)
        print(m, json.dumps(out[m]), flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
