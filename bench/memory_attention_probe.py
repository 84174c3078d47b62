"""Attention over a long memory: can a split (memory part | window part, merged by log-sum-exp) beat
one FlexAttention call over both, and which kernel serves the memory part fastest?

    python -m bench.memory_attention_probe --out docs/results/memory_attention_probe.json

A pass of P windows has n rows (raw + beacons) that see every one of the m memory entries and a
masked part of the window. Today one FlexAttention call covers both (memory blocks marked full).
Here, per shape of a real pass (docs/engine.md has the table), with causal attention standing in for
the window's own mask:
  "flex one call"     FlexAttention over [memory | window] — what forward.py does now;
  memory part alone   FlexAttention without a mask (default and other kernel options), the flash
                      and cuDNN SDPA kernels (each returning the log-sum-exp the merge needs);
  "window part"       FlexAttention, causal, over the window columns only, with its log-sum-exp;
  "merge"             out = Σ exp(lse_i - lse) · out_i.
Every variant is checked against float32 math on the same inputs (‖out − ref‖ / ‖ref‖).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

SHAPES = {  # name: (query heads, kv heads, rows n, memory entries m)
    "1.5b-128k-r8-end": (12, 2, 9216, 16384),
    "1.5b-128k-r8-mid": (12, 2, 9216, 8192),
    "7b-128k-r8-end": (28, 4, 9216, 16384),
    "7b-128k-r2-mid": (28, 4, 12288, 32768),
    "7b-128k-r2-end": (28, 4, 12288, 65536),
}
FLEX_OPTIONS = {
    "default": None,
    "M128N64w8s3": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    "M128N128w8s2": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    "M64N128w4s3": {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
    "tma": {"USE_TMA": True},
    "flash": {"BACKEND": "FLASH"},
}


def timed(fn, reps: int = 10) -> float:
    """Median ms per call (device events), after warm-up."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def reference(q, k, v, m: int, scale: float) -> torch.Tensor:
    """float32 math, one head group at a time (memory: visible; window: causal)."""
    h, h_kv, n = q.shape[1], k.shape[1], q.shape[2]
    g = h // h_kv
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    cols = torch.arange(m + n, device=q.device)
    for head in range(h):
        kf, vf = k[0, head // g].float(), v[0, head // g].float()
        for r0 in range(0, n, 2048):  # rows in slices: scores of one head stay ~1 GB
            rows = torch.arange(r0, min(r0 + 2048, n), device=q.device)
            s = (q[0, head, rows].float() @ kf.T) * scale
            s = s.masked_fill(cols[None] > rows[:, None] + m, float("-inf"))
            out[0, head, rows] = s.softmax(-1) @ vf
    return out


def merge(o1, l1, o2, l2):
    """Two attentions over disjoint key sets -> the attention over their union."""
    lse = torch.logaddexp(l1, l2)
    w1, w2 = torch.exp(l1 - lse)[..., None], torch.exp(l2 - lse)[..., None]
    return (o1.float() * w1 + o2.float() * w2).to(o1.dtype)


def probe(name: str, h: int, h_kv: int, n: int, m: int, quick: bool) -> dict:
    d, scale = 128, 128**-0.5
    torch.manual_seed(0)
    q = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, h_kv, m + n, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    ref = reference(q, k, v, m, scale)
    flops = 4 * n * h * d * (m + n / 2)
    row: dict = {"shape": name, "heads": h, "kv_heads": h_kv, "rows": n, "memory": m, "gflop": flops / 1e9}
    flex = torch.compile(flex_attention, dynamic=False)

    def one(key, fn, out_fn=None):
        try:
            t0 = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            ms = timed(fn)
            err = rel_err(out_fn(out) if out_fn else out, ref) if out_fn is not False else None
            row[key] = {"ms": ms, "rel_err": err, "first_call_s": first}
        except Exception as e:  # a kernel this build lacks
            row[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(name, key, row[key], flush=True)

    def whole(b, hh, qi, ki):
        return ki <= qi + m

    bm_whole = create_block_mask(whole, None, None, n, m + n, device="cuda")
    one("flex one call", lambda: flex(q, k, v, block_mask=bm_whole, scale=scale, enable_gqa=True))

    km, vm = k[:, :, :m], v[:, :, :m]
    kw, vw = k[:, :, m:], v[:, :, m:]

    def causal(b, hh, qi, ki):
        return ki <= qi

    bm_win = create_block_mask(causal, None, None, n, n, device="cuda")
    win = {}

    def window_part():
        win["o"], win["l"] = flex(q, kw, vw, block_mask=bm_win, scale=scale, enable_gqa=True, return_lse=True)
        return win["o"]

    one("window part (flex, causal)", window_part, out_fn=False)
    parts = {}
    for opt_name, opts in FLEX_OPTIONS.items():
        if quick and opt_name not in ("default", "tma"):
            continue

        def mem_flex(opts=opts):
            return flex(q, km, vm, scale=scale, enable_gqa=True, return_lse=True, kernel_options=opts)

        key = f"memory part: flex {opt_name}"
        one(key, mem_flex, out_fn=lambda r: merge(r[0], r[1], win["o"], win["l"]))
        if "ms" in row[key]:
            parts[key] = row[key]["ms"]

    def mem_flash():
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, km, vm, 0.0, False, False, scale=scale)[:2]
        return o, lse

    def cudnn(kk, vv):
        op = torch.ops.aten._scaled_dot_product_cudnn_attention
        o, lse = op(q, kk, vv, None, True, 0.0, False, False, scale=scale)[:2]
        return o, lse.view(lse.shape[0], lse.shape[1], lse.shape[2])

    g = h // h_kv
    kr, vr = km.repeat_interleave(g, 1), vm.repeat_interleave(g, 1)

    def mem_cudnn():
        return cudnn(km, vm)

    def mem_cudnn_rep():
        return cudnn(kr, vr)

    for key, fn in [
        ("memory part: flash (gqa)", mem_flash),
        ("memory part: cudnn (gqa)", mem_cudnn),
        ("memory part: cudnn (kv repeated, repeat not timed)", mem_cudnn_rep),
    ]:
        one(key, fn, out_fn=lambda r: merge(r[0], r[1], win["o"], win["l"]))
        if "ms" in row[key]:
            parts[key] = row[key]["ms"]
    merged = torch.compile(merge, dynamic=False)
    if "o" in win:
        o1, l1 = win["o"].clone(), win["l"].clone()
        one("merge (compiled)", lambda: merged(o1, l1, win["o"], win["l"]), out_fn=False)
    if parts and "ms" in row.get("window part (flex, causal)", {}) and "ms" in row.get("merge (compiled)", {}):
        best = min(parts, key=parts.get)
        total = parts[best] + row["window part (flex, causal)"]["ms"] + row["merge (compiled)"]["ms"]
        row["best split"] = {"memory kernel": best, "ms": total}
        row["split vs one call"] = row["flex one call"]["ms"] / total if "ms" in row["flex one call"] else None
    row["tflops one call"] = flops / row["flex one call"]["ms"] / 1e9 if "ms" in row["flex one call"] else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--quick", action="store_true", help="only the default and TMA flex options")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from bench.condense import environment

    # every shape and kernel option compiles FlexAttention anew: past dynamo's recompile limit it
    # would silently run the eager reference (seen: 20-60x slower), so lift the limit
    torch._dynamo.config.recompile_limit = 256

    rows = []
    for s in args.shapes.split(","):
        try:
            rows.append(probe(s, *SHAPES[s], quick=args.quick))
        except Exception as e:  # keep the other shapes' numbers
            rows.append({"shape": s, "error": f"{type(e).__name__}: {e}"[:500]})
        torch.cuda.empty_cache()
    result = {"command": "python -m bench.memory_attention_probe " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)),
        "env": environment(), "rows": rows}  # fmt: skip
    for r in rows:
        print(r["shape"], "one call", r.get("flex one call"), "best split", r.get("best split"), r.get("error", ""))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
