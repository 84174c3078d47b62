"""One forward pass of a chunk (see windows.Chunk) through a frozen HF decoder with beacons.

Shapes: b batch, n rows (queries) of the chunk, h / h_kv query / key-value heads, d head dim,
m = |O| outer memory entries, c cached window entries, k = c + n + copies window keys.
The decoder layer is re-composed from its modules (input_layernorm, self_attn.{q,k,v,o}_proj,
optional q_norm/k_norm, post_attention_layernorm, mlp): beacon rows use the beacon projections.
Memory tensors are replaced functionally (torch.cat), so the same code trains with autograd.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import AttnLayout, attend, finish_layout, plan_attention
from .config import BeaconConfig
from .families import Parts, apply_rope, rope_cos_sin
from .memory import Memory
from .staging import Stager
from .windows import Chunk


def _project(
    base: nn.Linear, beacon: nn.Linear | None, h: torch.Tensor, n_raw: int, beacon_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """(b, n, in) -> (b, n, out): raw rows through `base`, beacon rows through `beacon`.

    Raw rows are [:n_raw] (rows raw-first), or, where `beacon_rows` is given (the rows a trimmed
    layer keeps, see _layer), every row not listed there: `base` then runs over all rows and the
    few beacon rows are overwritten — a 1/(ratio+1) share of wasted product instead of two gathers."""
    if beacon is None:
        return base(h)
    if beacon_rows is not None:
        return base(h).index_copy(1, beacon_rows, beacon(h[:, beacon_rows]))
    if n_raw == h.shape[1]:
        return base(h)
    return torch.cat([base(h[:, :n_raw]), beacon(h[:, n_raw:])], dim=1)


def ensure_rot(
    parts: Parts,
    memory: Memory,
    layer: int | None = None,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Make memory.rot_keys hold RoPE'd keys of O (entries 0..|O|-1 at positions 0..|O|-1), for
    every layer or only `layer` (of a memory still loading: later layers may not be there yet).
    `rope`: cos/sin of positions 0..|O|-1 if the caller has them."""
    n_outer = memory.state.n_outer
    if layer is None:
        memory.ready()
    rot = memory.rot_keys if memory.rot_keys is not None else [None] * memory.n_layers
    todo = [i for i in (range(memory.n_layers) if layer is None else [layer])
            if rot[i] is None or rot[i].shape[2] != n_outer]  # fmt: skip
    if not todo:
        return
    cos, sin = rope or rope_cos_sin(parts, torch.arange(n_outer, device=memory.device), memory.keys[0])
    for i in todo:
        rot[i] = apply_rope(memory.keys[i][:, :, :n_outer], cos, sin)
    memory.rot_keys = rot


def _layer(
    parts: Parts,
    cfg: BeaconConfig,
    layer: nn.Module,
    beacon_proj: dict[str, nn.Linear],
    x: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rot_outer: torch.Tensor,
    rope_rows: tuple[torch.Tensor, torch.Tensor],
    rope_window: tuple[torch.Tensor, torch.Tensor],
    rope_joined: tuple[torch.Tensor, torch.Tensor],
    layout: AttnLayout,
    meta: dict[str, torch.Tensor],
    n_outer: int,
    n_raw: int,
    n_joined: int,
    need_output: bool = True,
    tail: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder layer over the chunk's rows. Returns (x, new keys, new values, new O rot keys).

    need_output=False (the last layer when no logits are wanted) computes only the layer's keys
    and values — all a memory keeps — and returns x unchanged. `tail` (Chunk.tail_rows, on the
    device) trims the last two layers of such a pass to the rows the memory keeps: the layer before
    the last returns x of those rows only, and the last one, given them, projects only them.
    """
    b, n, _ = x.shape
    attn = layer.self_attn
    last_trimmed = tail is not None and not need_output  # x holds only the rows the memory keeps
    beacon_rows = tail["beacon_rows"] if last_trimmed else None
    h = layer.input_layernorm(x)
    k = _project(attn.k_proj, beacon_proj.get("k"), h, n_raw, beacon_rows).view(b, n, parts.n_kv_heads, parts.head_dim)
    v = _project(attn.v_proj, beacon_proj.get("v"), h, n_raw, beacon_rows).view(b, n, parts.n_kv_heads, parts.head_dim)
    if parts.family.qk_norm:
        k = attn.k_norm(k)
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # (b, h_kv, n, d)

    # window keys in slot order: cached W (from memory) then rows; copies are picked from them
    k_win = torch.cat([keys[:, :, n_outer:], k], dim=2)  # (b, h_kv, c + n, d), pre-RoPE
    v_win = torch.cat([values[:, :, n_outer:], v], dim=2)
    if need_output:
        x = _attend_and_mlp(
            parts,
            layer,
            beacon_proj,
            x,
            h,
            k_win,
            v_win,
            values,
            rot_outer,
            rope_rows,
            rope_window,
            layout,
            meta,
            n_outer,
            n_raw,
            tail,
        )

    # memory after the pass: [O | joiners | carried W]
    compact = tail["compact"] if last_trimmed else meta["compact_src"]
    new_keys = torch.cat([keys[:, :, :n_outer], k_win[:, :, compact]], dim=2)
    new_values = torch.cat([values[:, :, :n_outer], v_win[:, :, compact]], dim=2)
    new_rot = rot_outer
    if n_joined:
        joined = k_win[:, :, compact[:n_joined]]
        new_rot = torch.cat([rot_outer, apply_rope(joined, *rope_joined)], dim=2)
    return x, new_keys, new_values, new_rot


def _attend_and_mlp(
    parts: Parts,
    layer: nn.Module,
    beacon_proj: dict[str, nn.Linear],
    x: torch.Tensor,
    h: torch.Tensor,
    k_win: torch.Tensor,
    v_win: torch.Tensor,
    values: torch.Tensor,
    rot_outer: torch.Tensor,
    rope_rows: tuple[torch.Tensor, torch.Tensor],
    rope_window: tuple[torch.Tensor, torch.Tensor],
    layout: AttnLayout,
    meta: dict[str, torch.Tensor],
    n_outer: int,
    n_raw: int,
    tail: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The rest of the layer: queries, attention over [O | window | copies], o_proj, MLP (with
    `tail`: o_proj and MLP for the rows the memory keeps only, see _layer)."""
    b, n, _ = x.shape
    attn = layer.self_attn
    beacon_rows = None
    q = _project(attn.q_proj, beacon_proj.get("q"), h, n_raw).view(b, n, parts.n_heads, parts.head_dim)
    if parts.family.qk_norm:
        q = attn.q_norm(q)
    q = q.transpose(1, 2)  # (b, h, n, d)
    if layout.row_order is not None:
        q = q[:, :, layout.row_order]
    q = apply_rope(q, *rope_rows)
    order, copy_src = layout.col_order, meta["copy_src"]
    k_cols = k_win if order is None else k_win[:, :, order]  # attention order (see attention.py)
    v_cols = v_win if order is None else v_win[:, :, order]
    k_att = torch.cat([k_cols, k_win[:, :, copy_src]], dim=2)  # (b, h_kv, k + p, d)
    k_att = apply_rope(k_att, *rope_window)
    v_att = torch.cat([v_cols, v_win[:, :, copy_src]], dim=2)

    gqa = parts.n_heads != parts.n_kv_heads
    out = attend(q, rot_outer, values[:, :, :n_outer], k_att, v_att, layout, parts.scaling, gqa)  # (b, h, n, d)
    out = out.transpose(1, 2)  # (b, n, h, d)
    rows = layout.row_inverse  # back to slot order: one gather, composed with the tail's if any
    if tail is not None:
        rows = tail["rows"] if rows is None else rows[tail["rows"]]
        x, beacon_rows = x[:, tail["rows"]], tail["beacon_rows"]
    if rows is not None:
        out = out[:, rows]
    out = out.reshape(b, -1, parts.n_heads * parts.head_dim)
    x = x + _project(attn.o_proj, beacon_proj.get("o"), out, n_raw, beacon_rows)
    return x + layer.mlp(layer.post_attention_layernorm(x))


@functools.cache
def compiled_layer():
    """`_layer` compiled once per process (torch.compile, dynamic shapes): fuses the elementwise
    work (norms, RoPE, residuals, gating) and cuts kernel launches — worth it on a GPU."""
    # every attention layout, |O| = 0 or not, and the last layer's key/value-only variant is a graph
    # of its own (a dozen with ratio mixes); past dynamo's default limit of 8 it would silently fall
    # back to eager for the rest of the process (seen: 20x slower)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(_layer, dynamic=True)


@dataclass
class PassPlan:
    """What a pass needs besides the model's tensors, ready on the device: the chunk's layout, its
    attention layout (masks built), the index vectors (`meta`) and the tail rows (see _layer).
    Depends only on the pass's steps and settings, so the engine reuses it (PlanCache)."""

    chunk: Chunk
    layout: AttnLayout
    meta: dict[str, torch.Tensor]
    tail: dict[str, torch.Tensor] | None

    @property
    def nbytes(self) -> int:
        """Device bytes it holds: the staged index vectors and a dense mask (block masks are small)."""
        mask = self.layout.mask
        return sum(t.nbytes for t in self.meta.values()) + (mask.nbytes if mask is not None else 0)


def plan_pass(
    parts: Parts,
    cfg: BeaconConfig,
    chunk: Chunk,
    device: torch.device,
    dtype: torch.dtype,
    *,
    attn_mode: str = "auto",
    logits: str = "none",
    stager: Stager | None = None,
) -> PassPlan:
    """Plan one pass on the host, move its index vectors in one copy and build its masks."""
    # compiled FlexAttention (CUDA): bf16/fp16 only (float32 products round like TF32) and head dims
    # of real models (it has no kernel for the tiny test models' 16)
    flex_ok = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and parts.head_dim >= 64
    if attn_mode in ("flex", "flex-outer") and device.type == "cuda" and not flex_ok:
        raise ValueError(
            f"attention mode {attn_mode!r} on CUDA needs a bf16/fp16 model with head_dim >= 64 (got {dtype},"
            f" head_dim {parts.head_dim}): use attn_mode='dense'"
        )
    layout = plan_attention(cfg, chunk, attn_mode, flex_ok=flex_ok)
    tail_host = chunk.tail_rows() if logits == "none" and len(parts.layers) >= 2 else {}
    meta = (stager or Stager(device)).move(chunk.host_meta() | layout.host | tail_host)
    tail = {name.removeprefix("tail_"): meta[name] for name in tail_host} or None
    layout = finish_layout(cfg, layout, chunk, meta, dtype, parts.head_dim)
    return PassPlan(chunk, layout, meta, tail)


class PlanCache:
    """The last `size` PassPlans (or the steps of the last calls), by what determines them.

    A pass's plan depends only on its steps (window states before/after, tokens, ratios) and the
    settings, so documents of one length, and in general the passes at the same position of
    documents read with the same settings (same states and tokens: all but a document's last few),
    plan once: a hit skips the host's planning, the staging copy and the mask kernels — the only
    work before a one-pass document's first kernel (docs/performance.md §1h). Keys carry the
    config's repr, so changing `lm.config` (or the mode, dtype, device, batch) never hits a stale
    plan. A value holding more than `max_entry_bytes` of device memory (`nbytes`: a dense mask over
    a long memory) is made but not kept, so the cache holds at most size x max_entry_bytes."""

    def __init__(self, size: int = 16, max_entry_bytes: int = 8 << 20):
        self.size = size
        self.max_entry_bytes = max_entry_bytes
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # one model may serve several threads (make() runs unlocked)
        self.hits = self.misses = 0

    def get(self, key, make):
        """The value cached under `key`, or make() cached there (the oldest entry dropped)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
        value = make()
        if getattr(value, "nbytes", 0) > self.max_entry_bytes:
            return value
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value


def step_key(step) -> tuple:
    """What determines a step's entries (windows.plan_steps): states, tokens, ratio, closing."""
    return (step.before, step.after, step.token_from, step.n_raw, step.ratio, step.closes, step.keep_raw_only)


def run_chunk(
    parts: Parts,
    beacon: dict,
    cfg: BeaconConfig,
    memory: Memory,
    chunk: Chunk,
    input_ids: torch.Tensor,
    *,
    logits: str = "none",
    checkpoint_layers: bool = False,
    attn_mode: str = "auto",
    stager: Stager | None = None,
    layer_fn=None,
    plan: PassPlan | None = None,
) -> torch.Tensor | None:
    """Run one chunk, update `memory` (tensors and state), and return raw-row logits if asked.

    input_ids: (b, n_call) tokens of the whole call, on the model's device.
    logits: "all" -> (b, n_raw, vocab) float32, "last" -> (b, 1, vocab), "none" -> None.
    plan: the chunk's PassPlan made for these settings (plan_pass); made here if None.
    """
    device = memory.device
    loading = memory.pending is not None  # layers still arriving: wait for each just before it is read
    if not loading:
        ensure_rot(parts, memory)
    if plan is None:
        plan = plan_pass(parts, cfg, chunk, device, memory.dtype, attn_mode=attn_mode, logits=logits, stager=stager)
    chunk, layout, meta = plan.chunk, plan.layout, plan.meta
    tail = plan.tail if logits == "none" else None  # a plan made without logits serves any request
    n_layers = len(parts.layers)
    n_outer, n_cached, n_raw = chunk.n_outer, chunk.n_cached, chunk.n_raw

    # embeddings: raw rows read the call's tokens, beacon rows the beacon embedding
    x = parts.embed_tokens(input_ids[:, chunk.token_from : chunk.token_to])  # (b, n_raw, hidden)
    n_beacons = chunk.n_rows - n_raw
    if n_beacons:
        b_emb = beacon["embed"].weight[0].to(x.dtype)
        x = torch.cat([x, b_emb.expand(x.shape[0], n_beacons, -1)], dim=1)  # (b, n, hidden)

    pos = meta["pos"]  # window columns (cached + rows) in slot order
    row_pos = pos[n_cached:] if layout.row_order is None else pos[n_cached:][layout.row_order]
    col_pos = pos if layout.col_order is None else pos[layout.col_order]
    rope_rows = rope_cos_sin(parts, row_pos, x)
    rope_window = rope_cos_sin(parts, torch.cat([col_pos, meta["copy_pos"]]), x)
    joined_pos = torch.arange(n_outer, n_outer + chunk.n_joined, device=device)
    rope_joined = rope_cos_sin(parts, joined_pos, x)

    new_keys, new_values, new_rot = [], [], []
    rope_outer = rope_cos_sin(parts, torch.arange(n_outer, device=device), memory.keys[0]) if loading else None
    for i, layer in enumerate(parts.layers):
        if loading:
            memory.ready(i)
            ensure_rot(parts, memory, i, rope_outer)
        args = (
            parts,
            cfg,
            layer,
            beacon["layers"][i],
            x,
            memory.keys[i],
            memory.values[i],
            memory.rot_keys[i],
            rope_rows,
            rope_window,
            rope_joined,
            layout,
            meta,
            n_outer,
            n_raw,
            chunk.n_joined,
            logits != "none" or i < n_layers - 1,
            tail if i >= n_layers - 2 else None,
        )
        fn = layer_fn or _layer
        if checkpoint_layers and torch.is_grad_enabled():
            x, k, v, r = checkpoint(fn, *args, use_reentrant=False)
        else:
            x, k, v, r = fn(*args)
        new_keys.append(k)
        new_values.append(v)
        new_rot.append(r)

    if loading:
        memory.ready()  # every layer has arrived; this joins the loader (and raises what it raised)
    memory.keys, memory.values, memory.rot_keys = new_keys, new_values, new_rot
    memory.state = chunk.after

    if logits == "none":
        return None
    hidden = x[:, :n_raw] if logits == "all" else x[:, n_raw - 1 : n_raw]
    return parts.lm_head(parts.norm(hidden)).float()
