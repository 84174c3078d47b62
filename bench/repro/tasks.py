"""Synthetic long-context lookups hidden in code: passkeys and key-value assignments.

Two prompt styles:
  code  (the reproduction's passkey test for a plain code LM: it must complete an assert)
        needle   PASSKEY = "48213"
        query    ...haystack...\n\nassert PASSKEY == "      -> the model should continue 48213
  qa    (what the default model is trained and asked with; its tokenizer's chat_template writes it)
        needle   ALPHA_RIVER_17 = "blue-moon"   or   # The pass key is 48213. Remember it. ...
        query    ...haystack...\n\n# Question: What is the value of ALPHA_RIVER_17?\n# Answer:
        answer   " blue-moon" + <|endoftext|>

Samples are built on token ids (haystack = a slice of tokenized code; the needle goes in after a
token that ends a line), so a sample has an exact length, as a document and a question read
separately by `beacon ask` would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QA_PROMPT = "\n\n# Question: {question}\n# Answer:"
CHAT_TEMPLATE = (  # expressions, not literal text, so Jinja's trim_blocks keeps the newlines
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '\\n\\n# Question: ' + message['content'] + '\\n# Answer:' }}{% endif %}{% endfor %}"
)
WORDS = (
    "amber apple arrow autumn badge basket beacon berry birch blade bloom breeze brick bridge cabin candle canyon"
    " castle cedar cherry cliff cloud comet copper coral crane crystal daisy dawn delta desert dune eagle ember"
    " falcon feather fern field flame forest fossil fountain galaxy garden glacier granite harbor hazel honey"
    " horizon island ivory jade jungle kettle lagoon lantern lemon lily maple marble meadow mint moon mountain"
    " nectar noble oasis ocean olive orbit orchid otter palm pebble pepper pine planet plum pond prairie quartz"
    " rain raven reef ridge river robin ruby saddle sage salmon sand shadow silver sky slate snow spark spruce"
    " star stone storm summit sun swan thunder tiger timber topaz tulip valley velvet violet walnut willow wind"
    " winter wolf zephyr"
).split()


@dataclass
class Sample:
    prompt: list[int]  # haystack with the needle, then the query
    answer: str  # what a correct continuation starts with
    answer_ids: list[int]  # tokens of the trained completion (qa: " answer" + eos)
    depth: float  # where the needle sits, 0 = start of the haystack


def line_ends(tokenizer) -> np.ndarray:
    """(vocab,) bool: token ids whose text ends with a newline (a needle may follow them)."""
    vocab = len(tokenizer)
    ends = np.zeros(vocab, dtype=bool)
    for i in range(vocab):
        ends[i] = tokenizer.decode([i]).endswith("\n")
    return ends


def needle(rng: np.random.Generator, kind: str, style: str) -> tuple[str, str, str]:
    """(needle text, question, answer) for kind 'passkey' or 'kv'."""
    if kind == "passkey":
        n = str(int(rng.integers(10000, 100000)))
        if style == "code":
            return f'PASSKEY = "{n}"\n', "", n
        return f"# The pass key is {n}. Remember it. {n} is the pass key.\n", "What is the pass key?", n
    a, b = (WORDS[i].upper() for i in rng.choice(len(WORDS), 2, replace=False))
    key = f"{a}_{b}_{int(rng.integers(10, 100))}"
    if rng.random() < 0.5:
        value = str(int(rng.integers(1000, 100000)))
    else:
        value = "-".join(WORDS[i] for i in rng.choice(len(WORDS), 2, replace=False))
    return f'{key} = "{value}"\n', f"What is the value of {key}?", value


def make_sample(
    tokenizer,
    haystack: np.ndarray,
    ends: np.ndarray,
    rng: np.random.Generator,
    *,
    length: int,
    kind: str = "passkey",
    style: str = "qa",
    depth: float | None = None,
) -> Sample:
    """A prompt of exactly `length` tokens: a slice of `haystack` with a needle, then the query."""
    text, question, answer = needle(rng, kind, style)
    needle_ids = tokenizer.encode(text, add_special_tokens=False)
    query = '\n\nassert PASSKEY == "' if style == "code" else QA_PROMPT.format(question=question)
    query_ids = tokenizer.encode(query, add_special_tokens=False)
    answer_ids = tokenizer.encode(" " + answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    n_hay = length - len(needle_ids) - len(query_ids)
    if n_hay < 1 or len(haystack) <= n_hay:
        raise ValueError(f"length {length} leaves no room for a haystack (needle + query = {length - n_hay})")
    start = int(rng.integers(0, len(haystack) - n_hay))
    hay = haystack[start : start + n_hay]
    depth = float(rng.random()) if depth is None else depth
    at = int(depth * n_hay)
    after = np.nonzero(ends[hay[at:]])[0]  # the first line end at or after the drawn depth
    at = at + int(after[0]) + 1 if len(after) else at
    at = min(at, n_hay)
    prompt = hay[:at].tolist() + needle_ids + hay[at:].tolist() + query_ids
    return Sample(prompt, answer, answer_ids, at / n_hay)
