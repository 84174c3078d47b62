"""Attention of a chunk's rows over [O | window entries | copies], choosing the cheapest exact kernel.

Shapes: b batch, h query heads, h_kv key/value heads, n rows (queries), m = |O|, c cached window
entries, k = c + n window columns, p copies. The mask rule lives in windows.window_mask; here we
only pick an order of rows and columns in which that mask becomes something a fused kernel does:

  "causal"  full-coverage, one window per pass: in reading order the mask *is* lower-right causal
            over [O | cached | rows] -> FlashAttention via SDPA's causal_lower_right bias.
  "split"   step-expansion/segmentation, one window per pass: raw rows see O and earlier raw entries
            only -> with columns ordered [O | raw entries | beacon entries] they attend a causal
            prefix (flash); the few beacon rows use a dense boolean mask.
  "dense"   anything else (parallel windows): one SDPA call with the dense boolean mask.
  "flex"    (CUDA) FlexAttention with a block mask built from the same rule: O blocks are dense,
            blocks no row sees are skipped — the choice for parallel windows on a GPU.

Every mode computes exactly the same function; tests hold them to each other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .config import BeaconConfig
from .windows import Chunk, window_mask

MODES = ("auto", "causal", "split", "dense", "flex")
FLEX_BLOCK = 128


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
    block_mask: object | None = None  # flex: a BlockMask


def _maybe(order: torch.Tensor) -> torch.Tensor | None:
    return None if torch.equal(order, torch.arange(order.shape[0])) else order


def plan_attention(cfg: BeaconConfig, chunk: Chunk, mode: str = "auto", flex_ok: bool = False) -> AttnLayout:
    """Choose the mode and the row/column orders for `chunk` (host side, no device work).

    "auto": one window per pass -> causal (full-coverage) or split; several -> flex where
    `flex_ok` (CUDA with bf16/fp16: its float32 dots would round like TF32), dense elsewhere.
    """
    if mode not in MODES:
        raise ValueError(f"attention mode {mode!r}: choose one of {MODES}")
    single = len(chunk.steps) == 1
    auto = mode == "auto"
    if mode == "auto":
        mode = "dense" if not single else ("causal" if cfg.beacon_attn == "full-coverage" else "split")
    if mode == "dense" and not single and flex_ok and auto:  # parallel windows on a GPU: block-sparse
        mode = "flex"
    if mode in ("causal", "split") and not single:
        raise ValueError(f"attention mode {mode!r} needs one window per pass (beacon_parallel_window=1)")
    if mode == "causal" and cfg.beacon_attn != "full-coverage":
        raise ValueError("attention mode 'causal' is exact only for beacon_attn='full-coverage'")
    c, n, m = chunk.n_cached, chunk.n_rows, chunk.n_outer
    if mode in ("dense", "flex"):
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


def finish_layout(cfg: BeaconConfig, layout: AttnLayout, chunk: Chunk, meta: dict[str, torch.Tensor]) -> AttnLayout:
    """Attach the moved index vectors and build masks on meta's device."""
    layout.row_order = meta.get("att_row_order")
    layout.row_inverse = meta.get("att_row_inverse")
    layout.col_order = meta.get("att_col_order")
    if layout.mode == "causal":
        return layout
    c, n, m = chunk.n_cached, chunk.n_rows, chunk.n_outer
    device = meta["pos"].device
    if layout.mode == "flex":
        layout.block_mask = flex_block_mask(cfg, meta, chunk)
        return layout
    full = torch.cat([torch.ones(n, m, dtype=torch.bool, device=device), window_mask(cfg, meta, c)], dim=1)
    layout.mask = full if layout.mode == "dense" else full[chunk.n_raw :][:, meta["att_mask_cols"]]
    return layout


def _mask_mod(cfg: BeaconConfig, meta: dict[str, torch.Tensor], chunk: Chunk):
    """windows.window_mask's rule, one (query, key) pair at a time, for FlexAttention."""
    c, n, m = chunk.n_cached, chunk.n_rows, chunk.n_outer
    k_cols = c + n
    beacon, idx, e, window, ratio = meta["beacon"], meta["idx"], meta["e"], meta["window"], meta["row_ratio"]
    copy_window = meta["copy_window"]
    if copy_window.numel() == 0:
        copy_window = torch.zeros(1, dtype=torch.long, device=beacon.device)
    n_copy = copy_window.numel()
    scheme, prev = cfg.beacon_attn, cfg.beacon_attend_prev

    def mask_mod(b, h, q_idx, kv_idx):
        row = torch.clamp(q_idx, 0, n - 1) + c
        w = kv_idx - m
        col = torch.clamp(w, 0, k_cols - 1)
        earlier = e[col] < e[row]
        col_beacon, row_beacon = beacon[col] == 1, beacon[row] == 1
        if scheme == "full-coverage":
            raw_row, beacon_row = earlier, earlier
        else:
            reach = (idx[row] + 1) * ratio[row - c]
            see_raw = earlier & (idx[col] < reach)
            if scheme == "segmentation":
                see_raw = see_raw & (idx[col] >= idx[row] * ratio[row - c])
            raw_row = earlier & ~col_beacon
            beacon_row = torch.where(col_beacon, earlier & prev, see_raw)
        own = (torch.where(row_beacon, beacon_row, raw_row) | (e[col] == e[row])) & (window[col] == window[row])
        copy_ok = copy_window[torch.clamp(w - k_cols, 0, n_copy - 1)] < window[row]
        return (kv_idx < m) | ((w >= 0) & (w < k_cols) & own) | ((w >= k_cols) & copy_ok)

    return mask_mod


def flex_block_mask(cfg: BeaconConfig, meta: dict[str, torch.Tensor], chunk: Chunk):
    """A FlexAttention BlockMask for the chunk, built from the dense window part only.

    O columns are always visible, so their blocks are full; the window part (n x (k + p), small)
    is reduced to blocks: none visible -> skipped, all visible -> full, else partial (mask_mod).
    """
    from torch.nn.attention.flex_attention import BlockMask

    size = FLEX_BLOCK
    c, n, m = chunk.n_cached, chunk.n_rows, chunk.n_outer
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
        mask_mod=_mask_mod(cfg, meta, chunk),
        seq_lengths=(n, n_keys),
    )


@functools.cache
def _flex_attention(cuda: bool):
    """FlexAttention, compiled once per process on CUDA (dynamic shapes: memory grows every pass);
    on the CPU its eager reference (correct, slow — the CPU compiler fails on our mask_mod)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if cuda else flex_attention


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout, scale: float, gqa: bool
) -> torch.Tensor:
    """Attention output (b, h, n, d) in the rows' attention order.

    q: (b, h, n, d) rows in `layout.row_order`; k, v: (b, h_kv, m + k + p, d) with window columns
    in `layout.col_order` — both already RoPE'd by the caller.
    """
    if layout.mode == "dense":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask, scale=scale, enable_gqa=gqa)
    if layout.mode == "flex":
        flex = _flex_attention(q.device.type == "cuda")
        return flex(q, k, v, block_mask=layout.block_mask, scale=scale, enable_gqa=gqa)
    n_rows, n_keys = layout.n_prefix_rows, layout.n_prefix_keys
    qp, kp, vp = q[:, :, :n_rows], k[:, :, :n_keys], v[:, :, :n_keys]
    bias = causal_lower_right(n_rows, n_keys)  # flash kernel on CUDA (GQA native)
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=bias, scale=scale, enable_gqa=gqa)
    if layout.mode == "causal":
        return out
    rest = F.scaled_dot_product_attention(
        q[:, :, n_rows:], k, v, attn_mask=layout.mask, scale=scale, enable_gqa=gqa
    )  # the beacon rows: few queries, dense mask
    return torch.cat([out, rest], dim=2)
