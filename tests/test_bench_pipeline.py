"""bench.pipeline's corpora without Ray: the mixed-length corpus spans its lengths and its total."""

from __future__ import annotations

import json

import pytest

from bench.pipeline import chars_per_token, mixed_length_corpus, mixed_lengths, stdlib_text

from ._pipelines_helpers import byte_tokenizer


def test_mixed_lengths_span_both_ends_and_add_up_to_the_total():
    lengths = mixed_lengths(2_000_000, 1024, 131072, seed=0)
    assert min(lengths) == 1024 and max(lengths) == 131072  # both ends, always
    assert 2_000_000 <= sum(lengths) < 2_000_000 + 1024  # the last one cut to what was left (at least the minimum)
    assert all(1024 <= n <= 131072 for n in lengths)
    # log-uniform: about as many documents under the geometric middle (~11.6K) as over it
    under = sum(n < (1024 * 131072) ** 0.5 for n in lengths)
    assert 0.25 < under / len(lengths) < 0.75
    assert mixed_lengths(2_000_000, 1024, 131072, seed=0) == lengths != mixed_lengths(2_000_000, 1024, 131072, seed=1)
    with pytest.raises(ValueError, match="--min-tokens 2000, --max-tokens 1000: need 1 <= min <= max"):
        mixed_lengths(10_000, 2000, 1000)


def test_mixed_length_corpus_documents_have_the_asked_lengths_and_a_needle_each(tmp_path):
    tok = byte_tokenizer()
    cpt = chars_per_token(tok, stdlib_text())  # bytes per character: about 1 on Python sources
    assert 0.95 < cpt <= 1.0
    lengths = mixed_lengths(60_000, 500, 20_000, seed=3)
    questions = mixed_length_corpus(tmp_path, lengths, cpt)
    docs = [json.loads(x) for x in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    got = [len(tok(d["text"])["input_ids"]) for d in docs]
    # whole lines only (the cut ends' partial lines dropped, a needle line added): within a few lines of each
    pairs = list(zip(got, lengths, strict=True))
    assert all(abs(g - n) < 0.05 * n + 400 for g, n in pairs), pairs
    assert abs(sum(got) - 60_000) < 0.05 * 60_000
    for doc, q in zip(docs, (json.loads(x) for x in questions.read_text().splitlines()), strict=True):
        assert q["doc_ids"] == [doc["id"]] and f'= "{q["answer"]}"' in doc["text"]
