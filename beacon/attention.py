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
    """How one chunk's attention is computed (shared by all layers of the pass)."""

    mode: str
    n_outer: int
    n_window: int  # c + n window columns (copies excluded)
    row_order: torch.Tensor | None  # (n,) rows in attention order (None: slot order)
    row_inverse: torch.Tensor | None  # (n,) back to slot order
    col_order: torch.Tensor | None  # (c + n,) window columns in attention order (None: as stored)
    n_prefix_rows: int  # split: rows [0, n_prefix_rows) attend the causal prefix
    n_prefix_keys: int  # split: ... of this many keys (O included)
    mask: torch.Tensor | None  # dense: (n, m + k + p) bool; split: (n - n_prefix_rows, m + k + p)


def _maybe(order: torch.Tensor) -> torch.Tensor | None:
    return None if torch.equal(order, torch.arange(order.shape[0])) else order


def plan_attention(cfg: BeaconConfig, chunk: Chunk, meta: dict[str, torch.Tensor], mode: str = "auto") -> AttnLayout:
    """Choose the mode and orders for `chunk`; index tensors end up on meta's device."""
    if mode not in MODES:
        raise ValueError(f"attention mode {mode!r}: choose one of {MODES}")
    single = len(chunk.steps) == 1
    if mode == "auto":
        mode = "dense" if not single else ("causal" if cfg.beacon_attn == "full-coverage" else "split")
    if mode in ("causal", "split") and not single:
        raise ValueError(f"attention mode {mode!r} needs one window per pass (beacon_parallel_window=1)")
    if mode == "causal" and cfg.beacon_attn != "full-coverage":
        raise ValueError("attention mode 'causal' is exact only for beacon_attn='full-coverage'")
    device = meta["pos"].device
    c, n, m = chunk.n_cached, chunk.n_rows, chunk.n_outer
    rows_e = chunk.cols.e[c:]
    if mode == "dense":
        mask = torch.cat([torch.ones(n, m, dtype=torch.bool, device=device), window_mask(cfg, meta, c)], dim=1)
        return AttnLayout("dense", m, c + n, None, None, None, 0, 0, mask)
    if mode == "causal":  # reading order = order of the logical index e (cached entries already are)
        row_order = torch.argsort(rows_e)
        order = _maybe(row_order)
        col_order = None if order is None else torch.cat([torch.arange(c), c + row_order])
        return AttnLayout(
            "causal", m, c + n, *_to(device, order, _inverse(order), col_order), n_prefix_rows=n,
            n_prefix_keys=m + c + n, mask=None,
        )
    # split: raw columns first (cached raws, raw rows), then beacon columns (cached, rows)
    beacon = chunk.cols.beacon
    col_order = torch.cat([torch.nonzero(beacon == 0).flatten(), torch.nonzero(beacon == 1).flatten()])
    n_raw_cols = int((beacon == 0).sum())
    col = _maybe(col_order)
    full = torch.cat([torch.ones(n, m, dtype=torch.bool, device=device), window_mask(cfg, meta, c)], dim=1)
    col_dev = torch.cat([torch.arange(m), m + col_order, m + c + n + torch.arange(chunk.n_copies)]).to(device)
    beacon_mask = full[chunk.n_raw :][:, col_dev]
    return AttnLayout(
        "split", m, c + n, None, None, *_to(device, col), n_prefix_rows=chunk.n_raw,
        n_prefix_keys=m + n_raw_cols, mask=beacon_mask,
    )


def _inverse(order: torch.Tensor | None) -> torch.Tensor | None:
    if order is None:
        return None
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.shape[0])
    return inv


def _to(device: torch.device, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.to(device, non_blocking=True) for t in tensors]


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
    if gqa:  # the lower-right causal kernels want equal head counts
        rep = q.shape[1] // k.shape[1]
        kp, vp = kp.repeat_interleave(rep, dim=1), vp.repeat_interleave(rep, dim=1)
    out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=causal_lower_right(n_rows, n_keys), scale=scale)
    if layout.mode == "causal":
        return out
    rest = F.scaled_dot_product_attention(
        q[:, :, n_rows:], k, v, attn_mask=layout.mask, scale=scale, enable_gqa=gqa
    )  # the beacon rows: few queries, dense mask
    return torch.cat([out, rest], dim=2)
