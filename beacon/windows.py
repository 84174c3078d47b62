"""Window, beacon, position and mask arithmetic — pure functions, no Hugging Face, no Ray.

Glossary (shapes and symbols used in this file):
  w   beacon_window (raw tokens per window)      s   beacon_stride
  r   a ratio alpha (raw tokens per beacon; 0 = the window is kept raw)
  O   the outer memory: sink + condensed entries of finished windows, visible to every query
  W   the current window's entries: its raw tokens (and, interleaved, its beacons so far)
  e   an entry's logical index inside its window (raw and beacons counted in reading order)
  p0  position of the window's first entry (= |O| when the window started)

A memory is laid out as [O | W] along the sequence axis. A *step* reads the new raw tokens of one
window (up to its end); a *chunk* is one forward pass over one or more steps (parallel windows).
Everything here works on Python ints and small int64 tensors: the GPU never waits on the host.

Reading order inside a window (w=8, r=2):
  append:      x0 x1 x2 x3 x4 x5 x6 x7 b0 b1 b2 b3          (beacons after the window's raw)
  interleave:  x0 x1 b0 x2 x3 b1 x4 x5 b2 x6 x7 b3          (a beacon after every r raw)

Which window entries a query sees (plus all of O, and itself):
  raw query      -> every earlier raw entry; earlier beacons only with full-coverage
  beacon j query -> raw x_i with   full-coverage: every earlier raw
                                   step-expansion: i < (j+1)*r
                                   segmentation:   j*r <= i < (j+1)*r
                 -> earlier beacons with full-coverage or beacon_attend_prev
  e.g. append, step-expansion, w=4, r=2, attend_prev=False (1 = attends):
           x0 x1 x2 x3 b0 b1
      x0 [ 1  .  .  .  .  . ]
      x1 [ 1  1  .  .  .  . ]
      x2 [ 1  1  1  .  .  . ]
      x3 [ 1  1  1  1  .  . ]
      b0 [ 1  1  .  .  1  . ]
      b1 [ 1  1  1  1  .  1 ]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .config import BeaconConfig

# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowState:
    """The integers a memory carries besides its tensors: where the current window stands."""

    n_tokens: int = 0  # raw tokens read so far
    n_sink: int = 0  # sink entries (raw activations kept forever)
    n_beacons: int = 0  # condensed entries of finished windows (beacons, or raw of ratio-0 windows)
    window_raw: int = 0  # raw tokens in the current window (incl. the overlap when stride < window)
    window_beacons: int = 0  # beacons already in the current window (interleave only)
    window_ratio: int = -1  # ratio of the current window; -1 = not chosen yet
    n_windows: int = 0  # finished (condensed) windows
    sequence_ratio: int = -1  # ratio fixed once per sequence (instance-random, adapt-N); -1 = not yet
    zero_used: bool = False  # a ratio-0 window has been condensed (training filter)
    seed: int = 42  # seed of the random ratio mixes

    @property
    def n_outer(self) -> int:
        """Entries visible to every later query: sink + condensed."""
        return self.n_sink + self.n_beacons

    @property
    def n_window(self) -> int:
        """Entries of the current, unfinished window."""
        return self.window_raw + self.window_beacons

    @property
    def size(self) -> int:
        """All entries held per layer: |O| + |W|."""
        return self.n_outer + self.n_window

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WindowState:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown window-state fields {sorted(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Ratio choice
# ---------------------------------------------------------------------------------------------


def max_length_for_ratio(ratio: int, window: int, max_positions: int) -> int:
    """Longest sequence a ratio can read before positions run past the model's range."""
    if ratio == 0:
        return max_positions
    return (max_positions - window) * ratio + window


def answer_positions(cfg: BeaconConfig, states: list[WindowState], n_new: int) -> int:
    """The most entries (RoPE positions) the memory of `states` (documents read one after another)
    can hold while `n_new` more tokens (prompt and answer) are read after it: at the ratio the last
    document fixed, else the worst ratio of the mix. New tokens continue the last document's open
    window: its raw tokens and theirs stay raw until a window closes (at most a window of them at
    once), every window that closes keeps stride/ratio beacons, and the first to close also keeps
    the sink."""
    last = states[-1]
    ratios = [last.sequence_ratio] if last.sequence_ratio >= 0 else sorted(set(cfg.beacon_ratio))
    return max(_positions_at(cfg, states, n_new, ratio) for ratio in ratios)


def _positions_at(cfg: BeaconConfig, states: list[WindowState], n_new: int, ratio: int) -> int:
    last = states[-1]
    before = sum(s.size for s in states) - last.n_window  # what the new tokens never change
    sink = cfg.beacon_sink_size if before == 0 else 0  # taken when the first window closes, if nothing precedes it
    raw = last.window_raw + n_new  # the open window's raw tokens and the new ones
    if ratio == 0:  # ratio-0 windows keep every raw token
        return before + sink + raw
    windows = -(-raw // cfg.beacon_stride)  # windows that close over them (overlapping when stride < window)
    beacons = windows * -(-cfg.beacon_stride // ratio)
    return before + sink + beacons + min(raw, cfg.beacon_window)


class PositionsError(ValueError):
    """A question whose memory + prompt + answer would pass the model's positions (check_answer_room)."""


def check_answer_room(
    cfg: BeaconConfig, states: list[WindowState], n_prompt: int, max_tokens: int, max_positions: int
) -> None:
    """PositionsError (a ValueError) unless a prompt of `n_prompt` tokens and an answer of up to
    `max_tokens` read after the memory of `states` stay within the model's `max_positions`: RoPE
    positions past them are ones the model never saw, so such an answer is refused, not made up."""
    need = answer_positions(cfg, states, n_prompt + max_tokens)
    if need > max_positions:
        raise PositionsError(
            f"the documents' memory ({sum(s.size for s in states)} entries) + prompt ({n_prompt} tokens) +"
            f" answer (up to {max_tokens} tokens) need up to {need} positions (window {cfg.beacon_window}):"
            f" over this model's limit of {max_positions} positions; give fewer documents or fewer new tokens"
        )


def _draw(valid: list[int], seed: int, salt: int, counter: int) -> int:
    # Counter-based draw: the ratio of window k depends only on (seed, k), so reading a sequence
    # at once or in pieces, or from a reloaded snapshot, picks the same ratios.
    rng = np.random.default_rng([seed & 0xFFFFFFFF, salt, counter])
    return int(valid[int(rng.integers(len(valid)))])


def choose_ratio(
    cfg: BeaconConfig,
    state: WindowState,
    *,
    window_start: int,
    known_length: int,
    max_positions: int,
    training: bool,
) -> tuple[int, WindowState]:
    """Pick the ratio of the window that starts at token `window_start`.

    `known_length` is the number of tokens the sequence is known to have when the choice is made
    (read so far + this call's input, or a caller's hint): adapt-N fixes its ratio once per
    sequence from it. Returns (ratio, state with any per-sequence choice recorded).
    """
    ratios = cfg.beacon_ratio
    if len(ratios) == 1:
        return ratios[0], state
    valid = list(ratios)
    if training and 0 in valid:
        # ratio 0 trains nothing unless a later window condenses and none before kept raw
        following = window_start + cfg.beacon_stride + cfg.beacon_window <= known_length
        if state.zero_used or not following:
            valid = [r for r in valid if r != 0]
    mix = cfg.beacon_ratio_mix
    if mix == "step-random":
        return _draw(valid, state.seed, 1, state.n_windows), state
    if mix == "sequence":
        return valid[state.n_windows % len(valid)], state
    if state.sequence_ratio >= 0:
        return state.sequence_ratio, state
    if mix == "instance-random":
        ratio = _draw(valid, state.seed, 2, 0)
    else:  # adapt-N: the smallest reach that covers the sequence and N future tokens
        need = known_length + (cfg.adapt_future or 0)
        reach = [(max_length_for_ratio(r, cfg.beacon_window, max_positions), r) for r in valid]
        covering = [x for x in reach if x[0] >= need]
        ratio = min(covering)[1] if covering else max(valid)
    return ratio, dataclasses.replace(state, sequence_ratio=ratio)


# ---------------------------------------------------------------------------------------------
# Entries of a window
# ---------------------------------------------------------------------------------------------


@dataclass
class Entries:
    """Metadata of a run of window entries in reading order (all 1-D int64 tensors of length n).

    beacon: 1 for a beacon, 0 for a raw token; idx: raw index i or beacon index j within the
    window; e: logical index within the window; pos: RoPE position.
    """

    beacon: torch.Tensor
    idx: torch.Tensor
    e: torch.Tensor
    pos: torch.Tensor

    def __len__(self) -> int:
        return int(self.beacon.shape[0])

    @staticmethod
    def cat(parts: list[Entries]) -> Entries:
        return Entries(*(torch.cat([getattr(p, f) for p in parts]) for f in ("beacon", "idx", "e", "pos")))


def _positions(
    cfg: BeaconConfig, ratio: int, p0: int, beacon: torch.Tensor, idx: torch.Tensor, e: torch.Tensor
) -> torch.Tensor:
    """RoPE positions of window entries (see module docstring)."""
    if cfg.beacon_attn == "full-coverage" or ratio == 0:
        return p0 + e
    # step-expansion / segmentation: raw x_i at p0+i; beacon j right after the last raw it covers
    beacon_pos = p0 + (idx + 1) * ratio
    if cfg.beacon_attend_prev:  # append only (validated): earlier beacons are spread in between
        beacon_pos = beacon_pos + idx
    return torch.where(beacon.bool(), beacon_pos, p0 + idx)


def window_entries(cfg: BeaconConfig, ratio: int, p0: int, raw_from: int, raw_to: int, closes: bool) -> Entries:
    """Entries created when raw tokens [raw_from, raw_to) of a window are read.

    `ratio` < 0 means not chosen yet (append, window still open). `closes` appends the window's
    beacons in append mode. Interleave inserts a beacon after every `ratio`-th raw token at once.
    """
    raw = torch.arange(raw_from, raw_to, dtype=torch.long)
    if cfg.interleave and ratio > 0:
        # beacons before raw i (within the window) = i // ratio, so raw i sits at e = i + i // ratio
        raw_e = raw + raw // ratio
        first_j, end_j = raw_from // ratio, raw_to // ratio
        j = torch.arange(first_j, end_j, dtype=torch.long)
        beacon_e = (j + 1) * (ratio + 1) - 1
        beacon = torch.cat([torch.zeros_like(raw), torch.ones_like(j)])
        idx = torch.cat([raw, j])
        e = torch.cat([raw_e, beacon_e])
        order = torch.argsort(e)  # reading order: each beacon right after its chunk's last raw
        beacon, idx, e = beacon[order], idx[order], e[order]
    else:
        beacon, idx, e = torch.zeros_like(raw), raw, raw.clone()
        if closes and ratio > 0:
            j = torch.arange(cfg.beacon_stride // ratio, dtype=torch.long)
            beacon = torch.cat([beacon, torch.ones_like(j)])
            idx = torch.cat([idx, j])
            e = torch.cat([e, cfg.beacon_window + j])
    pos = _positions(cfg, max(ratio, 0), p0, beacon, idx, e)
    return Entries(beacon=beacon, idx=idx, e=e, pos=pos)


def n_interleaved_beacons(ratio: int, raw_from: int, raw_to: int) -> int:
    """Beacons interleave mode inserts while raw tokens [raw_from, raw_to) arrive."""
    return 0 if ratio <= 0 else raw_to // ratio - raw_from // ratio


# ---------------------------------------------------------------------------------------------
# Steps: one per window touched by a call
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    """Reading `n_raw` new tokens of one window (the call's tokens [token_from, token_from+n_raw))."""

    token_from: int
    n_raw: int
    ratio: int  # ratio of this window; -1 while unknown (append, still open)
    closes: bool  # the window is condensed at the end of this step
    keep_raw_only: bool  # training's last window: no beacons at all
    before: WindowState
    after: WindowState
    cached: Entries  # the window's entries already in memory (|W| of `before`)
    new: Entries  # entries this step adds (queries)

    @property
    def window_entries(self) -> Entries:
        return Entries.cat([self.cached, self.new])

    def outer_sources(self, cfg: BeaconConfig) -> torch.Tensor:
        """Window-entry indices (into `window_entries`) that join O when this window closes."""
        if not self.closes:
            return torch.empty(0, dtype=torch.long)
        ent = self.window_entries
        parts = []
        if self.before.n_outer == 0 and cfg.beacon_sink_size > 0:
            parts.append(torch.argsort(ent.e)[: cfg.beacon_sink_size])  # sink: first entries read
        if self.ratio > 0:
            parts.append(torch.nonzero(ent.beacon == 1).flatten())
        else:  # ratio 0: the stride's raw activations are kept as they are
            parts.append(torch.nonzero((ent.beacon == 0) & (ent.idx < cfg.beacon_stride)).flatten())
        return torch.cat(parts)

    def carried_sources(self, cfg: BeaconConfig) -> torch.Tensor:
        """Window-entry indices that stay in W after this step (all, or the overlap if it closes)."""
        ent = self.window_entries
        if not self.closes:
            return torch.arange(len(ent), dtype=torch.long)
        return torch.nonzero((ent.beacon == 0) & (ent.idx >= cfg.beacon_stride)).flatten()


def plan_steps(
    cfg: BeaconConfig,
    state: WindowState,
    n_new: int,
    *,
    known_length: int | None = None,
    max_positions: int,
    training: bool = False,
) -> list[Step]:
    """Cut `n_new` incoming tokens into per-window steps and compute each step's state change.

    `known_length` (default: tokens read so far + n_new) is what adapt-N sees. With
    `training=True` the call's last window gets no beacons (they would never be read), as in the
    official recipe.
    """
    if n_new < 0:
        raise ValueError(f"n_new must be >= 0, got {n_new}")
    if training and state.n_tokens > 0:
        raise ValueError("training reads a whole sequence from an empty memory; got a memory with tokens")
    if known_length is None:
        known_length = state.n_tokens + n_new
    w, s = cfg.beacon_window, cfg.beacon_stride
    steps: list[Step] = []
    read = 0
    while read < n_new:
        before = state
        n_raw = min(n_new - read, w - state.window_raw)
        raw_from, raw_to = state.window_raw, state.window_raw + n_raw
        last_of_call = read + n_raw == n_new
        keep_raw_only = training and last_of_call
        closes = raw_to == w and not keep_raw_only
        window_start = state.n_tokens - state.window_raw
        ratio = -1 if keep_raw_only else state.window_ratio
        if not keep_raw_only and ratio < 0 and (cfg.interleave or closes):
            # interleave fixes the ratio when a window opens; append when it closes
            ratio, state = choose_ratio(
                cfg,
                state,
                window_start=window_start,
                known_length=known_length,
                max_positions=max_positions,
                training=training,
            )
        p0 = state.n_outer
        cached = window_entries(cfg, ratio, p0, 0, raw_from, False)
        if len(cached) != before.n_window:
            raise RuntimeError(f"window cache holds {before.n_window} entries, layout says {len(cached)}")
        new = window_entries(cfg, ratio, p0, raw_from, raw_to, closes)
        new_beacons = n_interleaved_beacons(ratio, raw_from, raw_to) if cfg.interleave else 0
        if closes:
            n_cond = s // ratio if ratio > 0 else s
            first = state.n_outer == 0 and cfg.beacon_sink_size > 0
            after = dataclasses.replace(
                state,
                n_tokens=state.n_tokens + n_raw,
                n_sink=state.n_sink + (cfg.beacon_sink_size if first else 0),
                n_beacons=state.n_beacons + n_cond,
                window_raw=w - s,
                window_beacons=0,
                window_ratio=-1,
                n_windows=state.n_windows + 1,
                zero_used=state.zero_used or ratio == 0,
            )
        else:
            after = dataclasses.replace(
                state,
                n_tokens=state.n_tokens + n_raw,
                window_raw=raw_to,
                window_beacons=state.window_beacons + new_beacons,
                window_ratio=ratio if cfg.interleave and not keep_raw_only else state.window_ratio,
            )
        steps.append(Step(read, n_raw, ratio, closes, keep_raw_only, before, after, cached, new))
        state = after
        read += n_raw
    return steps


def group_steps(cfg: BeaconConfig, steps: list[Step]) -> list[list[Step]]:
    """Group consecutive steps into forward passes of up to beacon_parallel_window windows.

    A step joins the previous group only when that group's last window closed and the stride
    equals the window (so the new window starts empty): then one pass gives exactly what
    sequential passes give.
    """
    groups: list[list[Step]] = []
    for step in steps:
        if (
            groups
            and len(groups[-1]) < cfg.beacon_parallel_window
            and groups[-1][-1].closes
            and cfg.beacon_stride == cfg.beacon_window
        ):
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


# ---------------------------------------------------------------------------------------------
# Chunks: the layout of one forward pass
# ---------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """One forward pass over a group of steps, laid out along the memory's sequence axis:

        [ O (n_outer) | cached W (n_cached) | rows (n_rows, the queries) | copies (n_copies) ]

    Rows are the new entries, raw ones first (in input order: they read tokens [token_from,
    token_to) of the call) and then beacons, so projections split by slicing.
    Attention depends only on positions and the mask, never on storage order. `copies` are the
    entries closed windows hand to O, at their future O positions, so later windows of the same
    pass see them exactly as they would after condensing. After the pass the memory keeps
    [ O | joiners | carried W ] with `compact_src` picking slots counted from the cached start.
    All index tensors are int64 on the host; staging.Stager moves them in one copy per pass.
    """

    steps: list[Step]
    n_outer: int
    n_cached: int
    n_raw: int  # raw rows: the first n_raw rows
    token_from: int
    token_to: int
    cols: Entries  # metadata of cached + rows, column order
    col_window: torch.Tensor  # which step each of those columns belongs to
    row_ratio: torch.Tensor  # (n_rows,) ratio of each row's window (0 when none)
    copy_src: torch.Tensor  # (n_copies,) slot each copy is taken from
    copy_pos: torch.Tensor  # (n_copies,) its O position
    copy_window: torch.Tensor  # (n_copies,) the step that hands it over
    compact_src: torch.Tensor  # slots kept after the pass, in memory order
    n_joined: int  # how many of compact_src join O (the rest is the carried W)
    before: WindowState
    after: WindowState

    @property
    def n_rows(self) -> int:
        return len(self.cols) - self.n_cached

    @property
    def n_copies(self) -> int:
        return int(self.copy_src.shape[0])

    @property
    def n_window_keys(self) -> int:
        """Keys besides O: cached + rows + copies."""
        return len(self.cols) + self.n_copies

    @property
    def closes(self) -> bool:
        return any(s.closes for s in self.steps)

    def tail_rows(self) -> dict[str, torch.Tensor]:
        """What the last two layers of a pass need when no logits are wanted ({} if every row).

        A memory keeps only the last layer's keys/values of the `compact_src` slots, so the last
        layer needs only those rows' input, and the layer before it computes o_proj and MLP for
        them alone (its keys and values, and so its attention, still cover every row). Returns
        host int64 vectors: "tail_rows" (sorted rows kept), "tail_compact" (compact_src counted
        over [cached W | kept rows]) and "tail_beacon_rows" (which kept rows are beacons)."""
        c, n, src = self.n_cached, self.n_rows, self.compact_src
        rows = torch.unique(src[src >= c] - c)
        if len(rows) == n:
            return {}
        where = torch.full((n,), -1, dtype=torch.long)
        where[rows] = torch.arange(len(rows))
        compact = torch.where(src >= c, c + where[(src - c).clamp(min=0)], src)
        beacon_rows = torch.nonzero(self.cols.beacon[c:][rows] == 1).flatten()
        return {"tail_rows": rows, "tail_compact": compact, "tail_beacon_rows": beacon_rows}

    def host_meta(self) -> dict[str, torch.Tensor]:
        """All index vectors of the pass (host int64), named as window_mask and forward expect."""
        return {
            "beacon": self.cols.beacon,
            "idx": self.cols.idx,
            "e": self.cols.e,
            "pos": self.cols.pos,
            "window": self.col_window,
            "row_ratio": self.row_ratio,
            "copy_src": self.copy_src,
            "copy_pos": self.copy_pos,
            "copy_window": self.copy_window,
            "compact_src": self.compact_src,
        }


def visible(
    cfg: BeaconConfig,
    row: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    col: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The beacon mask rule — the one place it is written: may a row see a window entry?

    row = (beacon, idx, e, window, ratio) of the query rows, col = (beacon, idx, e, window) of the
    window entries (`Chunk.host_meta` vectors; `beacon` as bool). Elementwise and broadcasting, so
    `window_mask` passes a column of rows against a row of entries (the whole grid) and FlexAttention's
    mask_mod one (query, key) pair at a time. An entry is seen within its own window only; its own
    row always; otherwise it must be earlier in reading order (`e`) and:
      a raw row sees earlier raw entries, and earlier beacons under full-coverage;
      a beacon row sees earlier beacons if full-coverage or beacon_attend_prev, and earlier raw
      entries under full-coverage / of the segments it condenses (step-expansion: all up to its
      own segment's end, segmentation: its own segment only).
    """
    rb, ri, re, rw, rr = row
    cb, ci, ce, cw = col
    earlier = ce < re
    if cfg.beacon_attn == "full-coverage":
        raw_row = beacon_row = earlier
    else:
        see_raw = earlier & (ci < (ri + 1) * rr)
        if cfg.beacon_attn == "segmentation":
            see_raw = see_raw & (ci >= ri * rr)
        raw_row = earlier & ~cb
        beacon_row = torch.where(cb, earlier & cfg.beacon_attend_prev, see_raw)
    return (torch.where(rb, beacon_row, raw_row) | (ce == re)) & (cw == rw)


def sees_copy(copy_window: torch.Tensor, row_window: torch.Tensor) -> torch.Tensor:
    """A row sees the copies of every earlier window of its pass (parallel windows), none of its own."""
    return copy_window < row_window


def window_mask(cfg: BeaconConfig, meta: dict[str, torch.Tensor], n_cached: int) -> torch.Tensor:
    """(n_rows, n_cached + n_rows + n_copies) bool, True where a row attends. O is not included.

    `visible` over the whole grid, on `Chunk.host_meta` vectors (moved to the model's device), so it
    runs where the model runs.
    """
    col = (meta["beacon"][None].bool(), meta["idx"][None], meta["e"][None], meta["window"][None])
    rb, ri, re, rw = (meta[k][n_cached:, None] for k in ("beacon", "idx", "e", "window"))
    row = (rb.bool(), ri, re, rw, meta["row_ratio"][:, None])
    copies = sees_copy(meta["copy_window"][None, :], rw)
    return torch.cat([visible(cfg, row, col), copies], dim=1)


def build_chunk(cfg: BeaconConfig, steps: list[Step]) -> Chunk:
    """Lay out one forward pass over `steps` (a group from `group_steps`), rows raw-first (see Chunk)."""
    first = steps[0]
    n_outer, n_cached = first.before.n_outer, len(first.cached)
    # rows in reading order, then permuted raw-first
    reading = Entries.cat([s.new for s in steps])
    window = torch.cat([torch.full((len(s.new),), k, dtype=torch.long) for k, s in enumerate(steps)])
    ratio = torch.cat([torch.full((len(s.new),), max(s.ratio, 0), dtype=torch.long) for s in steps])
    perm = torch.argsort(reading.beacon, stable=True)  # raw-first row -> its reading-order row
    slot_of = torch.empty_like(perm)
    slot_of[perm] = torch.arange(len(perm)) + n_cached  # reading-order row -> its slot
    rows = Entries(reading.beacon[perm], reading.idx[perm], reading.e[perm], reading.pos[perm])

    copy_src, copy_pos, copy_window, joined = [], [], [], []
    carried = torch.empty(0, dtype=torch.long)
    outer_pos, offset = n_outer, 0
    for k, step in enumerate(steps):
        n = len(step.new)
        cached_slots = torch.arange(n_cached) if k == 0 else torch.empty(0, dtype=torch.long)
        ent_slots = torch.cat([cached_slots, slot_of[offset : offset + n]])  # window entries -> slots
        joiners = ent_slots[step.outer_sources(cfg)]
        joined.append(joiners)
        if k < len(steps) - 1:  # the last window's joiners are only needed after the pass
            copy_src.append(joiners)
            copy_pos.append(torch.arange(outer_pos, outer_pos + len(joiners)))
            copy_window.append(torch.full((len(joiners),), k, dtype=torch.long))
        else:
            carried = ent_slots[step.carried_sources(cfg)]
        outer_pos += len(joiners)
        offset += n
    empty = torch.empty(0, dtype=torch.long)
    joined_t = torch.cat(joined)
    n_raw = sum(s.n_raw for s in steps)
    return Chunk(
        steps=steps,
        n_outer=n_outer,
        n_cached=n_cached,
        n_raw=n_raw,
        token_from=first.token_from,
        token_to=first.token_from + n_raw,
        cols=Entries.cat([first.cached, rows]),
        col_window=torch.cat([torch.zeros(n_cached, dtype=torch.long), window[perm]]),
        row_ratio=ratio[perm],
        copy_src=torch.cat(copy_src) if copy_src else empty,
        copy_pos=torch.cat(copy_pos) if copy_pos else empty,
        copy_window=torch.cat(copy_window) if copy_window else empty,
        compact_src=torch.cat([joined_t, carried]),
        n_joined=int(joined_t.shape[0]),
        before=first.before,
        after=steps[-1].after,
    )
