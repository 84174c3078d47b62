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

Every mode computes exactly the same function; tests hold them to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .config import BeaconConfig
from .windows import Chunk, window_mask

MODES = ("auto", "causal", "split", "dense")


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


def _maybe(order: torch.Tensor) -> torch.Tensor | None:
    return None if torch.equal(order, torch.arange(order.shape[0])) else order


def plan_attention(cfg: BeaconConfig, chunk: Chunk, mode: str = "auto") -> AttnLayout:
    """Choose the mode and the row/column orders for `chunk` (host side, no device work)."""
    if mode not in MODES:
        raise ValueError(f"attention mode {mode!r}: choose one of {MODES}")
    single = len(chunk.steps) == 1
    if mode == "auto":
        mode = "dense" if not single else ("causal" if cfg.beacon_attn == "full-coverage" else "split")
    if mode in ("causal", "split") and not single:
        raise ValueError(f"attention mode {mode!r} needs one window per pass (beacon_parallel_window=1)")
    if mode == "causal" and cfg.beacon_attn != "full-coverage":
        raise ValueError("attention mode 'causal' is exact only for beacon_attn='full-coverage'")
    c, n, m = chunk.n_cached, chunk.n_rows, chunk.n_outer
    if mode == "dense":
        return AttnLayout("dense", m, c + n, 0, 0, {})
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
    full = torch.cat([torch.ones(n, m, dtype=torch.bool, device=device), window_mask(cfg, meta, c)], dim=1)
    layout.mask = full if layout.mode == "dense" else full[chunk.n_raw :][:, meta["att_mask_cols"]]
    return layout


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttnLayout, scale: float, gqa: bool
) -> torch.Tensor:
    """Attention output (b, h, n, d) in the rows' attention order.

    q: (b, h, n, d) rows in `layout.row_order`; k, v: (b, h_kv, m + k + p, d) with window columns
    in `layout.col_order` — both already RoPE'd by the caller.
    """
    if layout.mode == "dense":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask, scale=scale, enable_gqa=gqa)
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
