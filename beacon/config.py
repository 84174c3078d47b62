"""Beacon settings: one dataclass with the official field names (checkpoints carry them).

Defaults follow the official code's configuration classes, so a checkpoint whose config.json omits
a field means the same thing here as there. Every combination is checked in `validate()`, and the
error says what to change.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

ATTN_SCHEMES = ("segmentation", "step-expansion", "full-coverage")
POSITIONS = ("append", "interleave")
RATIO_MIXES = ("step-random", "instance-random", "sequence")  # plus "adapt-N"
PARAMS = ("q", "k", "v", "o")
EMBED_INITS = ("bos", "eos")

_ADAPT = re.compile(r"^adapt-(\d+)$")


@dataclass
class BeaconConfig:
    """How beacons condense a sequence. Field names are the official ones (config.json keys)."""

    beacon_window: int = 1024  # w: raw tokens per window
    beacon_stride: int = 1024  # how far the window moves; < window keeps an overlap raw (append only)
    beacon_attn: str = "full-coverage"  # which raw tokens a beacon attends to (ATTN_SCHEMES)
    beacon_ratio: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])  # 0 = keep raw
    beacon_ratio_mix: str = "step-random"  # RATIO_MIXES or "adapt-N"
    beacon_param: list[str] = field(default_factory=list)  # projections with beacon weights
    beacon_embed_init: str = "eos"  # beacon embedding initialised from this token's embedding
    beacon_sink_size: int = 0  # leading entries kept raw forever
    beacon_attend_prev: bool = True  # beacons see earlier beacons of their window
    beacon_pos: str = "interleave"  # where beacons sit among raw tokens (POSITIONS)
    beacon_parallel_window: int = 1  # windows encoded per forward pass (speed only)
    beacon_seed: int = 42  # seed of the random ratio mixes (not an official field)

    def __post_init__(self) -> None:
        self.beacon_ratio = [int(r) for r in self.beacon_ratio]
        self.beacon_param = [str(p) for p in self.beacon_param]
        self.validate()

    # ---- derived values ------------------------------------------------------------------------
    @property
    def adapt_future(self) -> int | None:
        """N of an `adapt-N` ratio mix (future tokens to leave room for), else None."""
        m = _ADAPT.match(self.beacon_ratio_mix)
        return int(m.group(1)) if m else None

    @property
    def interleave(self) -> bool:
        return self.beacon_pos == "interleave"

    # ---- checks --------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the setting that is wrong and what to change."""
        w, s = self.beacon_window, self.beacon_stride
        if w < 1 or s < 1:
            raise ValueError(f"beacon_window ({w}) and beacon_stride ({s}) must be >= 1")
        if s > w:
            raise ValueError(f"beacon_stride ({s}) must be <= beacon_window ({w})")
        if self.beacon_attn not in ATTN_SCHEMES:
            raise ValueError(f"beacon_attn={self.beacon_attn!r}: choose one of {ATTN_SCHEMES}")
        if self.beacon_pos not in POSITIONS:
            raise ValueError(f"beacon_pos={self.beacon_pos!r}: choose one of {POSITIONS}")
        if self.beacon_ratio_mix not in RATIO_MIXES and self.adapt_future is None:
            raise ValueError(
                f"beacon_ratio_mix={self.beacon_ratio_mix!r}: choose one of {RATIO_MIXES} or 'adapt-N'"
                " (N = future tokens to leave room for, e.g. 'adapt-1024')"
            )
        if not self.beacon_ratio:
            raise ValueError("beacon_ratio is empty: give at least one ratio, e.g. [8]")
        for r in self.beacon_ratio:
            if r < 0:
                raise ValueError(f"beacon_ratio {self.beacon_ratio} has a negative ratio {r}")
            if r > 0 and (r > s or s % r != 0):
                raise ValueError(
                    f"beacon_ratio {r} does not divide beacon_stride {s}: every ratio must divide the"
                    " stride so that each window leaves a whole number of beacons"
                )
        bad = [p for p in self.beacon_param if p not in PARAMS]
        if bad:
            raise ValueError(f"beacon_param {self.beacon_param} has unknown {bad}: use a subset of {PARAMS}")
        if self.beacon_embed_init not in EMBED_INITS:
            raise ValueError(f"beacon_embed_init={self.beacon_embed_init!r}: choose one of {EMBED_INITS}")
        if not 0 <= self.beacon_sink_size < w:
            raise ValueError(
                f"beacon_sink_size ({self.beacon_sink_size}) must be in [0, beacon_window={w}):"
                " the sink is taken from the first window"
            )
        if self.beacon_parallel_window < 1:
            raise ValueError(f"beacon_parallel_window ({self.beacon_parallel_window}) must be >= 1")
        if self.interleave and s != w:
            raise ValueError(
                f"beacon_pos='interleave' needs beacon_stride == beacon_window (got {s} != {w}):"
                " use beacon_pos='append' for an overlapping stride"
            )
        if self.interleave and self.beacon_attn != "full-coverage" and self.beacon_attend_prev:
            raise ValueError(
                f"beacon_pos='interleave' with beacon_attn={self.beacon_attn!r} needs"
                " beacon_attend_prev=False (a beacon's position is tied to its own chunk)"
            )

    # ---- conversion ----------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides: Any) -> BeaconConfig:
        """Build from a dict (e.g. a HF config's attributes); unknown keys are ignored, overrides win.

        Overrides must be beacon fields: a misspelt override is an error, not a silent no-op.
        """
        names = set(cls.field_names())
        unknown = sorted(k for k in overrides if k not in names)
        if unknown:
            raise ValueError(f"unknown beacon settings {unknown}; known: {sorted(names)}")
        picked = {k: v for k, v in values.items() if k in names and v is not None}
        picked.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**picked)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> BeaconConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)
