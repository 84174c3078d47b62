"""One condensing pass: a chunk (see windows.Chunk) through every decoder layer (layer.pass_layer).

Shapes: b batch, n rows (queries) of the chunk, d head dim, m = |O| outer memory entries.
A pass's plan (PassPlan: the chunk, its attention layout, its index vectors on the device) depends
only on its steps and the settings, so the engine reuses it (PlanCache); each pass turns it into
the frozen LayerPlan its layers read. Memory tensors are replaced functionally, so the same code
trains with autograd.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from .attention import AttnLayout, finish_layout, plan_attention
from .config import BeaconConfig
from .families import Parts, apply_rope, rope_cos_sin
from .layer import LayerPlan, embed, head, pass_layer
from .memory import Memory
from .params import BeaconModules
from .staging import Stager
from .windows import Chunk


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


@dataclass(frozen=True)
class PassPlan:
    """What a pass needs besides the model's tensors, ready on the device: the chunk's layout, its
    attention layout (masks built), the index vectors (`meta`) and the tail rows (layer.pass_layer).
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


def flex_fits(parts: Parts, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether compiled FlexAttention serves this model here (attention.plan_attention's `flex_ok`):
    CUDA, bf16/fp16 only (float32 products round like TF32) and head dims of real models (it has no
    kernel for the tiny test models' 16)."""
    return device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and parts.head_dim >= 64


def fits_graph(chunk: Chunk) -> bool:
    """Whether the compiled decoder layer (layer.compiled_layer) runs this pass with graphs that
    every document shares, or it runs eager.

    torch.compile keeps sizes symbolic but specializes sizes 0 and 1, so a count that varies with a
    document's length and is 1 here, or no raw or no beacon rows at all, would compile graphs for
    this pass alone — a document's last few tokens, or a token or two appended to a memory: at most
    a window's worth, cheaper eager than compiled anew. A 0 that every document has stays compiled:
    a first pass's empty memory (n_outer, n_cached), a one-window pass's absent copies, an open
    window's absent joiners.
    """
    n_beacon_rows = chunk.n_rows - chunk.n_raw
    counts = (chunk.n_outer, chunk.n_cached, chunk.n_copies, chunk.n_joined)
    return min(chunk.n_raw, n_beacon_rows) >= 2 and 1 not in counts


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
    flex_ok = flex_fits(parts, device, dtype)
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
    beacon: BeaconModules,
    memory: Memory,
    plan: PassPlan,
    input_ids: torch.Tensor,
    *,
    logits: str = "none",
    checkpoint_layers: bool = False,
    layer_fn=pass_layer,
) -> torch.Tensor | None:
    """Run one planned chunk (plan_pass), update `memory` (tensors and state), and return raw-row
    logits if asked.

    input_ids: (b, n_call) tokens of the whole call, on the model's device.
    logits: "all" -> (b, n_raw, vocab) float32, "last" -> (b, 1, vocab), "hidden" -> the raw rows'
    last-layer output (b, n_raw, hidden) before the head (training scores only its target rows),
    "none" -> None (the plan's tail rows, if any, trim the last two layers).
    layer_fn: pass_layer, or its compiled form (layer.compiled_layer).
    """
    device = memory.device
    loading = memory.pending is not None  # layers still arriving: wait for each just before it is read
    if not loading:
        ensure_rot(parts, memory)
    chunk, layout, meta = plan.chunk, plan.layout, plan.meta
    n_layers, n_outer, n_raw = len(parts.layers), chunk.n_outer, chunk.n_raw

    # raw rows read the call's tokens, beacon rows the beacon embedding
    x = embed(parts, beacon.embed, input_ids[:, chunk.token_from : chunk.token_to], chunk.n_rows - n_raw)

    pos = meta["pos"]  # window columns (cached + rows) in slot order
    row_pos = pos[chunk.n_cached :] if layout.row_order is None else pos[chunk.n_cached :][layout.row_order]
    col_pos = pos if layout.col_order is None else pos[layout.col_order]
    joined_pos = torch.arange(n_outer, n_outer + chunk.n_joined, device=device)
    every = LayerPlan(
        layout=layout, copy_src=meta["copy_src"], compact_src=meta["compact_src"],
        n_outer=n_outer, n_raw=n_raw, n_joined=chunk.n_joined,
        rope_rows=rope_cos_sin(parts, row_pos, x),
        rope_window=rope_cos_sin(parts, torch.cat([col_pos, meta["copy_pos"]]), x),
        rope_joined=rope_cos_sin(parts, joined_pos, x),
    )  # fmt: skip
    plans = [every] * n_layers
    if logits == "none":  # the last layer: keys and values only; with tail rows, the last two trimmed
        if plan.tail is not None:
            plans[-2] = dataclasses.replace(every, tail=plan.tail)
        plans[-1] = dataclasses.replace(every, tail=plan.tail, need_output=False)

    new_keys, new_values, new_rot = [], [], []
    rope_outer = rope_cos_sin(parts, torch.arange(n_outer, device=device), memory.keys[0]) if loading else None
    for i, layer in enumerate(parts.layers):
        if loading:
            memory.ready(i)
            ensure_rot(parts, memory, i, rope_outer)
        args = (parts, layer, beacon.layers[i], x, memory.keys[i], memory.values[i], memory.rot_keys[i], plans[i])
        if checkpoint_layers and torch.is_grad_enabled():
            x, k, v, r = checkpoint(layer_fn, *args, use_reentrant=False)
        else:
            x, k, v, r = layer_fn(*args)
        new_keys.append(k)
        new_values.append(v)
        new_rot.append(r)

    if loading:
        memory.ready()  # every layer has arrived; this joins the loader (and raises what it raised)
    memory.keys, memory.values, memory.rot_keys = new_keys, new_values, new_rot
    memory.state = chunk.after

    if logits == "none":
        return None
    if logits == "hidden":
        return x[:, :n_raw]
    return head(parts, x[:, :n_raw] if logits == "all" else x[:, n_raw - 1 : n_raw])
