"""Training data for beacons: read a corpus, tokenize it, cut sequences, batch them deterministically.

A corpus is a text file / folder of text files (.txt, .md, .py, read recursively in sorted order)
or JSON Lines (a .jsonl file or a folder of them) whose rows are one of
  {"text": "..."}                          language modelling on every token
  {"prompt": "...", "completion": "..."}   loss on the completion (+ eos) only
  {"input_ids": [...], "labels": [...]}    pre-tokenized; labels optional (-100 = no loss)

Sequences (the official recipe: min_length / max_length, eos after each document):
  text rows      a document shorter than min_length is dropped (pack=False) or concatenated with
                 the next ones (pack=True, each sequence ends at a length drawn in
                 [min_length, max_length]); a longer one is cut into max_length pieces; lengths
                 are rounded down to a multiple of `round_to` (the beacon window: whole windows).
  other rows     kept whole, left-truncated to max_length (the answer stays at the end).

Batches: epoch e shuffles the sequences with seed (seed, e), groups neighbours of similar length
(less padding) and shuffles the batches. Micro-batch k of the run is a pure function of k, so a
run's data position is one integer and a resumed run reads exactly what the killed one would have.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TEXT_SUFFIXES = (".txt", ".md", ".py")
IGNORE = -100

BatchEncode = Callable[[list[str]], list[list[int]]]  # texts -> token ids, no special tokens


@dataclass
class Example:
    """One training sequence: token ids and, where not every token is a target, labels."""

    input_ids: np.ndarray  # (n,) int32
    labels: np.ndarray | None = None  # (n,) int32, -100 = no loss; None = input_ids

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def corpus_files(path: str | Path) -> list[Path]:
    """The files a corpus path stands for, in a fixed order (sorted paths)."""
    p = Path(path)
    if p.is_file():
        if p.suffix not in TEXT_SUFFIXES + (".jsonl",):
            raise ValueError(f"{p}: corpus files must be .jsonl or text ({', '.join(TEXT_SUFFIXES)})")
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"corpus {p} does not exist: give a text folder or a .jsonl file")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES + (".jsonl",))
    if not files:
        raise ValueError(f"corpus folder {p} holds no .jsonl or {'/'.join(TEXT_SUFFIXES)} files")
    return files


def read_records(path: str | Path) -> Iterator[dict]:
    """Rows of a corpus as dicts (a text file is one {"text": ...} row); malformed rows are errors."""
    for f in corpus_files(path):
        if f.suffix != ".jsonl":
            yield {"text": f.read_text(encoding="utf-8", errors="replace")}
            continue
        with f.open(encoding="utf-8") as lines:
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{f}:{n}: not valid JSON ({err.msg})") from err
                if not isinstance(row, dict) or not (
                    "text" in row or "input_ids" in row or ("prompt" in row and "completion" in row)
                ):
                    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                    raise ValueError(
                        f"{f}:{n}: a row needs 'text', 'input_ids', or 'prompt' + 'completion'; got {keys}"
                    )
                yield row


# ---------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------


def _round(n: int, to: int) -> int:
    return n - n % to


def build_examples(
    records: Iterable[dict],
    encode: BatchEncode | None,
    *,
    min_length: int,
    max_length: int,
    eos_id: int | None,
    pack: bool = False,
    round_to: int = 1,
    max_tokens: int | None = None,
    seed: int = 0,
    encode_batch: int = 256,
) -> list[Example]:
    """Tokenize rows and cut them into training sequences (see the module docstring).

    `encode` may be None only for a corpus of pre-tokenized rows. Reading stops once `max_tokens`
    tokens are collected.
    """
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length ({min_length}) <= max_length ({max_length})")
    if round_to < 1 or _round(max_length, round_to) < min_length:
        raise ValueError(
            f"round_to={round_to} leaves no length in [min_length={min_length}, max_length={max_length}]:"
            " widen the range or round to a smaller multiple"
        )
    rng = np.random.default_rng([seed, 7])
    out: list[Example] = []
    buffer: list[np.ndarray] = []  # pack=True: documents waiting to fill a sequence
    total = 0

    def target() -> int:
        lo, hi = -(-min_length // round_to), max_length // round_to
        return int(rng.integers(lo, hi + 1)) * round_to

    want = target()

    def emit_text(ids: np.ndarray) -> None:
        nonlocal total, want, buffer
        if pack:
            buffer.append(ids)
            have = sum(len(b) for b in buffer)
            while have >= want:
                joined = np.concatenate(buffer)
                out.append(Example(joined[:want]))
                total += want
                buffer = [joined[want:]] if have > want else []
                have -= want
                want = target()
            return
        for start in range(0, len(ids), max_length):
            piece = ids[start : start + max_length]
            n = _round(len(piece), round_to)
            if n >= min_length:
                out.append(Example(piece[:n]))
                total += n

    def emit_other(ids: np.ndarray, labels: np.ndarray | None) -> None:
        nonlocal total
        if len(ids) > max_length:  # keep the end: that is where the answer is
            ids = ids[-max_length:]
            labels = None if labels is None else labels[-max_length:]
        if len(ids) >= 2:
            out.append(Example(ids, labels))
            total += len(ids)

    def flush(rows: list[dict]) -> None:
        texts = [r["text"] if "text" in r else r.get("prompt") for r in rows if "input_ids" not in r]
        completions = [r["completion"] for r in rows if "input_ids" not in r and "text" not in r]
        if texts and encode is None:
            raise ValueError("this corpus has text rows but no tokenizer was given: pass one, or pre-tokenize")
        enc = iter(encode(texts)) if texts else iter(())
        enc_c = iter(encode(completions)) if completions else iter(())
        eos = [] if eos_id is None else [eos_id]
        for r in rows:
            if "input_ids" in r:
                ids = np.asarray(r["input_ids"], dtype=np.int32)
                labels = r.get("labels")
                if labels is not None and len(labels) != len(ids):
                    raise ValueError(f"a row has {len(ids)} input_ids but {len(labels)} labels")
                emit_other(ids, None if labels is None else np.asarray(labels, dtype=np.int32))
            elif "text" in r:
                emit_text(np.asarray(next(enc) + eos, dtype=np.int32))
            else:
                p, c = next(enc), next(enc_c) + eos
                ids = np.asarray(p + c, dtype=np.int32)
                labels = np.asarray([IGNORE] * len(p) + c, dtype=np.int32)
                emit_other(ids, labels)

    rows: list[dict] = []
    for row in records:
        rows.append(row)
        if len(rows) >= encode_batch:
            flush(rows)
            rows = []
            if max_tokens is not None and total >= max_tokens:
                break
    if rows and (max_tokens is None or total < max_tokens):
        flush(rows)
    if not out:
        raise ValueError(
            f"no training sequence survived min_length={min_length}, max_length={max_length}:"
            " lower min_length, or pass pack=True to join short documents"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


class BatchPlan:
    """Which examples form micro-batch k (k = 0, 1, ... over all epochs); a pure function of k.

    Examples of different `groups` (e.g. language-modelling rows vs. prompt/completion rows) never
    share a batch, so a batch's mean loss is over one kind of target. Every epoch has
    `batches_per_epoch` = sum over groups of ceil(n_group / batch_size) micro-batches.
    """

    def __init__(
        self,
        lengths: list[int] | np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        bucket: int = 64,
        groups: list[int] | np.ndarray | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(lengths) == 0:
            raise ValueError("no examples to batch")
        self.lengths = np.asarray(lengths)
        self.groups = np.zeros(len(self.lengths), dtype=np.int64) if groups is None else np.asarray(groups)
        if self.groups.shape != self.lengths.shape:
            raise ValueError(f"groups {self.groups.shape} must match lengths {self.lengths.shape}")
        self.batch_size = batch_size
        self.seed = seed
        self.bucket = bucket  # batches sorted by length together in a pool
        sizes = np.unique(self.groups, return_counts=True)[1]
        self.batches_per_epoch = int(sum(-(-n // batch_size) for n in sizes))
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def epoch(self, e: int) -> list[np.ndarray]:
        """The micro-batches of epoch e (index arrays), in reading order."""
        if self._epoch is not None and self._epoch[0] == e:
            return self._epoch[1]
        rng = np.random.default_rng([self.seed, e])
        order = rng.permutation(len(self.lengths))
        pool = self.batch_size * self.bucket
        batches = []
        for g in np.unique(self.groups):
            mine = order[self.groups[order] == g]
            for start in range(0, len(mine), pool):
                chunk = mine[start : start + pool]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]  # similar lengths together
                batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._epoch = (e, batches)
        return batches

    def __getitem__(self, k: int) -> np.ndarray:
        return self.epoch(k // self.batches_per_epoch)[k % self.batches_per_epoch]


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Right-pad to the longest: (input_ids (b, n) int64, labels (b, n) int64 with -100, real tokens).

    Padding sits after each sequence's last token, so causal attention keeps it from every real
    token; its labels are -100.
    """
    n = max(len(e) for e in examples)
    ids = np.full((len(examples), n), pad_id, dtype=np.int64)
    labels = np.full((len(examples), n), IGNORE, dtype=np.int64)
    for i, e in enumerate(examples):
        ids[i, : len(e)] = e.input_ids
        labels[i, : len(e)] = e.input_ids if e.labels is None else e.labels
    return torch.from_numpy(ids), torch.from_numpy(labels), sum(len(e) for e in examples)


def hf_batch_encoder(tokenizer) -> BatchEncode:
    """A BatchEncode from a Hugging Face tokenizer (no special tokens added)."""

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    return encode
