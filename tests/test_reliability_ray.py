"""Bad and huge input through the real pipeline (a local Ray, a real Lance folder): a long document
condensed on an actor of its own with progress while the bad folder's good files are stored, the
token limit, an ingest with nothing to do that never starts Ray, and damaged snapshots condensed
again (plainly when the damage shows in the tables, with `repair` when only the bytes are wrong).
docs/reliability.md lists what each checks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipelines.cluster import RayOptions
from pipelines.config import IngestConfig
from pipelines.ingest import ingest
from snapshots import SnapshotStore

from ._pipelines_helpers import assert_close_memory, tiny_model
from .test_reliability import bad_folder
from .test_snapshots_store import _flip_a_byte

GOOD_IDS = ["bom", "cjk", "crlf", "lighthouse", "nested/deeper/inner"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "qwen2")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    yield RayOptions(num_cpus=2, include_dashboard=False, quiet=True)
    ray.shutdown()


def corpus_with_a_long_document(root, long_tokens: int):
    """The bad folder of issue 19, a document over the token limit, and one long single-line document."""
    corpus = bad_folder(root)
    rng = random.Random(0)
    (corpus / "long.txt").write_text("".join(rng.choice("abcdefgh ") for _ in range(long_tokens)))
    (corpus / "toolong.txt").write_text("z" * 5000)
    return corpus


def config(corpus, db, model, **kw) -> IngestConfig:
    settings = dict(long_document_tokens=2000, piece_tokens=512, max_document_tokens=4000, batch_size=4,
                    search=False, progress=False)  # fmt: skip
    return IngestConfig(corpus=str(corpus), db=str(db), model=str(model), **(settings | kw))


def test_a_long_document_streams_beside_the_rest_and_bad_files_are_named(model, ray_cluster, tmp_path):
    corpus, db = corpus_with_a_long_document(tmp_path / "c", long_tokens=3000), tmp_path / "db"
    stored, events, calls = [], [], []

    def on_batch(rows):  # once per Condenser call, and once for the long document
        stored.extend(r["doc_id"] for r in rows if r["status"] == "condensed")
        calls.append(len(rows))

    report = ingest(config(corpus, db, model), ray_options=ray_cluster, on_batch=on_batch, on_progress=events.append)
    assert report.ray_started and report.n_failed == 0 and report.failures == []
    assert report.condensed == sorted([*GOOD_IDS, "long"]) and sorted(stored) == sorted([*GOOD_IDS, "long"])
    assert report.empty == ["empty", "white"]
    reasons = {Path(s["where"]).stem: s["reason"] for s in report.skipped}  # files without an id are named by path
    assert set(reasons) >= {"binary", "nul", "latin1", "link", "toolong"}, reasons
    assert "more than max_document_tokens (4,000)" in reasons["toolong"]
    # the long one went piece by piece, on its own actor, reporting tokens/s and the time left
    assert [e["done"] for e in events] == [0, 512, 1024, 1536, 2048, 2560, 3000]  # 0: it started
    assert all(e["doc_id"] == "long" and e["n_tokens"] == 3000 for e in events)
    assert events[0]["eta_s"] is None and all(e["tokens_per_s"] > 0 for e in events[1:])  # no speed yet at 0
    assert events[-1]["eta_s"] == 0 and events[1]["eta_s"] > 0
    (long,) = report.long_documents
    assert long["doc_id"] == "long" and long["n_tokens"] == 3000

    store = SnapshotStore(db)
    assert sorted(i.doc_id for i in store.list()) == sorted([*GOOD_IDS, "long"])  # and nothing else
    # each call's documents were stored together: one commit per table (after creating and indexing them)
    assert len(calls) < len(stored)
    assert store.tables.versions() == {"documents": 2 + len(calls), "snapshots": 2 + len(calls)}
    import beacon

    lm = beacon.load(str(model))
    want = lm.condense(lm.tokenizer((corpus / "long.txt").read_text(), return_tensors="pt")["input_ids"][0])
    assert_close_memory(store.get("long", fingerprint=lm.fingerprint()), want)


def test_nothing_to_do_starts_no_ray_and_damage_is_condensed_again(model, ray_cluster, tmp_path):
    import ray

    corpus, db = bad_folder(tmp_path / "c"), tmp_path / "db"
    first = ingest(config(corpus, db, model), ray_options=ray_cluster)
    assert first.condensed == GOOD_IDS
    store = SnapshotStore(db)
    import beacon

    fp = beacon.load(str(model)).fingerprint()
    before = {d: store.get(d, fingerprint=fp) for d in GOOD_IDS}
    ray.shutdown()

    again = ingest(config(corpus, db, model), ray_options=ray_cluster)  # all stored: no cluster at all
    assert not again.ray_started and not ray.is_initialized() and again.stored == GOOD_IDS and again.condensed == []

    _flip_a_byte(store, "doc_id = 'lighthouse' AND row = 0", offset=3)  # only the bytes: the tables look fine
    plain = ingest(config(corpus, db, model), ray_options=ray_cluster)
    assert not plain.ray_started and plain.repaired == []  # a plain ingest does not read every byte ...
    repaired = ingest(config(corpus, db, model, repair=True), ray_options=ray_cluster)  # ... --repair does
    assert repaired.repaired == ["lighthouse"] and repaired.condensed == ["lighthouse"]
    assert sorted(repaired.stored) == [d for d in GOOD_IDS if d != "lighthouse"]
    assert store.verify() == {}
    for doc_id, memory in before.items():  # untouched ones bit for bit; the one condensed again alone may
        # differ by the rounding of the batched products the first ingest condensed it with (~1e-6)
        assert_close_memory(store.get(doc_id, fingerprint=fp), memory, atol=1e-5 if doc_id == "lighthouse" else 0)

    import lance

    lance.dataset(str(db / "documents.lance")).update({"n_rows": "n_rows + 1"}, where="doc_id = 'crlf'")
    seen = ingest(config(corpus, db, model), ray_options=ray_cluster)  # damage the tables show: a plain ingest
    assert seen.repaired == ["crlf"] and seen.condensed == ["crlf"] and store.verify() == {}
    assert_close_memory(store.get("crlf", fingerprint=fp), before["crlf"])  # condensed again: rounding apart
