"""Attention of a chunk's rows over [O | window entries | copies], choosing the cheapest exact kernel.

Shapes: b batch, h query heads, h_kv key/value heads, n rows (queries), m = |O|, c cached window
entries, k = c + n window columns, p copies. The mask rule lives in windows.visible; here we
only pick an order of rows and columns in which that mask becomes something a fused kernel does:

  "causal"  full-coverage, one window per pass: in reading order the mask *is* lower-right causal
            over [O | cached | rows] -> FlashAttention via SDPA's causal_lower_right bias.
  "split"   step-expansion/segmentation, one window per pass: raw rows see O and earlier raw entries
            only -> with columns ordered [O | raw entries | beacon entries] they attend a causal
            prefix (flash); the few beacon rows use a dense boolean mask.
  "dense"   anything else (parallel windows): one SDPA call with the dense boolean mask.
  "flex"    (CUDA) FlexAttention with a block mask built from the same rule: O blocks are dense,
            blocks no row sees are skipped — the choice for parallel windows on a GPU.
  "flex-outer"  "flex" with O attended apart: every row sees all of O, so that part needs no mask
            and goes to the fastest unmasked kernel (cuDNN on a GPU: 1.6x FlexAttention's rate
            over a long memory, docs/performance.md); FlexAttention covers the window, and the two
            are merged by their log-sum-exps. "auto" takes it for parallel windows on a GPU once
            |O| >= OUTER_APART_MIN, at inference (the fused kernels' backward ignores the
            log-sum-exp, so training keeps "flex").

Every mode computes exactly the same function; tests hold them to each other. A decode step's
rows attend a decoder's static buffers instead, all slots under one mask (attend_slots).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from .config import BeaconConfig
from .windows import Chunk, sees_copy, visible, window_mask

MODES = ("auto", "causal", "split", "dense", "flex", "flex-outer")
INFERENCE_ONLY = ("flex-outer",)  # its kernels' backward ignores the log-sum-exp
FLEX_BLOCK = 128
# |O| from which "auto" attends O apart: below it the saving is smaller than the merge's cost
# (kernels alone: docs/engine.md, "Why auto attends a long memory apart")
OUTER_APART_MIN = 4096
# SDPA kernels for a pass that trains (CUDA): all but cuDNN, whose backward returns nan query
# gradients for a mask tensor over keys % 128 == 64 where a row's log-sum-exp is below -88.7 —
# what Qwen2.5's massive-activation heads give (pytorch/pytorch#196678: every step of a Qwen 0.5B
# training run was nan). Flash or memory-efficient attention serve the same masks.
TRAIN_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
SDPA_MIN_ROWS = 8  # decode steps (attend_slots) of this many rows or more go to F.scaled_dot_product_attention
# torch.bmm(..., out_dtype=float32) on CUDA (bf16/fp16 in, float32 out) exists from torch 2.8
_HAS_OUT_DTYPE = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 8)


@dataclass
class AttnLayout:
    """How one chunk's attention is computed (shared by all layers of the pass).

    Built in two halves: `plan_attention` decides on the host (index vectors in `host`), then
    `finish_layout` takes those vectors moved to the device and builds any mask there.
    """

    mode: str
    n_outer: int
    n_window: int  # c + n window columns (copies excluded)
    n_prefix_rows: int  # causal/split: rows [0, n_prefix_rows) attend the causal prefix
    n_prefix_keys: int  # ... of this many keys (O included)
    host: dict[str, torch.Tensor]  # index vectors to move with the chunk's metadata
    row_order: torch.Tensor | None = None  # (n,) rows in attention order (None: slot order)
    row_inverse: torch.Tensor | None = None  # (n,) back to slot order
    col_order: torch.Tensor | None = None  # (c + n,) window columns in attention order
    mask: torch.Tensor | None = None  # dense: (n, m + k + p) bool; split: (n - n_prefix_rows, m + k + p)
    # causal/split: the prefix's causal_lower_right bias, made here: constructed inside the compiled
    # decoder layer it breaks the graph, and the piece after the break recompiles on strides
    causal: object | None = None
    block_mask: object | None = None  # flex: a BlockMask (flex-outer: of the window columns only)
    outer_kernel: str = ""  # flex-outer: "cudnn", "flash" or "cpu" (unmasked_kernel), chosen on the host
    merge: object | None = None  # flex-outer: merge_attention, compiled on CUDA


def _maybe(order: torch.Tensor) -> torch.Tensor | None:
    return None if torch.equal(order, torch.arange(order.shape[0])) else order


def plan_attention(cfg: BeaconConfig, chunk: Chunk, mode: str = "auto", flex_ok: bool = False) -> AttnLayout:
    """Choose the mode and the row/column orders for `chunk` (host side, no device work).

    "auto": one window per pass -> causal (full-coverage) or split; several -> flex where
    `flex_ok` (CUDA with bf16/fp16: its float32 dots would round like TF32), dense elsewhere;
    flex-outer instead of flex over a long O at inference.
    """
    if mode not in MODES:
        raise ValueError(f"attention mode {mode!r}: choose one of {MODES}")
    single = len(chunk.steps) == 1
    auto = mode == "auto"
    if mode == "auto":
        mode = "dense" if not single else ("causal" if cfg.beacon_attn == "full-coverage" else "split")
    if mode == "dense" and not single and flex_ok and auto:  # parallel windows on a GPU: block-sparse
        mode = "flex-outer" if chunk.n_outer >= OUTER_APART_MIN and not torch.is_grad_enabled() else "flex"
    if mode in INFERENCE_ONLY and torch.is_grad_enabled():
        raise ValueError(
            f"attention mode {mode!r} is for inference (its kernels' backward ignores the log-sum-exp):"
            " run under torch.no_grad() or use 'flex'"
        )
    if mode in ("causal", "split") and not single:
        raise ValueError(f"attention mode {mode!r} needs one window per pass (beacon_parallel_window=1)")
    if mode == "causal" and cfg.beacon_attn != "full-coverage":
        raise ValueError("attention mode 'causal' is exact only for beacon_attn='full-coverage'")
    c, n, m = chunk.n_cached, chunk.n_rows, chunk.n_outer
    if mode == "flex-outer" and m == 0:
        mode = "flex"  # no O to attend apart
    if mode in ("dense", "flex", "flex-outer"):
        return AttnLayout(mode, m, c + n, 0, 0, {})
    if mode == "causal":  # reading order = order of the logical index e (cached entries already are)
        order = _maybe(torch.argsort(chunk.cols.e[c:]))
        host = {}
        if order is not None:
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(n)
            host = {
                "att_row_order": order,
                "att_row_inverse": inverse,
                "att_col_order": torch.cat([torch.arange(c), c + order]),
            }
        return AttnLayout("causal", m, c + n, n, m + c + n, host)
    # split: raw columns first (cached raws, raw rows), then beacon columns (cached, rows)
    beacon = chunk.cols.beacon
    col_order = torch.argsort(beacon, stable=True)
    n_raw_cols = int((beacon == 0).sum())
    host = {"att_mask_cols": torch.cat([torch.arange(m), m + col_order, m + c + n + torch.arange(chunk.n_copies)])}
    if _maybe(col_order) is not None:
        host["att_col_order"] = col_order
    return AttnLayout("split", m, c + n, chunk.n_raw, m + n_raw_cols, host)


def finish_layout(
    cfg: BeaconConfig,
    layout: AttnLayout,
    chunk: Chunk,
    meta: dict[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    head_dim: int | None = None,
) -> AttnLayout:
    """Attach the moved index vectors and build masks on meta's device; for flex-outer, pick the
    kernel over O for the model's `dtype` and `head_dim` here, outside any compiled code."""
    layout.row_order = meta.get("att_row_order")
    layout.row_inverse = meta.get("att_row_inverse")
    layout.col_order = meta.get("att_col_order")
    if layout.mode in ("causal", "split"):
        layout.causal = causal_lower_right(layout.n_prefix_rows, layout.n_prefix_keys)  # flash on CUDA (GQA native)
    if layout.mode == "causal":
        return layout
    c, n, m = chunk.n_cached, chunk.n_rows, chunk.n_outer
    device = meta["pos"].device
    if layout.mode in ("flex", "flex-outer"):
        layout.block_mask = flex_block_mask(cfg, meta, chunk, with_outer=layout.mode == "flex")
        if layout.mode == "flex-outer":
            if dtype is None or head_dim is None:
                raise ValueError("flex-outer needs the model's dtype and head_dim to choose its kernel")
            layout.outer_kernel = unmasked_kernel(device, dtype, head_dim)
            layout.merge = _merger(device.type == "cuda")
        return layout
    full = torch.cat([torch.ones(n, m, dtype=torch.bool, device=device), window_mask(cfg, meta, c)], dim=1)
    layout.mask = full if layout.mode == "dense" else full[chunk.n_raw :][:, meta["att_mask_cols"]]
    return layout


def _mask_mod(cfg: BeaconConfig, meta: dict[str, torch.Tensor], chunk: Chunk, with_outer: bool = True):
    """windows.visible, one (query, key) pair at a time, for FlexAttention (keys: O, if `with_outer`,
    then the window columns and copies)."""
    c, n = chunk.n_cached, chunk.n_rows
    m = chunk.n_outer if with_outer else 0
    k_cols = c + n
    beacon, idx, e, window, ratio = meta["beacon"], meta["idx"], meta["e"], meta["window"], meta["row_ratio"]
    copy_window = meta["copy_window"]
    if copy_window.numel() == 0:
        copy_window = torch.zeros(1, dtype=torch.long, device=beacon.device)
    n_copy = copy_window.numel()

    def mask_mod(b, h, q_idx, kv_idx):
        row = torch.clamp(q_idx, 0, n - 1) + c
        w = kv_idx - m
        col = torch.clamp(w, 0, k_cols - 1)
        own = visible(
            cfg,
            (beacon[row] == 1, idx[row], e[row], window[row], ratio[row - c]),
            (beacon[col] == 1, idx[col], e[col], window[col]),
        )
        copy_ok = sees_copy(copy_window[torch.clamp(w - k_cols, 0, n_copy - 1)], window[row])
        return (kv_idx < m) | ((w >= 0) & (w < k_cols) & own) | ((w >= k_cols) & copy_ok)

    return mask_mod


def flex_block_mask(cfg: BeaconConfig, meta: dict[str, torch.Tensor], chunk: Chunk, with_outer: bool = True):
    """A FlexAttention BlockMask for the chunk, built from the dense window part only.

    O columns are always visible, so their blocks are full; the window part (n x (k + p), small)
    is reduced to blocks: none visible -> skipped, all visible -> full, else partial (mask_mod).
    `with_outer=False`: a mask over the window columns and copies alone (flex-outer).
    """
    from torch.nn.attention.flex_attention import BlockMask

    size = FLEX_BLOCK
    c, n = chunk.n_cached, chunk.n_rows
    m = chunk.n_outer if with_outer else 0
    wm = window_mask(cfg, meta, c)  # (n, k + p)
    lead, m_blocks = m % size, m // size
    wm = F.pad(wm, (lead, 0), value=True)  # the O columns sharing a block with the window
    wm = F.pad(wm, (0, (-wm.shape[1]) % size, 0, (-n) % size), value=False)
    rows, cols = wm.shape[0] // size, wm.shape[1] // size
    blocks = wm.view(rows, size, cols, size)
    any_, all_ = blocks.any(dim=3).any(dim=1), blocks.all(dim=3).all(dim=1)
    ones = torch.ones(rows, m_blocks, dtype=torch.bool, device=wm.device)
    full = torch.cat([ones, all_], dim=1)
    partial = torch.cat([~ones, any_ & ~all_], dim=1)

    def indices(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = blocks.sum(dim=-1, dtype=torch.int32)
        order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return count[None, None], order[None, None]

    kv_num, kv_idx = indices(partial)
    full_num, full_idx = indices(full)
    n_keys = m + chunk.n_window_keys
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=size,
        mask_mod=_mask_mod(cfg, meta, chunk, with_outer),
        seq_lengths=(n, n_keys),
    )


@functools.cache
def _flex_attention(cuda: bool):
    """FlexAttention, compiled once per process on CUDA (dynamic shapes: memory grows every pass);
    on the CPU its eager reference (correct, slow — the CPU compiler fails on our mask_mod)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if cuda else flex_attention


def attend(
    q: torch.Tensor,
    k_outer: torch.Tensor,
    v_outer: torch.Tensor,
    k_win: torch.Tensor,
    v_win: torch.Tensor,
    layout: AttnLayout,
    scale: float,
    gqa: bool,
) -> torch.Tensor:
    """Attention output (b, h, n, d) in the rows' attention order.

    q: (b, h, n, d) rows in `layout.row_order`; k_outer, v_outer: (b, h_kv, m, d) the memory O;
    k_win, v_win: (b, h_kv, k + p, d) window columns in `layout.col_order`, then copies — keys
    already RoPE'd by the caller. Keys are [O | window | copies] in that order.
    """
    if layout.mode == "flex-outer":
        out_o, lse_o = attend_unmasked(q, k_outer, v_outer, scale, layout.outer_kernel)
        flex = _flex_attention(q.device.type == "cuda")
        out_w, lse_w = flex(q, k_win, v_win, block_mask=layout.block_mask, scale=scale, enable_gqa=gqa, **_LSE)
        if not isinstance(lse_w, torch.Tensor):  # AuxOutput
            lse_w = lse_w.lse
        return layout.merge(out_o, lse_o, out_w, lse_w)
    k = torch.cat([k_outer, k_win], dim=2)
    v = torch.cat([v_outer, v_win], dim=2)
    if layout.mode == "flex":
        flex = _flex_attention(q.device.type == "cuda")
        return flex(q, k, v, block_mask=layout.block_mask, scale=scale, enable_gqa=gqa)
    if q.is_cuda and torch.is_grad_enabled():  # no cuDNN where gradients are taken (TRAIN_SDPA says why)
        if gqa:  # SDPA's GQA is flash or math only: heads repeated, the memory-efficient kernel takes masks
            group = q.shape[1] // k.shape[1]
            k, v, gqa = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1), False
        with sdpa_kernel(TRAIN_SDPA):
            return _attend_sdpa(q, k, v, layout, scale, gqa)
    return _attend_sdpa(q, k, v, layout, scale, gqa)


def _attend_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout, scale: float, gqa: bool
) -> torch.Tensor:
    """attend's "dense", "causal" and "split" modes: scaled_dot_product_attention over k, v = [O | window]."""
    if layout.mode == "dense":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask, scale=scale, enable_gqa=gqa)
    n_rows, n_keys = layout.n_prefix_rows, layout.n_prefix_keys
    qp, kp, vp = q[:, :, :n_rows], k[:, :, :n_keys], v[:, :, :n_keys]
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=layout.causal, scale=scale, enable_gqa=gqa)
    if layout.mode == "causal":
        return out
    rest = F.scaled_dot_product_attention(
        q[:, :, n_rows:], k, v, attn_mask=layout.mask, scale=scale, enable_gqa=gqa
    )  # the beacon rows: few queries, dense mask
    return torch.cat([out, rest], dim=2)


def attend_slots(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """A decode step's attention (layer.step_layer): q (b, h, n, d) over all slots of k, v
    (b, h_kv, cap, d) where mask (n, cap) allows — or mask (b, n, cap), one per batch row (several
    decoders' steps stacked: layer.step_layer_together); returns (b, h, n, d).

    A few rows take a plain matmul + softmax, which reads each key and value once and parallelises
    over the whole key axis: query heads grouped under their key/value head (h = h_kv * group, as
    HF's repeat_kv), scores and softmax in float32, P·V in the values' dtype. SDPA_MIN_ROWS rows or
    more (a question) take PyTorch's fused scaled_dot_product_attention with the same mask.
    """
    b, h, n, d = q.shape
    h_kv, cap = k.shape[1], k.shape[2]
    group = h // h_kv
    per_row = mask.dim() == 3
    if n >= SDPA_MIN_ROWS:
        attn_mask = mask[:, None] if per_row else mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=group > 1)
    qg = q.reshape(b * h_kv, group * n, d)
    kt = k.reshape(b * h_kv, cap, d).transpose(1, 2)
    if q.dtype == torch.float32:
        scores = torch.bmm(qg, kt)
    elif q.is_cuda and _HAS_OUT_DTYPE:
        scores = torch.bmm(qg, kt, out_dtype=torch.float32)  # bf16 inputs, float32 products
    else:
        scores = torch.bmm(qg.float(), kt.float())
    scores = (scores * scale).view(b, h_kv, group, n, cap)
    scores = torch.where(mask[:, None, None] if per_row else mask, scores, float("-inf"))  # one kernel, no ~mask
    probs = F.softmax(scores, dim=-1).to(v.dtype).view(b * h_kv, group * n, cap)
    out = torch.bmm(probs, v.reshape(b * h_kv, cap, d))
    return out.view(b, h, n, d)


def _attention_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, hidden: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention in float32 math with its log-sum-exp, for where no fused kernel returns one.
    q (..., h, n, d), k / v (..., h_kv, m, d) (GQA: key/value heads repeated); `hidden` (n, m) True
    where a query must not see a key. Returns (out in q's dtype, lse (..., h, n) float32)."""
    g = q.shape[-3] // k.shape[-3]
    scores = (q.float() @ k.float().repeat_interleave(g, -3).transpose(-1, -2)) * scale
    if hidden is not None:
        scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse[..., None]) @ v.float().repeat_interleave(g, -3)
    return out.to(q.dtype), lse


def _lse_request() -> dict:
    """FlexAttention's keyword for the log-sum-exp (return_aux from torch 2.9, return_lse before)."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest

        return {"return_aux": AuxRequest(lse=True)}
    except ImportError:
        return {"return_lse": True}


_LSE = _lse_request()


def attend_unmasked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, kernel: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row over every key, no mask: (output (b, h, n, d), log-sum-exp (b, h, n) float32).

    kernel (unmasked_kernel): "cudnn" / "flash" (CUDA, both GQA-native), "cpu" (the fused CPU
    kernel) or "math" (CUDA float32, as the GPU test runs of the tiny models use). Graph-safe: no
    host work, so it runs inside a compiled decoder layer."""
    if kernel == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)[:2]
        return out, lse
    if kernel == "math":  # CUDA, float32: no fused kernel returns the log-sum-exp
        return _attention_math(q, k, v, scale)
    if kernel == "cudnn":  # O's values are a slice of the memory's: strided, as _cudnn_serves checks
        op = torch.ops.aten._scaled_dot_product_cudnn_attention
        out, lse = op(q, k, v, None, True, 0.0, False, False, scale=scale)[:2]
        return out, lse.view(q.shape[:3])
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    return out, lse


def unmasked_kernel(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The kernel attend_unmasked should use here: "cpu" off CUDA; "math" for float32 on CUDA;
    "cudnn" where this build runs cuDNN's attention for this dtype and head dim and it agrees with
    FlashAttention; else "flash"."""
    if device.type != "cuda":
        return "cpu"
    if dtype not in (torch.bfloat16, torch.float16):
        return "math"
    return "cudnn" if _cudnn_serves(device.index, dtype, head_dim) else "flash"


@functools.cache
def _cudnn_serves(device_index: int | None, dtype: torch.dtype, head_dim: int) -> bool:
    """Asked once per process and setting: a small GQA attention through cuDNN and FlashAttention."""
    device = torch.device("cuda", device_index)
    try:
        g = torch.Generator(device=device).manual_seed(0)
        # as the engine calls it: a batch, 7 query heads per key/value head, values a slice, queries
        # (b, h, n, d) contiguous or a view of (b, n, h, d)
        q = torch.randn(2, 14, 256, head_dim, device=device, dtype=dtype, generator=g)
        k = torch.randn(2, 2, 1024, head_dim, device=device, dtype=dtype, generator=g)
        v = torch.randn(2, 2, 1024 + 96, head_dim, device=device, dtype=dtype, generator=g)[:, :, :1024]
        agree = True
        for queries in (q, q.transpose(1, 2).contiguous().transpose(1, 2)):
            out, lse = attend_unmasked(queries, k, v, head_dim**-0.5, "cudnn")
            ref, ref_lse = attend_unmasked(queries, k, v, head_dim**-0.5, "flash")
            agree &= bool((out - ref).abs().max() < 1e-2 and (lse - ref_lse).abs().max() < 1e-2)
        return agree
    except Exception:  # no cuDNN attention in this build/device/shape: FlashAttention serves
        return False


def merge_attention(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Attention over two disjoint key sets -> attention over their union (weights exp(lse_i - lse))."""
    lse = torch.logaddexp(lse_a, lse_b)
    merged = out_a.float() * torch.exp(lse_a - lse)[..., None] + out_b.float() * torch.exp(lse_b - lse)[..., None]
    return merged.to(out_a.dtype)


@functools.cache
def _merger(cuda: bool):
    """merge_attention, compiled on CUDA (one fused kernel instead of eight passes over the rows)."""
    return torch.compile(merge_attention, dynamic=True) if cuda else merge_attention
