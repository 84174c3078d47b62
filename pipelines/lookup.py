"""Find a stored document by what a person types: its id, or an unambiguous stem, else the closest ids.

A stored id matches itself. Otherwise the name given without its file extension ("lighthouse.md"
→ "lighthouse") is tried, then the stem: the last part of the path without the extension
("lighthouse" finds "notes/lighthouse" if no other stored id ends that way). No match, or several,
raise DocumentNotFoundError naming the closest stored ids (difflib).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import PurePosixPath

from snapshots.errors import DocumentNotFoundError

N_SUGGESTIONS = 3


def _without_suffix(name: str) -> str:
    suffix = PurePosixPath(name).suffix
    return name[: -len(suffix)] if suffix and len(suffix) <= 10 else name


def _stem(name: str) -> str:
    return _without_suffix(PurePosixPath(name).name)


def resolve_id(given: str, stored: Iterable[str], *, where: str = "the store") -> str:
    """The stored id `given` names (see the module docstring); DocumentNotFoundError with suggestions if none."""
    ids = stored if isinstance(stored, (set, frozenset, dict)) else set(stored)
    if given in ids:
        return given
    bare = _without_suffix(given)
    if bare in ids:
        return bare
    matches = sorted(i for i in ids if _stem(i) == _stem(given) or _without_suffix(i) == bare)
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(repr(m) for m in matches[:10])
        raise DocumentNotFoundError(f"{given!r} could name several stored documents: {names}; give the full id")
    raise DocumentNotFoundError(f"no document {given!r} in {where}{suggest(given, ids)}")


def resolve_ids(given: Iterable[str], stored: Iterable[str], *, where: str = "the store") -> list[str]:
    ids = set(stored)
    return [resolve_id(g, ids, where=where) for g in given]


def suggest(given: str, ids: Iterable[str]) -> str:
    """'; did you mean 'a', 'b'?' (closest ids, by whole id or by stem), or a hint to list them."""
    ids = sorted(ids)
    by_stem: dict[str, list[str]] = {}
    for i in ids:
        by_stem.setdefault(_stem(i), []).append(i)
    close = difflib.get_close_matches(given, ids, n=N_SUGGESTIONS, cutoff=0.5)
    for s in difflib.get_close_matches(_stem(given), list(by_stem), n=N_SUGGESTIONS, cutoff=0.5):
        close += [i for i in by_stem[s] if i not in close]
    if close:
        return f"; did you mean {', '.join(repr(c) for c in close[:N_SUGGESTIONS])}?"
    return " (beacon snapshots list shows what is stored)" if ids else " (it is empty: beacon ingest CORPUS first)"
