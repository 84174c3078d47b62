"""Fast token-by-token continuation of a memory: static buffers, replayed as CUDA graphs.

Almost every decode step only *appends*: the new token (and in interleave mode, after every
`ratio`-th token, a beacon) joins the open window and nothing is condensed. Such a step has a
fixed shape, so it can run over preallocated buffers and be captured once as a CUDA graph:

    k_rot[l] (b, h_kv, cap, d)   RoPE'd keys  [ O (rot_keys) | window | new rows | room ]
    v[l]     (b, h_kv, cap, d)   values, same slots
    k_win[l] (b, h_kv, cap - |O|, d)  pre-RoPE keys of the window slots (what a Memory stores)
    mask     (rows, cap) bool    which slots each new row sees (O always; the window per
                                 windows.window_mask; nothing beyond the rows)

The planner (windows.plan_steps, window_mask) still decides every step on the host — positions,
visibility, whether the window closes — so this file holds no window arithmetic of its own. To keep
the host ahead of the GPU it plans a *block* of up to BLOCK tokens of the open window at once (what
reading them in one piece gives, which is what reading them one by one gives: tested) and moves
the block's positions and mask rows to the GPU in one copy; each token then only slices them.
A step that condenses (the window closes) or does not fit the buffers is handed to the general
path (forward.run_chunk) on a Memory rebuilt from the buffers; the buffers are rebuilt after it.

Attention here is plain matmul + softmax over all `cap` slots with the mask (query heads grouped
per key/value head, scores in float32), which is what a one-row decode wants: it reads each
key and value once and parallelises over the whole key axis. Optionally (`compiled`) the step goes
through torch.compile before capture, fusing HF's norms, RoPE and the softmax into fewer kernels.
Speed: docs/performance.md §3.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .families import apply_rope
from .forward import _project, ensure_rot
from .memory import Memory
from .windows import Chunk, WindowState, build_chunk, plan_steps, window_mask

MODES = ("auto", "static", "eager", "compiled")
BLOCK = 64  # tokens of the open window planned (and staged to the GPU) at once
# torch.bmm(..., out_dtype=float32) on CUDA (bf16/fp16 in, float32 out) exists from torch 2.8
_HAS_OUT_DTYPE = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 8)


@dataclass
class _Buffers:
    """Static tensors of one decode run (see module docstring); reused by every graph replay."""

    n_outer: int  # |O| when built (fixed while the window stays open)
    cap: int  # slots
    k_rot: list[torch.Tensor]
    values: list[torch.Tensor]
    k_win: list[torch.Tensor]
    cos: torch.Tensor  # (cap, d) RoPE table for positions 0..cap-1
    sin: torch.Tensor
    slot_pos: torch.Tensor  # host (size,) position of every filled slot (checks the planner agrees)
    size: int  # filled slots


@dataclass
class _Block:
    """The next tokens of the open window, planned at once: entries in reading order (= slot order)."""

    start: WindowState  # state before the block
    after: WindowState  # state after all of it
    n_tokens: int  # tokens planned
    first_entry: list[int]  # per token: index of its raw entry among the block's entries (+ end)
    pos: torch.Tensor  # (n_entries,) on the device
    mask: torch.Tensor  # (n_entries, cap - |O|) bool on the device: window slots each entry's row sees
    done: int = 0  # tokens read so far


class StaticDecoder:
    """Continues a memory (it takes ownership: pass a fork) one token at a time.

    `step(tokens)` reads tokens (b, 1) and returns next-token logits (b, vocab) float32, exactly
    what `BeaconLM.forward(tokens, memory, logits="last")` returns (up to float rounding of the
    attention, ~1e-6 in float32). `memory()` gives the memory read so far.
    `graphs=True` (CUDA only) captures one CUDA graph per row count of an appending step;
    `compiled=True` runs the step through torch.compile first (fused norms, RoPE, softmax: fewer,
    larger kernels inside the graph; the first step of each row count compiles, tens of seconds).
    """

    def __init__(
        self, lm, memory: Memory, *, graphs: bool = False, compiled: bool = False, headroom: int | None = None
    ):
        if graphs and lm.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.lm = lm
        self.graphs = graphs
        self.compiled = compiled
        self.headroom = headroom if headroom is not None else 2 * lm.config.beacon_window + 64
        self._memory: Memory | None = memory
        self._buf: _Buffers | None = None
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self._block: _Block | None = None
        self._state = memory.state
        b = memory.batch_size
        dev = lm.device
        self._tokens = torch.zeros(b, 1, dtype=torch.long, device=dev)
        self._rows: dict[int, dict[str, torch.Tensor]] = {}  # per row count: pos, slot, win_slot, mask
        self.stats = {"static_steps": 0, "general_steps": 0, "builds": 0, "blocks": 0}

    # ---- the public step -----------------------------------------------------------------------
    @property
    def state(self) -> WindowState:
        """Where reading stands (mid-block: planned again for the tokens read so far)."""
        block = self._block
        if block is None or block.done == 0:
            return self._state
        if block.done == block.n_tokens:
            return block.after
        steps = plan_steps(self.lm.config, block.start, block.done, max_positions=self.lm.parts.max_positions)
        return steps[-1].after

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read `tokens` (b, 1) after the memory; return the next-token logits (b, vocab). Inference
        only: no gradients."""
        block = self._block
        if block is not None and block.done == block.n_tokens:
            self._state, self._block, block = block.after, None, None
        if block is None and self._buf is not None:
            block = self._block = self._plan_block()
        if block is not None:
            rows = self._stage_from_block(block)
        else:
            chunk = self._plan()
            if not self._appends(chunk):
                memory = self.memory()
                self._buf, self._graphs, self._pool = None, {}, None
                _, logits = self.lm.forward(tokens, memory, logits="last")
                self._memory, self._state = memory, memory.state
                self.stats["general_steps"] += 1
                return logits
            if self._buf is None or not self._fits(chunk):
                self._build(chunk)
            rows = self._stage(chunk)
            self._buf.slot_pos = torch.cat([self._buf.slot_pos, chunk.cols.pos[chunk.n_cached :]])
            self._state = chunk.after
        self._tokens.copy_(tokens)
        logits = self._replay(rows) if self.graphs else self._run(rows)
        self._buf.size += rows
        self.stats["static_steps"] += 1
        return logits.clone() if self.graphs else logits

    @torch.no_grad()
    def memory(self) -> Memory:
        """The memory read so far (rebuilt from the buffers: keys pre-RoPE, layout [O | W])."""
        if self._buf is None:
            return self._memory
        buf, base = self._buf, self._memory
        n_o, size = buf.n_outer, buf.size
        keys = [
            torch.cat([k[:, :, :n_o], w[:, :, : size - n_o]], dim=2) for k, w in zip(base.keys, buf.k_win, strict=True)
        ]
        values = [v[:, :, :size].clone() for v in buf.values]
        rot = [k[:, :, :n_o].clone() for k in buf.k_rot]
        return Memory(keys, values, self.state, rot)

    # ---- planning ------------------------------------------------------------------------------
    def _plan(self) -> Chunk:
        steps = plan_steps(self.lm.config, self._state, 1, max_positions=self.lm.parts.max_positions)
        return build_chunk(self.lm.config, steps)

    @staticmethod
    def _appends(chunk: Chunk) -> bool:
        """True when the step only adds rows to the open window (nothing condensed or dropped)."""
        keep_all = chunk.compact_src.numel() == len(chunk.cols) and bool(
            torch.equal(chunk.compact_src, torch.arange(len(chunk.cols)))
        )
        return chunk.n_joined == 0 and chunk.n_copies == 0 and chunk.n_raw == 1 and keep_all

    def _fits(self, chunk: Chunk) -> bool:
        return self._continues(chunk.n_outer, chunk.cols.pos[: chunk.n_cached], chunk.cols.pos[chunk.n_cached :])

    def _continues(self, n_outer: int, cached_pos: torch.Tensor, new_pos: torch.Tensor) -> bool:
        """Whether new entries at `new_pos` can follow in the buffers: same O, the buffers hold exactly
        the window the planner expects (at the same positions), and there is room."""
        buf = self._buf
        return (
            n_outer == buf.n_outer
            and buf.n_outer + len(cached_pos) == buf.size
            and buf.size + len(new_pos) <= buf.cap
            and int(new_pos.max()) < buf.cap
            and torch.equal(cached_pos, buf.slot_pos[buf.n_outer :])
        )

    def _plan_block(self) -> _Block | None:
        """Plan the next tokens of the open window at once, or None where one token at a time must be
        planned: the window is about to close, or interleave has yet to fix its ratio."""
        cfg, buf, state = self.lm.config, self._buf, self._state
        n = min(BLOCK, cfg.beacon_window - state.window_raw - 1)  # the closing token goes its own way
        if n < 2 or (cfg.interleave and state.window_ratio < 0):
            return None
        steps = plan_steps(cfg, state, n, known_length=state.n_tokens + 1, max_positions=self.lm.parts.max_positions)
        if len(steps) != 1 or steps[0].closes:
            return None
        step = steps[0]
        c, new = len(step.cached), step.new
        if not self._continues(state.n_outer, step.cached.pos, new.pos):
            return None
        cols = [torch.cat([getattr(step.cached, f), getattr(new, f)]) for f in ("beacon", "idx", "e")]
        meta = dict(zip(("beacon", "idx", "e"), cols, strict=True))
        meta |= {
            "window": torch.zeros(c + len(new), dtype=torch.long),
            "row_ratio": torch.full((len(new),), max(step.ratio, 0), dtype=torch.long),
            "copy_window": torch.empty(0, dtype=torch.long),
        }
        visible = window_mask(cfg, meta, c)  # (entries, c + entries): rows never see later entries
        mask = torch.zeros(len(new), buf.cap - buf.n_outer, dtype=torch.long)
        mask[:, : c + len(new)] = visible
        moved = self.lm._stager.move({"pos": new.pos, "mask": mask.flatten()})
        first = torch.nonzero(new.beacon == 0).flatten().tolist() + [len(new)]
        buf.slot_pos = torch.cat([buf.slot_pos, new.pos])  # slots filled as the block is read
        self.stats["blocks"] += 1
        return _Block(
            start=state, after=step.after, n_tokens=n, first_entry=first,
            pos=moved["pos"], mask=moved["mask"].view(len(new), -1).bool(),
        )  # fmt: skip

    def _stage_from_block(self, block: _Block) -> int:
        """Static inputs of the block's next token: device-to-device copies only."""
        a, b = block.first_entry[block.done], block.first_entry[block.done + 1]
        n, buf = b - a, self._buf
        static = self._static_rows(n)
        static["pos"].copy_(block.pos[a:b])
        slots = torch.arange(buf.size, buf.size + n, device=block.pos.device)
        static["slot"].copy_(slots)
        static["win_slot"].copy_(slots - buf.n_outer)
        static["mask"][:, buf.n_outer :].copy_(block.mask[a:b])
        block.done += 1
        return n

    def _static_rows(self, n: int) -> dict[str, torch.Tensor]:
        """The static inputs of an n-row step (made once per buffer build)."""
        if n not in self._rows:
            dev, cap = self.lm.device, self._buf.cap
            self._rows[n] = {
                "pos": torch.zeros(n, dtype=torch.long, device=dev),
                "slot": torch.zeros(n, dtype=torch.long, device=dev),
                "win_slot": torch.zeros(n, dtype=torch.long, device=dev),
                "mask": torch.zeros(n, cap, dtype=torch.bool, device=dev),
            }
            self._rows[n]["mask"][:, : self._buf.n_outer] = True
        return self._rows[n]

    # ---- buffers -------------------------------------------------------------------------------
    def _build(self, chunk: Chunk) -> None:
        """Fill fresh buffers from the memory: O's RoPE'd keys, the window's keys at their positions."""
        memory = self.memory()
        parts = self.lm.parts
        ensure_rot(parts, memory)
        n_o, c = chunk.n_outer, chunk.n_cached
        size = n_o + c
        cap = size + self.headroom
        cap += -cap % 256
        pos_all = torch.arange(cap, device=memory.device)
        like = memory.keys[0]
        cos, sin = parts.rotary_emb(like, pos_all[None])
        cos, sin = cos[0], sin[0]  # (cap, d)
        win_pos = chunk.cols.pos[:c].to(memory.device)
        b, h, _, d = like.shape
        k_rot, values, k_win = [], [], []
        for i in range(memory.n_layers):
            kr = torch.zeros(b, h, cap, d, dtype=like.dtype, device=like.device)
            kr[:, :, :n_o] = memory.rot_keys[i]
            w = memory.keys[i][:, :, n_o:size]
            kr[:, :, n_o:size] = apply_rope(w, cos[win_pos], sin[win_pos])
            v = torch.zeros_like(kr)
            v[:, :, :size] = memory.values[i]
            kw = torch.zeros(b, h, cap - n_o, d, dtype=like.dtype, device=like.device)
            kw[:, :, :c] = w
            k_rot.append(kr)
            values.append(v)
            k_win.append(kw)
        slot_pos = torch.cat([torch.arange(n_o), chunk.cols.pos[:c]])
        self._memory = memory
        self._buf = _Buffers(n_o, cap, k_rot, values, k_win, cos, sin, slot_pos, size)
        self._graphs, self._pool, self._rows = {}, None, {}
        self.stats["builds"] += 1

    def _stage(self, chunk: Chunk) -> int:
        """Write this step's positions, slots and mask into the static inputs; returns the row count."""
        buf, n = self._buf, chunk.n_rows
        c = chunk.n_cached
        static = self._static_rows(n)
        visible = window_mask(self.lm.config, chunk.host_meta(), c)  # (n, c + n), host
        mask_win = torch.zeros(n, buf.cap - buf.n_outer, dtype=torch.long)
        mask_win[:, : c + n] = visible
        slots = torch.arange(buf.size, buf.size + n)
        host = {
            "pos": chunk.cols.pos[c:],
            "slot": slots,
            "win_slot": slots - buf.n_outer,
            "mask": mask_win.flatten(),
        }
        moved = self.lm._stager.move(host)
        static["pos"].copy_(moved["pos"])
        static["slot"].copy_(moved["slot"])
        static["win_slot"].copy_(moved["win_slot"])
        static["mask"][:, buf.n_outer :].copy_(moved["mask"].view(n, -1).bool())
        return n

    # ---- the step itself -----------------------------------------------------------------------
    def _body(self, n: int) -> torch.Tensor:
        """One appending step over the static buffers: n rows (1 raw + beacons). Graph-safe."""
        lm, parts, buf, static = self.lm, self.lm.parts, self._buf, self._rows[n]
        beacon = lm._beacon
        x = parts.embed_tokens(self._tokens)  # (b, 1, hidden)
        b = x.shape[0]
        if n > 1:
            emb = beacon["embed"].weight[0].to(x.dtype)
            x = torch.cat([x, emb.expand(b, n - 1, -1)], dim=1)
        cos, sin = buf.cos[static["pos"]][None, None], buf.sin[static["pos"]][None, None]  # (1, 1, n, d)
        h_kv, d = parts.n_kv_heads, parts.head_dim
        group = parts.n_heads // h_kv
        for i, layer in enumerate(parts.layers):
            proj = beacon["layers"][i]
            attn = layer.self_attn
            hid = layer.input_layernorm(x)
            q = _project(attn.q_proj, proj.get("q"), hid, 1).view(b, n, parts.n_heads, d)
            k = _project(attn.k_proj, proj.get("k"), hid, 1).view(b, n, h_kv, d)
            v = _project(attn.v_proj, proj.get("v"), hid, 1).view(b, n, h_kv, d)
            if parts.family.qk_norm:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            buf.k_win[i].index_copy_(2, static["win_slot"], k)
            buf.k_rot[i].index_copy_(2, static["slot"], apply_rope(k, cos, sin))
            buf.values[i].index_copy_(2, static["slot"], v)
            out = _attend(apply_rope(q, cos, sin), buf.k_rot[i], buf.values[i], static["mask"], parts.scaling, group)
            out = out.transpose(1, 2).reshape(b, n, parts.n_heads * d)
            x = x + _project(attn.o_proj, proj.get("o"), out, 1)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return parts.lm_head(parts.norm(x[:, :1]))[:, 0].float()

    def _run(self, n: int) -> torch.Tensor:
        """The step, eager or through torch.compile (one compiled function per process, dynamic
        shapes: the buffers grow between builds)."""
        return _compiled_body()(self, n) if self.compiled else self._body(n)

    def _replay(self, n: int) -> torch.Tensor:
        if n not in self._graphs:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._run(n)  # warm-up: compiling, lazy inits and autotuning happen outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._run(n)
            self._pool = graph.pool()
            self._graphs[n] = (graph, out)
        graph, out = self._graphs[n]
        graph.replay()
        return out


@functools.cache
def _compiled_body():
    return torch.compile(StaticDecoder._body, dynamic=True)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, group: int
) -> torch.Tensor:
    """q (b, h, n, d) over all slots of k, v (b, h_kv, cap, d) where mask (n, cap) allows.

    Query heads are grouped under their key/value head (h = h_kv * group, as HF's repeat_kv), so
    keys and values are read once; scores and softmax in float32, P·V in the values' dtype.
    """
    b, h, n, d = q.shape
    h_kv, cap = k.shape[1], k.shape[2]
    qg = q.reshape(b * h_kv, group * n, d)
    kt = k.reshape(b * h_kv, cap, d).transpose(1, 2)
    if q.dtype == torch.float32:
        scores = torch.bmm(qg, kt)
    elif q.is_cuda and _HAS_OUT_DTYPE:
        scores = torch.bmm(qg, kt, out_dtype=torch.float32)  # bf16 inputs, float32 products
    else:
        scores = torch.bmm(qg.float(), kt.float())
    scores = (scores * scale).view(b * h_kv, group, n, cap).masked_fill(~mask, float("-inf"))
    probs = F.softmax(scores, dim=-1).to(v.dtype).view(b * h_kv, group * n, cap)
    out = torch.bmm(probs, v.reshape(b * h_kv, cap, d))
    return out.view(b, h, n, d)
