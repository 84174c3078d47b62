"""Defaults shared by the pipelines, jobs, CLI and bench: the default model and store, and how to find them."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "models/beacon-tiny-code"  # the small trained model the repo ships
DEFAULT_DB = "beacon_db"  # a local folder (ignored by git)
REPO_ROOT = Path(__file__).resolve().parent.parent

HOW_TO_GET_DEFAULT_MODEL = (
    f"The default model {DEFAULT_MODEL} is not here. It ships with the repository (git pull), or is"
    " rebuilt with `python -m bench.repro.run --work WORK` (GPU, ~16 min; see docs/pipelines.md,"
    " 'Default model'), which leaves it in WORK/beacon-tiny-code: copy that to models/. Or pass"
    " --model with any beacon checkpoint (local folder or hub id) that has a tokenizer."
)


def resolve_model(model: str | os.PathLike) -> str:
    """`model` as an absolute path if it is a local folder (actors may run elsewhere), else unchanged.

    The default model is looked up in the current folder, then in the repository. Raises
    ValueError saying how to get it when it is missing.
    """
    path = Path(model)
    if path.is_dir():
        return str(path.resolve())
    if str(model) == DEFAULT_MODEL:
        if (REPO_ROOT / DEFAULT_MODEL).is_dir():
            return str(REPO_ROOT / DEFAULT_MODEL)
        raise ValueError(HOW_TO_GET_DEFAULT_MODEL)
    if path.is_absolute() or str(model).startswith((".", "~")):
        raise ValueError(f"model folder {str(model)!r} does not exist: give a beacon checkpoint folder or hub id")
    return str(model)  # a hub id; beacon.load says if it cannot be fetched


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute (workers may have another working directory); URIs unchanged."""
    text = str(path)
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())
