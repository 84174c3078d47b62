"""Attention of one pass of parallel windows, by each layout the engine has, on real pass shapes.

    python -m bench.window_attention_probe --out docs/results/window_attention_probe.json

The setting of the official Qwen-2 checkpoint (interleave, full-coverage, window 2048), four
windows per pass. For each case a real Chunk is laid out (windows.plan_steps/build_chunk from a
memory of m entries) and attention.attend runs it exactly as forward.py would — same index
vectors, same masks — in every mode named, with random bf16 queries/keys of the model's heads:
  flex          FlexAttention over [O | window | copies] with the block mask
  flex-outer    O by cuDNN apart, the rest by FlexAttention, merged by log-sum-exp
  varlen        every window's rows over [O | earlier copies | own entries], lower-right causal,
                packed into one variable-length FlashAttention call
  varlen-outer  varlen without O in the key lists; O by cuDNN apart and merged
Each mode's output is compared with the dense boolean mask (SDPA) on the same inputs, and its
speed given as useful TFLOP/s (4·d per visible (query, key) pair and head).
"""

from __future__ import annotations

import argparse

import torch

from beacon import attention
from beacon.config import BeaconConfig
from beacon.windows import WindowState, build_chunk, group_steps, plan_steps, window_mask
from bench.attention_probe import bench as timed  # ms per call, CUDA events after warm-up calls

HEADS = {"qwen2-1.5b": (12, 2), "qwen2-7b": (28, 4)}
CASES = [  # (shape, ratio, memory entries m: where in a document the pass is)
    ("qwen2-7b", 8, 0),
    ("qwen2-7b", 8, 3072),  # 32K: the last pass
    ("qwen2-7b", 8, 8192),  # 128K: the middle
    ("qwen2-7b", 8, 15360),  # 128K: the last pass
    ("qwen2-7b", 2, 0),  # 8K: the only pass
    ("qwen2-7b", 2, 12288),  # 32K: the last pass
    ("qwen2-7b", 2, 61440),  # 128K: the last pass
    ("qwen2-1.5b", 8, 15360),
]
MODES = ("flex", "flex-outer", "varlen", "varlen-outer")


def pass_chunk(ratio: int, n_outer: int, parallel: int = 4, window: int = 2048):
    """The Chunk of a pass of `parallel` full windows read after a memory of `n_outer` entries."""
    cfg = BeaconConfig(
        beacon_window=window,
        beacon_stride=window,
        beacon_ratio=[ratio],
        beacon_pos="interleave",
        beacon_attn="full-coverage",
        beacon_parallel_window=parallel,
    )
    n_windows = n_outer * ratio // window
    state = WindowState(n_tokens=n_windows * window, n_beacons=n_outer, n_windows=n_windows)
    steps = plan_steps(cfg, state, parallel * window, max_positions=10**9)
    return cfg, build_chunk(cfg, group_steps(cfg, steps)[0])


def probe(shape: str, ratio: int, n_outer: int, modes: list[str]) -> dict:
    h, h_kv = HEADS[shape]
    d, scale = 128, 128**-0.5
    cfg, chunk = pass_chunk(ratio, n_outer)
    m, n, p = chunk.n_outer, chunk.n_rows, chunk.n_copies
    meta = {k: v.cuda() for k, v in chunk.host_meta().items()}
    visible = window_mask(cfg, meta, chunk.n_cached).sum().item() + n * m  # (query, key) pairs seen
    flops = 4 * d * h * visible
    row: dict = {"shape": shape, "ratio": ratio, "memory": m, "rows": n, "copies": p, "gflop": flops / 1e9}
    g = torch.Generator(device="cuda").manual_seed(0)
    q0 = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g)  # slot order
    k_outer = torch.randn(1, h_kv, m, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v_outer = torch.randn_like(k_outer)
    k_cols = torch.randn(1, h_kv, chunk.n_cached + n, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v_cols = torch.randn_like(k_cols)
    copy_src = meta["copy_src"]

    def inputs(layout):
        order, rows = layout.col_order, layout.row_order
        kc = k_cols if order is None else k_cols[:, :, order]
        vc = v_cols if order is None else v_cols[:, :, order]
        if layout.mode in attention.PACKED:  # as forward.py gives it: a view of (b, n, h, d) rows
            q = q0.transpose(1, 2)
            q = (q if rows is None else q[:, rows]).contiguous().transpose(1, 2)
        else:
            q = q0 if rows is None else q0[:, :, rows]
        return q, torch.cat([kc, k_cols[:, :, copy_src]], 2), torch.cat([vc, v_cols[:, :, copy_src]], 2)

    def run(mode: str):
        with torch.no_grad():
            layout = attention.plan_attention(cfg, chunk, mode, flex_ok=True)
            host = {k: v.cuda() for k, v in layout.host.items()}
            layout = attention.finish_layout(cfg, layout, chunk, meta | host, torch.bfloat16, d)
            q, kw, vw = inputs(layout)

            def call():
                return attention.attend(q, k_outer, v_outer, kw, vw, layout, scale, True)

            out = call().transpose(1, 2)  # (b, n, h, d), as forward.py takes it back
            if layout.row_inverse is not None:
                out = out[:, layout.row_inverse]
            return call, out

    _, ref = run("dense")
    for mode in modes:
        try:
            call, out = run(mode)
            ms = timed(call)
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            row[mode] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_err_vs_dense": err}
        except Exception as e:  # a kernel this build lacks: keep the others
            row[mode] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(shape, ratio, m, mode, row[mode], flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--cases", default=None, help="comma list of shape:ratio:memory (default: CASES)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from bench.shapes import environment, save_json

    torch._dynamo.config.recompile_limit = 256  # every case compiles FlexAttention anew
    cases = CASES
    if args.cases:
        cases = [(s, int(r), int(m)) for s, r, m in (c.split(":") for c in args.cases.split(","))]
    rows = []
    for shape, ratio, m in cases:
        try:
            rows.append(probe(shape, ratio, m, args.modes.split(",")))
        except Exception as e:  # keep the other cases' numbers
            rows.append({"shape": shape, "ratio": ratio, "memory": m, "error": f"{type(e).__name__}: {e}"[:500]})
        torch.cuda.empty_cache()
    for r in rows:
        print(r["shape"], r["ratio"], r["memory"], {k: v.get("ms") for k, v in r.items() if isinstance(v, dict)})
    if args.out:
        command = "python -m bench.window_attention_probe " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None
        )
        save_json({"command": command, "env": environment(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
