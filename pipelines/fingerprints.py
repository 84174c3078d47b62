"""The model's fingerprint for ingestion, without a cluster when possible.

Deciding what is stored already needs `lm.fingerprint()` of the ingesting model. It is kept in
`<db>/fingerprints.json`, keyed by the model folder, the dtype and the name, size and mtime of
every file in the folder, so a later run over the same model knows it without loading anything
(an ingest with nothing to do never starts Ray). On a miss it is computed in this process on the
CPU when the folder's weights are small (≤ IN_PROCESS_BYTES), else by a Ray task (the caller
starts Ray for it). Hub ids are not cached (no files to key them on). For a store on an object
store the file is in this machine's cache folder instead (cache_file).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from snapshots.location import is_uri

CACHE_FILE = "fingerprints.json"
IN_PROCESS_BYTES = 2 << 30


def model_key(model: str, dtype: str | None) -> str | None:
    """A key that changes when any file of the model folder changes (None for a hub id)."""
    folder = Path(model)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stats = [(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps([str(folder.resolve()), dtype, stats]).encode()).hexdigest()


def cache_file(db: str) -> Path:
    """Where fingerprints are remembered for the store `db`: in its folder; for a store on an object
    store, in this machine's cache folder ($XDG_CACHE_HOME/beacon, else ~/.cache/beacon). A key names
    the model's files only, so one cache serves every store, and a local file keeps "an ingest with
    nothing to do never starts Ray" without a side object next to the tables."""
    if not is_uri(db):
        return Path(db) / CACHE_FILE
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "beacon" / CACHE_FILE


def cached(db: str, model: str, dtype: str | None) -> dict | None:
    """The fingerprint remembered for this model and dtype (see cache_file), or None."""
    key = model_key(model, dtype)
    path = cache_file(db)
    if key is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError):
        return None  # a damaged cache is only a miss


def remember(db: str, model: str, dtype: str | None, fingerprint: dict) -> None:
    """Keep `fingerprint` in the cache file (best effort; written atomically)."""
    key = model_key(model, dtype)
    path = cache_file(db)
    if key is None:
        return
    try:
        if is_uri(db):
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            return  # a local store folder is not made for a cache
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known[key] = fingerprint
    tmp = path.with_name(f".{CACHE_FILE}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(known, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def small_enough_here(model: str) -> bool:
    """True if the model folder's files are small enough to load in this process (on the CPU)."""
    folder = Path(model)
    return folder.is_dir() and sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= IN_PROCESS_BYTES


def compute(model: str, dtype: str | None) -> dict:
    """lm.fingerprint() of `model` in `dtype`, loaded on the CPU here (device-independent)."""
    import beacon

    return beacon.load(model, device="cpu", dtype=dtype, tokenizer=False).fingerprint()


def on_ray(model: str, dtype: str | None) -> dict:
    """The same, computed by a Ray task on a CPU (Ray must be connected)."""
    import ray

    return ray.get(ray.remote(num_cpus=1)(compute).remote(model, dtype))
