"""Refuse a snapshot made by another model: compare the stored fingerprint with the asking model's.

A fingerprint (beacon.fingerprint) names the base model, its dtype, hashes of its config and of a
probe of its weights, a hash of the beacon weights and the beacon config; its `id` summarises
all but the name. Equal ids -> the memory is what this model computes; else the error names both
sides and every field that differs.
"""

from __future__ import annotations

import hashlib
import json

from .errors import FingerprintMismatchError

_COMPARED = ("model_type", "dtype", "base_config_sha256", "base_probe_sha256", "beacon_weights_sha256")


def check_fingerprint(stored: dict, current: dict, *, doc_id: str) -> None:
    """Raise FingerprintMismatchError unless `current` may use a memory made under `stored`."""
    if not isinstance(current, dict) or "id" not in current:
        raise ValueError(
            f"fingerprint must be the dict of lm.fingerprint() (with an 'id'), got {type(current).__name__}"
        )
    if stored.get("id") == current["id"]:
        return
    diffs = [f"{k}: {stored.get(k)!r} vs {current.get(k)!r}" for k in _COMPARED if stored.get(k) != current.get(k)]
    sc, cc = stored.get("beacon_config") or {}, current.get("beacon_config") or {}
    diffs += [
        f"beacon_config.{k}: {sc.get(k)!r} vs {cc.get(k)!r}"
        for k in sorted(set(sc) | set(cc))
        if sc.get(k) != cc.get(k)
    ]
    raise FingerprintMismatchError(
        f"document {doc_id!r} was condensed by {_side(stored)}; this model is {_side(current)}."
        f" They differ in {'; '.join(diffs) or 'the fingerprint id'}."
        " Load the model the snapshot was made with, or condense the document again with this one."
    )


def _side(fp: dict) -> str:
    return f"{fp.get('name') or '?'} ({fp.get('model_type')}, {fp.get('dtype')}, fingerprint {fp.get('id')})"


def fingerprint_problem(fp: dict) -> str | None:
    """Why a stored fingerprint is not self-consistent (its `id` is not the hash of its fields), or None."""
    if not isinstance(fp, dict) or "id" not in fp:
        return "its fingerprint has no id"
    key = {k: v for k, v in fp.items() if k not in ("id", "name")}
    want = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    if want != fp["id"]:
        return f"its fingerprint's id {fp['id']} is not the hash of its fields ({want}): the record was altered"
    return None
