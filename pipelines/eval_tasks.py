"""Held-out text and the samples `beacon eval` builds from it: one token stream, needles, haystacks.

Everything works on token ids, so a sample has an exact length: a haystack is a slice of the
held-out stream, a needle sentence goes in at a depth (after a line end when one is near), and the
document is wrapped in the special tokens `beacon_actors.text.document_ids` would add — the same
ids `beacon ingest` would condense for that text. Randomness comes only from the numpy Generator
the caller passes, so a seed reproduces every sample.

The needle phrasings differ on purpose from the training ones (`KEY_NAME_12 = "value"`, "The
pass key is 48213. ..."): the eval asks whether the model retrieves, not whether it recalls a
pattern it was trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from beacon_actors.text import document_ids

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
NEAR_LINE_END = 32  # tokens either side of the drawn depth searched for a line end to put the needle after
WORDS = (
    "acorn alder anchor aspen atlas bamboo banner barley basalt bison bramble bronze cactus canal canvas carbon"
    " cobalt comet condor cotton cypress dahlia denim dolphin domino ebony elm emerald falcon fennel fig flint"
    " garnet gecko ginger gravel gull hawk heron hickory indigo iris jasper juniper kelp kiwi lark laurel lava"
    " lilac linen lotus lynx magnet mango marsh meteor mica moss nickel nutmeg oak onyx opal osprey oyster panda"
    " parsley pearl pelican pewter poplar puma quail quill radish raisin reed rhubarb saffron sapphire sequoia"
    " sierra sorrel sparrow squid sulfur tamarind teal thistle thyme tundra turnip umber vanilla walrus wasabi"
    " wren yarrow yucca zinc"
).split()


# ---- held-out text ------------------------------------------------------------------------------
def read_texts(path: str | os.PathLike) -> list[str]:
    """The documents of `path`: a text file, a folder of text files (TEXT_SUFFIXES, recursive,
    sorted by path) or a JSONL file of {"text": ...} rows. Raises ValueError naming what is wrong."""
    root = Path(path)
    if not root.exists():
        raise ValueError(
            f"held-out text {str(path)!r} does not exist: give a text file, a folder of text files or JSONL"
        )
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"folder {str(path)!r} holds no {'/'.join(TEXT_SUFFIXES)} files: give held-out text")
        return [_read_file(p) for p in files]
    if root.suffix.lower() == ".jsonl":
        return _read_jsonl(root)
    return [_read_file(root)]


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): convert it or leave it out"
        ) from err


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f'{path} line {n} is not JSON ({err.msg}): one {{"text": ...}} object per line') from err
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f'{path} line {n} has no string "text" field: one {{"text": ...}} object per line')
        texts.append(row["text"])
    if not texts:
        raise ValueError(f'{path} holds no rows: give at least one {{"text": ...}} line')
    return texts


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """(n,) int64: every document's tokens (no special tokens), the tokenizer's eos between documents."""
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    joined: list[int] = []
    for i, doc in enumerate(ids):
        joined += (eos if i else []) + list(doc)
    return np.asarray(joined, dtype=np.int64)


def too_short(stream: np.ndarray, need: int, what: str) -> str | None:
    """Why a stream cannot give `need` tokens for `what` (a sentence for the report), or None."""
    if len(stream) >= need:
        return None
    return (
        f"{what} needs {need} held-out tokens but the --text stream has only {len(stream)}: skipped"
        " (give more held-out text, or drop this length)"
    )


def random_slice(stream: np.ndarray, rng: np.random.Generator, n: int) -> tuple[int, np.ndarray]:
    """(offset, stream[offset : offset + n]) at a uniformly drawn offset; the stream holds >= n tokens."""
    offset = int(rng.integers(0, len(stream) - n + 1))
    return offset, stream[offset : offset + n]


# ---- needles ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Needle:
    """A fact to hide in a document, the question that asks for it and the answer expected."""

    text: str  # the sentence, ending with a newline
    question: str
    answer: str
    kind: str  # "vault" or "room"
    key: str  # what tells needles of one kind apart (the question's words)


def draw_needle(rng: np.random.Generator, avoid: frozenset[str] = frozenset()) -> Needle:
    """A needle in one of the eval phrasings, its key not in `avoid` (several documents, one question)."""
    while True:
        if rng.random() < 0.5:
            word = WORDS[int(rng.integers(len(WORDS)))]
            code = str(int(rng.integers(10000, 100000)))
            needle = Needle(
                f"The secret code of the {word} vault is {code}.\n",
                f"What is the secret code of the {word} vault?",
                code,
                "vault",
                f"vault:{word}",
            )
        else:
            a, b = (WORDS[int(i)] for i in rng.choice(len(WORDS), 2, replace=False))
            room = str(int(rng.integers(100, 1000)))
            needle = Needle(
                f"The {a} {b} meeting takes place in room {room}.\n",
                f"In which room does the {a} {b} meeting take place?",
                room,
                "room",
                f"room:{a} {b}",
            )
        if needle.key not in avoid:
            return needle


# ---- documents with a needle ----------------------------------------------------------------------
@dataclass
class NeedleDocument:
    """A document of exactly `len(ids)` tokens (special tokens included) with a needle inside."""

    ids: list[int]
    needle: Needle
    depth: float  # the depth asked for, 0 = start of the haystack, 1 = end
    at: int  # index in `ids` of the needle's first token
    n_needle: int  # the needle's tokens
    actual_depth: float  # where it went: (tokens of haystack before it) / (haystack tokens)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix): the ids `document_ids` puts before and after a text's own tokens (e.g. a BOS)."""
    probe = "needle in a haystack"
    plain = list(tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"])
    full = document_ids(tokenizer, probe)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError(
        f"the tokenizer's special tokens wrap a text in a way not understood ({full} around {plain}):"
        " give a tokenizer whose special tokens only go before and after the text"
    )


def line_end_near(tokenizer, hay: np.ndarray, at: int, near: int = NEAR_LINE_END) -> int:
    """The insertion point closest to `at` that follows a token ending a line, within `near` tokens; else `at`."""
    lo, hi = max(at - near, 1), min(at + near, len(hay))
    candidates = [i for i in range(lo, hi + 1) if tokenizer.decode([int(hay[i - 1])]).endswith("\n")]
    return min(candidates, key=lambda i: (abs(i - at), i)) if candidates else at


def needle_document(
    tokenizer,
    stream: np.ndarray,
    rng: np.random.Generator,
    *,
    length: int,
    depth: float,
    needle: Needle | None = None,
    prefix_suffix: tuple[list[int], list[int]] | None = None,
) -> NeedleDocument:
    """A document of exactly `length` ids: a random slice of `stream` with `needle` (drawn if None)
    at `depth` of it, moved to a line end if one is within NEAR_LINE_END tokens. Raises ValueError
    when `length` leaves no room or the stream is too short."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth} must lie in [0, 1]")
    needle = draw_needle(rng) if needle is None else needle
    prefix, suffix = special_tokens(tokenizer) if prefix_suffix is None else prefix_suffix
    needle_ids = list(tokenizer(needle.text, add_special_tokens=False, verbose=False)["input_ids"])
    n_hay = length - len(prefix) - len(suffix) - len(needle_ids)
    if n_hay < 1:
        raise ValueError(
            f"a document of {length} tokens leaves no room for a haystack (needle {len(needle_ids)} tokens,"
            f" special tokens {len(prefix) + len(suffix)}): ask for a longer one"
        )
    reason = too_short(stream, n_hay, f"a {length}-token document")
    if reason:
        raise ValueError(reason)
    _, hay = random_slice(stream, rng, n_hay)
    at = line_end_near(tokenizer, hay, int(round(depth * n_hay)))
    ids = prefix + hay[:at].tolist() + needle_ids + hay[at:].tolist() + suffix
    return NeedleDocument(ids, needle, depth, len(prefix) + at, len(needle_ids), at / n_hay)
