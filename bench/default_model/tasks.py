"""Long-document lookup samples for fine-tuning beacons, in the form `beacon qa` asks them.

A sample is a haystack of real text tokens with needles inserted at line boundaries, then the
question as `beacon qa` encodes it (the tokenizer's chat template of one user message,
beacon_actors.text.question_ids), then the answer and the end-of-turn token; the loss is on the
answer only. Training phrasings (the evaluation, pipelines/eval_tasks.py, uses others):
  kv        HARBOR_LANTERN_42 = "amber-falcon"          What is the value of HARBOR_LANTERN_42?
  passkey   The pass key is 48213. Remember it. ...     What is the pass key?
  multi-kv  2-4 kv needles at different depths          What is the value of <one of them>?
"""

from __future__ import annotations

import numpy as np

from bench.repro.tasks import needle  # the reproduction's kv needles (its word list)

KINDS = ("kv", "passkey", "multi-kv")


def _kv(rng: np.random.Generator) -> tuple[str, str, str]:
    return needle(rng, "kv", "text")  # the reproduction's key = "value" line, drawn the same way


def _passkey(rng: np.random.Generator) -> tuple[str, str, str]:
    n = str(int(rng.integers(10000, 100000)))
    return f"The pass key is {n}. Remember it. {n} is the pass key.\n", "What is the pass key?", n


def needles(rng: np.random.Generator, kind: str) -> tuple[list[str], str, str]:
    """(needle texts, question, answer) of one sample."""
    if kind == "passkey":
        text, q, a = _passkey(rng)
        return [text], q, a
    if kind == "kv":
        text, q, a = _kv(rng)
        return [text], q, a
    facts = [_kv(rng) for _ in range(int(rng.integers(2, 5)))]
    _, q, a = facts[int(rng.integers(len(facts)))]
    return [t for t, _, _ in facts], q, a


def insert(hay: np.ndarray, ends: np.ndarray, pieces: list[list[int]], depths: list[float]) -> list[int]:
    """`hay` with each piece inserted after the first line end at or after its depth."""
    cuts = []
    for d in depths:
        at = int(d * len(hay))
        after = np.nonzero(ends[hay[at:]])[0]
        cuts.append(min(at + int(after[0]) + 1, len(hay)) if len(after) else at)
    out, prev = [], 0
    for at, piece in sorted(zip(cuts, pieces, strict=True), key=lambda x: x[0]):
        out += hay[prev:at].tolist() + piece
        prev = at
    return out + hay[prev:].tolist()


def make_row(tok, stream: np.ndarray, ends: np.ndarray, rng: np.random.Generator, length: int, kind: str) -> dict:
    """One training row {"input_ids", "labels"} of about `length` tokens (loss on the answer)."""
    from beacon_actors.text import question_ids

    texts, question, answer = needles(rng, kind)
    pieces = [tok.encode(t, add_special_tokens=False) for t in texts]
    q_ids = question_ids(tok, question)
    a_ids = tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
    n_hay = length - sum(map(len, pieces)) - len(q_ids) - len(a_ids)
    start = int(rng.integers(0, len(stream) - n_hay))
    depths = sorted(float(d) for d in rng.random(len(pieces)))
    doc = insert(stream[start : start + n_hay], ends, pieces, depths)
    ids = doc + q_ids + a_ids
    labels = [-100] * (len(doc) + len(q_ids)) + a_ids
    return {"input_ids": ids, "labels": labels}
