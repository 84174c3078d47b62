"""One decoder layer with beacons, for condensing passes (forward.py) and decode steps (decode.py).

Shapes: b batch, n rows (queries), h / h_kv query / key-value heads, d head dim, m = |O| outer
memory entries, c cached window entries, k = c + n window keys, p copies, cap a decoder's slots.
The layer is re-composed from a frozen HF layer's modules (input_layernorm, self_attn.{q,k,v,o}_proj,
optional q_norm/k_norm, post_attention_layernorm, mlp); rows past `n_raw` (the beacons) go through
the beacon projections. A pass and a step differ only in where keys and values go and what the rows
attend:

  pass_layer  a chunk's rows (windows.Chunk) over the memory, which it replaces functionally
              (torch.cat), so the same code trains with autograd; what it reads: a LayerPlan.
  step_layer  a decode step's rows over static buffers (decode_pool.Buffers), written in place at
              slots fixed before the step: no host sync, no data-dependent shape — graph-safe.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.fx.experimental import _config as fx_config

from .attention import AttnLayout, attend, attend_slots
from .decode_pool import Buffers, StepRows
from .families import Parts, apply_rope

Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin (1, 1, n, d)


def _project(
    base: nn.Linear, beacon: nn.Linear | None, h: torch.Tensor, n_raw: int, beacon_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """(b, n, in) -> (b, n, out): raw rows through `base`, beacon rows through `beacon`.

    Raw rows are [:n_raw] (rows raw-first), or, where `beacon_rows` is given (the rows a trimmed
    layer keeps, see pass_layer), every row not listed there: `base` then runs over all rows and the
    few beacon rows are overwritten — a 1/(ratio+1) share of wasted product instead of two gathers."""
    if beacon is None:
        return base(h)
    if beacon_rows is not None:
        return base(h).index_copy(1, beacon_rows, beacon(h[:, beacon_rows]))
    if n_raw == h.shape[1]:
        return base(h)
    return torch.cat([base(h[:, :n_raw]), beacon(h[:, n_raw:])], dim=1)


def embed(parts: Parts, beacon_embed: nn.Embedding, tokens: torch.Tensor, n_beacons: int) -> torch.Tensor:
    """Rows' input (b, n_raw + n_beacons, hidden): the tokens' (b, n_raw) embeddings, then beacons'."""
    x = parts.embed_tokens(tokens)  # (b, n_raw, hidden)
    if n_beacons:
        b_emb = beacon_embed.weight[0].to(x.dtype)
        x = torch.cat([x, b_emb.expand(x.shape[0], n_beacons, -1)], dim=1)  # (b, n, hidden)
    return x


def head(parts: Parts, x: torch.Tensor) -> torch.Tensor:
    """Next-token logits (b, n, vocab) float32 of the last layer's output x (b, n, hidden)."""
    return parts.lm_head(parts.norm(x)).float()


def _keys_values(
    parts: Parts, layer: nn.Module, proj: dict[str, nn.Linear], h: torch.Tensor, n_raw: int, beacon_rows=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (normed, before RoPE) and values (b, h_kv, n, d) of the normed rows h (b, n, hidden)."""
    b, n, _ = h.shape
    attn = layer.self_attn
    k = _project(attn.k_proj, proj.get("k"), h, n_raw, beacon_rows).view(b, n, parts.n_kv_heads, parts.head_dim)
    v = _project(attn.v_proj, proj.get("v"), h, n_raw, beacon_rows).view(b, n, parts.n_kv_heads, parts.head_dim)
    if parts.family.qk_norm:
        k = attn.k_norm(k)
    return k.transpose(1, 2), v.transpose(1, 2)  # (b, h_kv, n, d)


def _queries(parts: Parts, layer: nn.Module, proj: dict[str, nn.Linear], h: torch.Tensor, n_raw: int) -> torch.Tensor:
    """Queries (b, h, n, d), normed, before RoPE."""
    b, n, _ = h.shape
    attn = layer.self_attn
    q = _project(attn.q_proj, proj.get("q"), h, n_raw).view(b, n, parts.n_heads, parts.head_dim)
    if parts.family.qk_norm:
        q = attn.q_norm(q)
    return q.transpose(1, 2)  # (b, h, n, d)


def _output(
    parts: Parts, layer: nn.Module, proj: dict[str, nn.Linear], x: torch.Tensor, out: torch.Tensor, n_raw: int,
    beacon_rows: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The layer's output: x (b, n, hidden) + o_proj(attention out (b, n, h, d)), then + its MLP."""
    out = out.reshape(x.shape[0], x.shape[1], parts.n_heads * parts.head_dim)  # (b, n, h * d)
    x = x + _project(layer.self_attn.o_proj, proj.get("o"), out, n_raw, beacon_rows)
    return x + layer.mlp(layer.post_attention_layernorm(x))


@dataclass(frozen=True)
class LayerPlan:
    """What a layer of a condensing pass reads besides its weights and the memory: one per pass
    (forward.run_chunk), with variants for the last two layers (`need_output`, `tail`)."""

    layout: AttnLayout  # the pass's attention layout (attention.py)
    # the chunk's index vectors on the device (Chunk.host_meta) the layer reads, as fields: a dict
    # whose keys differ between passes would put a key into dynamo's guards that the next pass lacks
    copy_src: torch.Tensor  # (p,) the slot each copy is taken from
    compact_src: torch.Tensor  # slots the memory keeps after the pass
    rope_rows: Rope  # of the rows, in attention order
    rope_window: Rope  # of the window columns in attention order, then of the copies
    rope_joined: Rope  # of the O positions the entries joining O take
    n_outer: int  # m
    n_raw: int  # raw rows: the first n_raw rows
    n_joined: int  # entries joining O (the first of compact_src)
    need_output: bool = True  # False: the layer's keys and values only, x returned unchanged
    tail: dict[str, torch.Tensor] | None = None  # Chunk.tail_rows on the device: see pass_layer


def pass_layer(
    parts: Parts,
    layer: nn.Module,
    proj: dict[str, nn.Linear],
    x: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rot_outer: torch.Tensor,
    plan: LayerPlan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder layer over the chunk's rows x (b, n, hidden) after the memory's keys, values
    (b, h_kv, m + c, d: [O | cached W], keys before RoPE) and O's RoPE'd keys rot_outer (b, h_kv, m, d).
    Returns (x, new keys, new values, new O rot keys): the memory after the pass, [O | joiners | carried W].

    need_output=False (the last layer when no logits are wanted) computes only the layer's keys
    and values — all a memory keeps — and returns x unchanged. `tail` trims the last two layers of
    such a pass to the rows the memory keeps: the layer before the last returns x of those rows
    only (its keys, values and attention still cover every row), and the last one, given them,
    projects only them.
    """
    n_outer, n_raw, layout, tail = plan.n_outer, plan.n_raw, plan.layout, plan.tail
    last_trimmed = tail is not None and not plan.need_output  # x holds only the rows the memory keeps
    h = layer.input_layernorm(x)
    k, v = _keys_values(parts, layer, proj, h, n_raw, tail["beacon_rows"] if last_trimmed else None)
    # window keys in slot order: cached W (from memory) then rows; copies are picked from them
    k_win = torch.cat([keys[:, :, n_outer:], k], dim=2)  # (b, h_kv, c + n, d), pre-RoPE
    v_win = torch.cat([values[:, :, n_outer:], v], dim=2)
    if plan.need_output:
        q = _queries(parts, layer, proj, h, n_raw)
        if layout.row_order is not None:
            q = q[:, :, layout.row_order]
        q = apply_rope(q, *plan.rope_rows)
        order, copy_src = layout.col_order, plan.copy_src
        k_cols = k_win if order is None else k_win[:, :, order]  # attention order (see attention.py)
        v_cols = v_win if order is None else v_win[:, :, order]
        k_att = torch.cat([k_cols, k_win[:, :, copy_src]], dim=2)  # (b, h_kv, k + p, d)
        k_att = apply_rope(k_att, *plan.rope_window)
        v_att = torch.cat([v_cols, v_win[:, :, copy_src]], dim=2)
        out = attend(q, rot_outer, values[:, :, :n_outer], k_att, v_att, layout, parts.scaling, parts.gqa)
        out = out.transpose(1, 2)  # (b, h, n, d) -> (b, n, h, d)
        rows, beacon_rows = layout.row_inverse, None  # back to slot order: one gather, and the tail's
        if tail is not None:
            rows = tail["rows"] if rows is None else rows[tail["rows"]]
            x, beacon_rows = x[:, tail["rows"]], tail["beacon_rows"]
        if rows is not None:
            out = out[:, rows]
        x = _output(parts, layer, proj, x, out, n_raw, beacon_rows)

    compact = tail["compact"] if last_trimmed else plan.compact_src
    new_keys = torch.cat([keys[:, :, :n_outer], k_win[:, :, compact]], dim=2)
    new_values = torch.cat([values[:, :, :n_outer], v_win[:, :, compact]], dim=2)
    new_rot = rot_outer
    if plan.n_joined:
        joined = k_win[:, :, compact[: plan.n_joined]]
        new_rot = torch.cat([rot_outer, apply_rope(joined, *plan.rope_joined)], dim=2)
    return x, new_keys, new_values, new_rot


@functools.cache
def compiled_layer(backend: str = "inductor"):
    """`pass_layer` compiled once per process (torch.compile, dynamic shapes): fuses the elementwise
    work (norms, RoPE, residuals, gating) and cuts kernel launches — worth it on a GPU. `backend`:
    "eager" traces the same graphs without generating code (tests count graphs with it).

    Its graphs depend on the kind of pass, never on a length (warmup.py lists the kinds and
    compiles them): sizes are symbolic except those of 0 or 1, which torch.compile specializes —
    the engine runs passes with such a count eager (forward.fits_graph)."""
    # every attention layout, |O| = 0 or not, and each of the last two layers' variants is a graph
    # of its own (a dozen or two, times two for batches); past dynamo's default limit of 8 it would
    # silently fall back to eager for the rest of the process (seen: 20x slower)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(pass_layer, dynamic=True, backend=backend)

    def run(*args):
        # Duck shaping gives input sizes that happen to be equal one symbol (the kept rows of a pass
        # and its kept beacon rows, a count of mask blocks and the key/value heads); once one of
        # them is pinned (head counts are), so is the other, and the next document where they
        # differ compiled a graph of its own. Read by dynamo when it starts tracing a call.
        with fx_config.patch(use_duck_shape=False):
            return compiled(*args)

    return run


def step_layer(
    parts: Parts, i: int, proj: dict[str, nn.Linear], x: torch.Tensor, rope: Rope, buf: Buffers, rows: StepRows
) -> torch.Tensor:
    """Decoder layer i over a decode step's rows x (b, n, hidden), raw rows first (rows.tokens):
    writes their keys and values into the buffers at rows.slot (rows.win_slot for the pre-RoPE
    window keys), then attends every slot rows.mask allows. Returns the layer's output. Graph-safe.
    Slots and mask are the same for every batch row, or one set per batch row (slot (b, n), mask
    (b, n, cap), rope (b, 1, n, d): an arena's lanes, each its own memory: decode_pool.LaneArena)."""
    layer = parts.layers[i]
    n_raw = rows.tokens.shape[1]
    h = layer.input_layernorm(x)
    q = _queries(parts, layer, proj, h, n_raw)
    k, v = _keys_values(parts, layer, proj, h, n_raw)
    _write_rows(buf.k_win[i], rows.win_slot, k)
    _write_rows(buf.k_rot[i], rows.slot, apply_rope(k, *rope))
    _write_rows(buf.values[i], rows.slot, v)
    out = attend_slots(apply_rope(q, *rope), buf.k_rot[i], buf.values[i], rows.mask, parts.scaling)  # (b, h, n, d)
    return _output(parts, layer, proj, x, out.transpose(1, 2), n_raw)


def _write_rows(dst: torch.Tensor, slot: torch.Tensor, new: torch.Tensor) -> None:
    """new (b, h_kv, n, d) into dst (b, h_kv, cap, d) at slot (n,) — or (b, n), a slot per batch row."""
    if slot.dim() == 1:
        dst.index_copy_(2, slot, new)
    else:
        dst.scatter_(2, slot[:, None, :, None].expand(-1, new.shape[1], -1, new.shape[3]), new)


STACK_BYTES = 512 << 20  # keys + values stacked for one attention call at most (more: several calls)


@dataclass(frozen=True)
class TogetherGroup:
    """Decoders of a step together whose attention runs as one call (together_groups)."""

    members: list[int]  # indices into the step's decoders
    rows_at: torch.Tensor | None = None  # stacked: (N,) row of the stacked buffers each new key/value goes to
    slots_at: torch.Tensor | None = None  # stacked: (N,) its slot; None: one decoder, over its own buffers


def together_groups(bufs: list[Buffers], rows: list[StepRows], split) -> list[TogetherGroup]:
    """The attention calls of a step together (the same for every layer): decoders whose buffers
    have one slot count (and beacon rows) stacked, up to STACK_BYTES a call; the rest alone."""
    out = []
    for members in _same_shape(bufs, rows, split):
        if len(members) == 1:
            out.append(TogetherGroup(members))
            continue
        n = rows[members[0]].slot.shape[0]  # 1 + nb rows per batch row
        device = rows[members[0]].slot.device
        stacked_rows = sum(split[j][2] for j in members)
        rows_at = torch.arange(stacked_rows, device=device).repeat_interleave(n)  # batch row-major, then rows
        slots_at = torch.cat([rows[j].slot.repeat(split[j][2]) for j in members])
        out.append(TogetherGroup(members, rows_at, slots_at))
    return out


def step_layer_together(
    parts: Parts, i: int, proj: dict[str, nn.Linear], x: torch.Tensor, rope: Rope, bufs: list[Buffers],
    rows: list[StepRows], split: list[tuple[int, int, int, int]], groups: list[TogetherGroup],
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """step_layer over the steps of several decoders at once, each with its own buffers (memory)
    and rows: the projections, RoPE and the MLP run once over every row, the attention per group
    of `groups` (together_groups). x (1, R + B, hidden) holds every decoder's raw rows first (R:
    decoder by decoder, its b rows each), then every decoder's beacon rows (its b x n_beacons,
    row-major); `rope` (1, 1, R + B, d) is each row's; `split` (step_rows_split(rows)) says where
    each decoder's rows are. A decoder alone gets its new keys and values written into its buffers
    here; a stacked group's go into the stacked copies only, and write_rows_together puts them into
    the buffers after the last layer (a few kernels a step instead of three per decoder and layer:
    the step is bound by launches). Returns the layer's output in x's layout and its new rows'
    (pre-RoPE keys, RoPE'd keys, values), each (1, h_kv, R + B, d)."""
    layer = parts.layers[i]
    n_raw = sum(b for _, _, b, _ in split)
    h = layer.input_layernorm(x)
    q = apply_rope(_queries(parts, layer, proj, h, n_raw), *rope)  # (1, h, R + B, d)
    k, v = _keys_values(parts, layer, proj, h, n_raw)  # (1, h_kv, R + B, d), k before RoPE
    k_rot = apply_rope(k, *rope)
    outs: list[torch.Tensor | None] = [None] * len(bufs)
    for group in groups:
        members = group.members
        q_own = torch.cat([_rows_of_one(q, n_raw, *split[j])[0] for j in members])  # (G b, h, 1 + nb, d)
        if group.rows_at is None:
            buf, r, where = bufs[members[0]], rows[members[0]], split[members[0]]
            buf.k_win[i].index_copy_(2, r.win_slot, _rows_of_one(k, n_raw, *where)[0])
            buf.k_rot[i].index_copy_(2, r.slot, _rows_of_one(k_rot, n_raw, *where)[0])
            buf.values[i].index_copy_(2, r.slot, _rows_of_one(v, n_raw, *where)[0])
            out = attend_slots(q_own, buf.k_rot[i], buf.values[i], r.mask, parts.scaling)
        else:
            keys = torch.cat([bufs[j].k_rot[i] for j in members])  # (G b, h_kv, cap, d): a copy
            values = torch.cat([bufs[j].values[i] for j in members])
            for stacked, new in ((keys, k_rot), (values, v)):
                own = torch.cat([_rows_of_one(new, n_raw, *split[j])[0] for j in members])  # (G b, h_kv, n, d)
                stacked[group.rows_at, :, group.slots_at] = own.transpose(1, 2).flatten(0, 1)
            mask = torch.cat([rows[j].mask.expand(split[j][2], -1, -1) for j in members])  # (G b, n, cap)
            out = attend_slots(q_own, keys, values, mask, parts.scaling)
        for j, o in zip(members, out.split([split[j][2] for j in members]), strict=True):
            outs[j] = o  # (b, h, 1 + nb, d)
    # back to x's layout: (b, h, 1 + nb, d) -> raw rows (b, h, d) of all, then beacon rows (b * nb, h, d) of all
    flat = [o[:, :, 0] for o in outs] + [o[:, :, 1:].transpose(1, 2).flatten(0, 1) for o in outs if o.shape[2] > 1]
    return _output(parts, layer, proj, x, torch.cat(flat)[None], n_raw), (k, k_rot, v)


def write_rows_together(
    bufs: list[Buffers], rows: list[StepRows], split, groups: list[TogetherGroup],
    new: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> None:  # fmt: skip
    """After the last layer of a step together: the stacked groups' new rows of every layer (`new`:
    step_layer_together's, per layer) into their decoders' buffers, three writes per decoder."""
    k_win, k_rot, values = (torch.cat([n[kind] for n in new]) for kind in range(3))  # (layers, h_kv, R + B, d)
    n_raw = sum(b for _, _, b, _ in split)
    for group in groups:
        if group.rows_at is None:
            continue  # written layer by layer
        for j in group.members:
            buf, r, where = bufs[j], rows[j], split[j]
            every_k_rot, every_values, every_k_win = buf.layers
            every_k_win.index_copy_(3, r.win_slot, _rows_of_one(k_win, n_raw, *where))
            every_k_rot.index_copy_(3, r.slot, _rows_of_one(k_rot, n_raw, *where))
            every_values.index_copy_(3, r.slot, _rows_of_one(values, n_raw, *where))


def _same_shape(bufs: list[Buffers], rows: list[StepRows], split) -> list[list[int]]:
    """Decoders of a step together grouped by what stacking needs alike (batches may differ): slots
    and dtype of the buffers, beacon rows (in first-seen order); a group's stacked keys and values
    stay within STACK_BYTES per layer (one decoder alone may pass it)."""
    groups: dict[tuple, list[tuple[list[int], int]]] = {}  # key -> chunks of (members, bytes stacked)
    for j, (buf, r, where) in enumerate(zip(bufs, rows, split, strict=True)):
        k = buf.k_rot[0]  # every layer's is shaped alike
        key = (tuple(k.shape[1:]), k.dtype, where[3], tuple(r.mask.shape))
        chunks = groups.setdefault(key, [([], 0)])
        size = 2 * k.numel() * k.element_size()
        members, stacked = chunks[-1]
        if members and stacked + size > STACK_BYTES:
            chunks.append(([], 0))
            members, stacked = chunks[-1]
        chunks[-1] = (members + [j], stacked + size)
    return [members for chunks in groups.values() for members, _ in chunks]


def _rows_of_one(t: torch.Tensor, n_raw: int, raw: int, bea: int, b: int, nb: int) -> torch.Tensor:
    """One decoder's rows of a step together, (L, heads, R + B, d) -> (L, b, heads, 1 + nb, d):
    L layers (or L = 1, a layer's (1, heads, R + B, d))."""
    own = t[:, :, raw : raw + b, None].transpose(1, 2)
    if nb == 0:
        return own
    beacons = t[:, :, n_raw + bea : n_raw + bea + b * nb].unflatten(2, (b, nb)).transpose(1, 2)
    return torch.cat([own, beacons], dim=3)


def step_rows_split(rows: list[StepRows]) -> list[tuple[int, int, int, int]]:
    """Per decoder of a step together: (offset of its raw rows among all raw rows, offset of its
    beacon rows among all beacon rows, its batch b, its beacon rows n_beacons)."""
    out, raw, bea = [], 0, 0
    for r in rows:
        b, nb = r.tokens.shape[0], r.pos.shape[0] - r.tokens.shape[1]
        out.append((raw, bea, b, nb))
        raw, bea = raw + b, bea + b * nb
    return out
