"""beacon.data: reading corpora, cutting sequences by length, deterministic batches, padding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from beacon.data import IGNORE, BatchPlan, build_examples, collate, read_records


def encode(texts: list[str]) -> list[list[int]]:
    """Bytes as tokens (ids 3..255 as in the tiny models)."""
    return [[3 + b % 253 for b in t.encode()] for t in texts]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_text_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_text("zz")
    (tmp_path / "a.md").write_text("aa")
    (tmp_path / "skip.bin").write_text("no")
    assert [r["text"] for r in read_records(tmp_path)] == ["aa", "zz"]


@pytest.mark.parametrize(
    "content, message",
    [("{bad json\n", "x.jsonl:1: not valid JSON"), ('{"txt": "a"}\n', "x.jsonl:1: a row needs 'text'")],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, content, message):
    (tmp_path / "x.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        list(read_records(tmp_path / "x.jsonl"))


def test_missing_and_empty_corpora(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(read_records(tmp_path / "nope"))
    with pytest.raises(ValueError, match="holds no .jsonl"):
        list(read_records(tmp_path))


def test_unpacked_documents_are_filtered_cut_and_rounded(tmp_path):
    rows = [{"text": "a" * 5}, {"text": "b" * 40}, {"text": "c" * 100}]
    out = build_examples(rows, encode, min_length=16, max_length=32, eos_id=2, round_to=8)
    # 5+1 tokens: dropped; 41: 32 + 9 -> 9 < 16 dropped; 101: 32, 32, 32, 5 -> dropped
    assert [len(e) for e in out] == [32, 32, 32, 32]
    assert out[0].input_ids[0] == encode(["b"])[0][0] and out[0].labels is None


def test_packed_sequences_join_documents_within_the_length_range():
    rows = [{"text": "x" * n} for n in range(1, 200)]
    out = build_examples(rows, encode, min_length=64, max_length=256, eos_id=2, pack=True, round_to=16, seed=3)
    lengths = [len(e) for e in out]
    assert all(64 <= n <= 256 and n % 16 == 0 for n in lengths) and len(set(lengths)) > 3
    joined = np.concatenate([e.input_ids for e in out])
    assert (joined == 2).sum() > 100  # every document ends with eos
    again = build_examples(rows, encode, min_length=64, max_length=256, eos_id=2, pack=True, round_to=16, seed=3)
    assert [len(e) for e in again] == lengths


def test_prompt_completion_rows_train_on_the_completion_and_keep_it_when_cut():
    rows = [{"prompt": "p" * 50, "completion": "ANS"}]
    (ex,) = build_examples(rows, encode, min_length=20, max_length=20, eos_id=2)  # min applies to text only
    assert len(ex) == 20 and list(ex.input_ids[-4:]) == encode(["ANS"])[0] + [2]
    assert list(ex.labels[-4:]) == list(ex.input_ids[-4:]) and (ex.labels[:-4] == IGNORE).all()
    (short,) = build_examples([{"prompt": "p", "completion": "A"}], encode, min_length=20, max_length=20, eos_id=2)
    assert len(short) == 3  # prompt/completion rows are not held to min_length


def test_pretokenized_rows_need_no_tokenizer_and_labels_must_match(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}])
    (ex,) = build_examples(read_records(path), None, min_length=1, max_length=8, eos_id=None)
    assert list(ex.labels) == [-100, 6, 7]
    with pytest.raises(ValueError, match="3 input_ids but 2 labels"):
        build_examples([{"input_ids": [5, 6, 7], "labels": [1, 2]}], None, min_length=1, max_length=8, eos_id=None)
    with pytest.raises(ValueError, match="no tokenizer"):
        build_examples([{"text": "abc"}], None, min_length=1, max_length=8, eos_id=None)


def test_nothing_left_and_bad_ranges_are_explained():
    with pytest.raises(ValueError, match="no training sequence survived"):
        build_examples([{"text": "ab"}], encode, min_length=64, max_length=128, eos_id=2)
    with pytest.raises(ValueError, match="min_length"):
        build_examples([], encode, min_length=64, max_length=32, eos_id=2)
    with pytest.raises(ValueError, match="round_to=100"):
        build_examples([], encode, min_length=10, max_length=90, eos_id=2, round_to=100)


def test_max_tokens_stops_reading():
    rows = ({"text": "y" * 99} for _ in range(10_000))
    out = build_examples(rows, encode, min_length=50, max_length=100, eos_id=2, max_tokens=1000, encode_batch=4)
    assert 1000 <= sum(len(e) for e in out) < 1500


def test_batch_plan_is_a_pure_function_of_the_index_and_covers_each_epoch():
    lengths = np.random.default_rng(0).integers(10, 100, size=53)
    plan = BatchPlan(lengths, 4, seed=1, bucket=3)
    assert plan.batches_per_epoch == 14
    epoch0 = np.concatenate([plan[k] for k in range(14)])
    assert sorted(epoch0) == list(range(53))
    other = BatchPlan(lengths, 4, seed=1, bucket=3)
    assert all(np.array_equal(plan[k], other[k]) for k in (20, 3, 27, 0))  # any order, same batches
    assert not np.array_equal(np.concatenate([plan[k] for k in range(14, 28)]), epoch0)  # reshuffled
    spread = [np.ptp(lengths[plan[k]]) for k in range(14)]
    assert np.mean(spread) < np.ptp(lengths) / 3  # neighbours in length share a batch


def test_groups_never_share_a_batch():
    groups = np.arange(50) % 3 == 0
    plan = BatchPlan(np.full(50, 10), 4, seed=0, groups=groups)
    assert plan.batches_per_epoch == 5 + 9  # ceil(17 / 4) + ceil(33 / 4)
    batches = [plan[k] for k in range(plan.batches_per_epoch)]
    assert all(len(set(groups[b])) == 1 for b in batches)
    assert sorted(np.concatenate(batches)) == list(range(50))


def test_collate_right_pads_with_ignored_labels():
    out = build_examples(
        [{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}], None, min_length=1, max_length=8, eos_id=None
    )
    ids, labels, n = collate(out, pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 0]] and labels.tolist() == [[5, 6, 7], [8, 9, IGNORE]] and n == 5
