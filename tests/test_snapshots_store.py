"""SnapshotStore on real LanceDB folders with real tiny models: exactness, append, several documents,
catalogue, upsert, fp8, fingerprints and bad input."""

from __future__ import annotations

import hashlib

import pytest
import torch

from beacon import Memory
from snapshots import (
    DocumentExistsError,
    DocumentNotFoundError,
    FingerprintMismatchError,
    SnapshotStore,
)

from ._snapshots_helpers import CONFIGS, assert_same_memory
from .conftest import DEVICE, load_tiny, tokens
from .test_engine import ATOL


def _store(tmp_path, **kw) -> SnapshotStore:
    return SnapshotStore(tmp_path / "db", **kw)


def _one_doc(tmp_path, config: str = "interleave", n: int = 37, store_dtype: str | None = None, **store_kw):
    """(lm, fingerprint, store, memory) with `memory` stored as "doc" in rows of at most 300 bytes."""
    lm = load_tiny("qwen2", **CONFIGS[config])
    fp = lm.fingerprint()
    store = _store(tmp_path, max_row_bytes=300, **store_kw)
    memory = lm.condense(tokens(n, 1))
    store.put("doc", memory, fingerprint=fp, store_dtype=store_dtype)
    return lm, fp, store, memory


def _flip_a_byte(store: SnapshotStore, where: str, offset: int = 0) -> None:
    """Flip one bit of the data of the snapshot row matching `where`, in its Lance data file."""
    import lance

    with store.tables.snapshot_view() as view:
        (row,) = view.rows(where, ["row"])
    (data_file,) = lance.dataset(str(store.path / "snapshots.lance")).get_fragment(row["_rowaddr"] >> 32).data_files()
    path = store.path / "snapshots.lance" / "data" / data_file.path
    data = bytearray(path.read_bytes())
    data[row["_blob"]["position"] + offset] ^= 0x10
    path.write_bytes(data)


# ---- exactness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("n", [5, 16, 37], ids=["shorter-than-window", "whole-window", "mid-window"])
def test_put_get_generate_equals_one_pass(tmp_path, config, n):
    lm = load_tiny("qwen2", **CONFIGS[config])
    fp = lm.fingerprint()
    store = _store(tmp_path, max_row_bytes=300)  # many small rows
    doc, q = tokens(n, 1), tokens(6, 2)
    memory = lm.condense(doc)
    store.put("doc", memory, fingerprint=fp, token_ids=doc)
    got = store.get("doc", fingerprint=fp)
    assert_same_memory(got, memory)  # the store adds nothing and loses nothing

    _, direct = lm.forward(q, memory.fork(), logits="last")
    _, loaded = lm.forward(q, got.fork(), logits="last")
    _, one_pass = lm.forward(torch.cat([doc, q], 1), None, logits="last")
    assert torch.equal(loaded, direct)
    # reading doc and question in two calls rounds differently only where the split cuts a window
    torch.testing.assert_close(loaded, one_pass, rtol=0, atol=2e-5)
    if n % 16 == 0:
        assert torch.equal(loaded, one_pass)
    want = lm.generate(torch.cat([doc, q], 1), max_new_tokens=8)
    assert torch.equal(lm.generate(q, memory=got, max_new_tokens=8), want)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_append_equals_condensing_the_whole_text(tmp_path, config):
    lm = load_tiny("qwen2", **CONFIGS[config])
    fp = lm.fingerprint()
    store = _store(tmp_path, max_row_bytes=300)
    a, b, c, q = tokens(5, 1), tokens(30, 2), tokens(19, 3), tokens(6, 4)
    store.put("doc", lm.condense(a), fingerprint=fp, text="first")  # shorter than one window
    store.append("doc", b, lm=lm, text="second")  # crosses windows, ends mid-window
    first_o = store.show("doc").parts
    returned = store.append("doc", c[0], lm=lm)  # 1-D ids work too
    got = store.get("doc", fingerprint=fp)

    stepwise = lm.condense(c, lm.condense(b, lm.condense(a)))
    assert_same_memory(got, stepwise)
    assert_same_memory(returned, stepwise)
    whole = torch.cat([a, b, c], 1)
    once = lm.condense(whole)
    assert got.state == once.state
    for x, y in zip(got.keys + got.values, once.keys + once.values, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=2e-5)
    want = lm.generate(torch.cat([whole, q], 1), max_new_tokens=8)
    assert torch.equal(lm.generate(q, memory=got, max_new_tokens=8), want)

    info = store.show("doc")
    assert info.n_tokens == 54 and [p.n_tokens for p in info.pieces] == [5, 30, 19]
    assert info.pieces[0].text_sha256 == hashlib.sha256(b"first").hexdigest() and info.text_sha256 is None
    # parts tile the entries; the condensed part's rows were kept, not rewritten
    assert info.parts[0].entry_from == 0 and info.parts[-1].entry_to == info.n_entries
    assert all(p.entry_to == q_.entry_from for p, q_ in zip(info.parts[:-1], info.parts[1:], strict=True))
    assert len(info.parts) == 2 and info.parts[0].generation == first_o[0].generation
    assert store.stats().snapshot_rows == info.n_rows  # the superseded window rows are gone


def test_several_documents_load_as_one_memory_in_the_given_order(tmp_path):
    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    store = _store(tmp_path)
    docs = {"a": tokens(37, 1), "b": tokens(16, 2), "c": tokens(5, 3)}
    mems = {k: lm.condense(v) for k, v in docs.items()}
    for k, m in mems.items():
        store.put(k, m, fingerprint=fp)
    got = store.get(["a", "b", "c"], fingerprint=fp)
    want = Memory.concat([mems["a"], mems["b"], mems["c"]])
    assert_same_memory(got, want)
    q = tokens(6, 9)
    assert torch.equal(lm.generate(q, memory=got, max_new_tokens=8), lm.generate(q, memory=want, max_new_tokens=8))
    reversed_ = store.get(["c", "b", "a"], fingerprint=fp)
    assert_same_memory(reversed_, Memory.concat([mems["c"], mems["b"], mems["a"]]))
    assert not torch.equal(reversed_.keys[0], got.keys[0])  # order matters
    assert store.get(["b"], fingerprint=fp).state == mems["b"].state


# ---- catalogue ---------------------------------------------------------------------------------
def test_show_list_stats_delete(tmp_path):
    lm = load_tiny("qwen2", **CONFIGS["append"])
    fp = lm.fingerprint()
    store = _store(tmp_path)
    doc = tokens(37, 1)
    memory = lm.condense(doc)
    odd_id = 'it\'s "quoted" / ünï côdé'
    text = "héllo wörld"
    store.put(
        odd_id, memory, fingerprint=fp, text=text, token_ids=doc, source_uri="file:///x.txt", title="X",
        metadata={"lang": "de", "n": 3},
    )  # fmt: skip
    info = store.show(odd_id)
    assert (info.title, info.source_uri, info.metadata) == ("X", "file:///x.txt", {"lang": "de", "n": 3})
    assert info.text_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert info.pieces[0].tokens_sha256 == hashlib.sha256(doc.numpy().astype("<i8").tobytes()).hexdigest()
    assert info.fingerprint == fp and info.beacon_config == fp["beacon_config"]
    assert info.ratios == (4, 4)  # two finished windows at ratio 4
    assert info.sizes() == memory.sizes() and info.n_tokens == 37 and info.memory_dtype == "float32"
    assert info.stored_bytes == memory.nbytes()
    assert info.full_kv_bytes == 2 * 2 * 2 * 16 * 37 * 4  # K+V, layers, kv heads, head dim, tokens, fp32

    store.put("y", lm.condense(tokens(64, 2)), fingerprint=fp)
    assert [i.doc_id for i in store.list()] == sorted([odd_id, "y"])
    stats = store.stats()
    assert stats.n_tokens == 101 and stats.stored_bytes == sum(i.stored_bytes for i in store.list())
    assert stats.full_kv_bytes_per_token == 512 and 3 < stats.full_kv_bytes / stats.stored_bytes < 4
    assert stats.live_rows == stats.snapshot_rows and stats.disk_bytes > stats.stored_bytes

    assert store.delete(odd_id) is True
    with pytest.raises(DocumentNotFoundError, match="quoted"):
        store.show(odd_id)
    with pytest.raises(DocumentNotFoundError):
        store.get(odd_id, fingerprint=fp)
    with pytest.raises(DocumentNotFoundError):
        store.delete(odd_id)
    assert store.delete(odd_id, missing_ok=True) is False
    assert [i.doc_id for i in store.list()] == ["y"]
    assert store.stats().snapshot_rows == store.show("y").n_rows


def test_put_of_a_stored_id_replaces_it(tmp_path):
    lm = load_tiny("qwen2", **CONFIGS["append"])
    fp = lm.fingerprint()
    store = _store(tmp_path, max_row_bytes=300)
    old, new = lm.condense(tokens(37, 1)), lm.condense(tokens(21, 2))
    first = store.put("d", old, fingerprint=fp)
    second = store.put("d", new, fingerprint=fp)
    assert second.generation != first.generation
    assert_same_memory(store.get("d", fingerprint=fp), new)
    assert store.stats().snapshot_rows == second.n_rows  # the old rows are gone
    with pytest.raises(DocumentExistsError, match="'d'"):
        store.put("d", old, fingerprint=fp, on_exists="error")
    assert_same_memory(store.get("d", fingerprint=fp), new)
    store.put("e", old, fingerprint=fp, on_exists="error")  # a new id is fine
    assert [i.doc_id for i in store.list()] == ["d", "e"]


def test_optimize_keeps_documents_and_compacts(tmp_path):
    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    store = _store(tmp_path, max_row_bytes=300)
    mems = {f"d{i}": lm.condense(tokens(20 + 7 * i, i)) for i in range(4)}
    for k, m in mems.items():
        store.put(k, m, fingerprint=fp)
    store.delete("d1")
    store.append("d2", tokens(9, 9), lm=lm)
    before = store.stats().disk_bytes
    report = store.optimize(grace_s=0, keep_versions_s=0)
    assert report.compaction["snapshots"]["fragments_removed"] > 0
    assert store.stats().disk_bytes < before
    assert_same_memory(store.get("d0", fingerprint=fp), mems["d0"])
    assert_same_memory(store.get("d2", fingerprint=fp), lm.condense(tokens(9, 9), mems["d2"].fork()))
    assert store.stats().snapshot_rows == store.stats().live_rows


def test_a_failing_upkeep_never_fails_the_put_it_follows(tmp_path, monkeypatch, caplog):
    from snapshots import tables

    def broken(self):
        raise RuntimeError("disk hiccup")

    monkeypatch.setattr(tables, "UPKEEP_EVERY", 1)
    monkeypatch.setattr(tables.Tables, "upkeep", broken)
    lm, fp, store, memory = _one_doc(tmp_path)  # the put commits, then upkeep fails
    assert_same_memory(store.get("doc", fingerprint=fp), memory)
    assert "store upkeep failed (RuntimeError: disk hiccup)" in caplog.text


def test_local_rows_are_read_straight_from_the_data_files_and_lance_reads_the_same(tmp_path, monkeypatch):
    from snapshots.tables import SnapshotView

    lm, fp, store, memory = _one_doc(tmp_path)
    with store.tables.snapshot_view() as view:
        rows = view.rows("doc_id = 'doc'", ["row", "nbytes"])
        readers = view.blobs(rows)
        assert len(rows) > 4 and all(r.any_buffer for r in readers)  # the fast path is taken here
        for r, reader in zip(rows, readers, strict=True):  # into a buffer that is not a bytearray
            buf = memoryview(bytearray(r["nbytes"] + 3))[: r["nbytes"]]
            assert reader.size() == r["nbytes"] == reader.read_into(buf)
    assert_same_memory(store.get("doc", fingerprint=fp), memory)
    monkeypatch.setattr(SnapshotView, "_direct_files", lambda self, rows: None)  # Lance's reader
    with store.tables.snapshot_view() as view:
        assert not any(r.any_buffer for r in view.blobs(view.rows("doc_id = 'doc'", ["row"])))
    assert_same_memory(store.get("doc", fingerprint=fp), memory)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_a_background_load_answers_as_a_loaded_memory(tmp_path, config):
    """get(background=True) returns while rows still arrive; a question read at once waits layer by
    layer and gives bit-identical logits; every other use waits for the whole memory."""
    lm, fp, store, memory = _one_doc(tmp_path, config)  # many rows, several per layer
    q = tokens(11, 2)
    _, want = lm.forward(q, store.get("doc", fingerprint=fp, device=lm.device), logits="last")

    streamed = store.get("doc", fingerprint=fp, device=lm.device, background=True)
    gate, asked = streamed.pending, []
    assert gate is not None
    streamed.pending = lambda layer: (asked.append(layer), gate(layer))[1]
    _, got = lm.forward(q, streamed, logits="last")
    assert asked == [*range(memory.n_layers), None]  # each layer just before it is read, then the rest
    assert streamed.pending is None
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert_same_memory(store.get("doc", fingerprint=fp, device=lm.device, background=True).fork(), memory)
    # read on from a share (the Answerer)
    streamed = store.get("doc", fingerprint=fp, device=lm.device, background=True)
    _, got = lm.forward(q, streamed.share(), logits="last")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    streamed.ready()
    assert_same_memory(streamed, memory)  # the loaded memory itself is untouched
    assert torch.equal(
        lm.generate(q, store.get("doc", fingerprint=fp, device=lm.device, background=True), max_new_tokens=6),
        lm.generate(q, memory, max_new_tokens=6),
    )
    with pytest.raises(ValueError, match="one document"):
        store.get(["doc", "doc"], fingerprint=fp, device=lm.device, background=True)


@pytest.mark.parametrize("config", ["interleave", "append"])
def test_a_question_read_at_once_overlaps_a_background_load(tmp_path, config):
    """The decoder's one-step question (StaticDecoder.read, what generate and the Answerer use) over a
    memory still loading fills each layer into its buffers just before that layer runs, and gives
    what the loaded memory gives; the memory itself is untouched."""
    from beacon.decode import StaticDecoder

    lm, fp, store, memory = _one_doc(tmp_path, config)
    q = tokens(6, 2)
    _, want = lm.forward(q, memory.fork(), logits="last")
    streamed = store.get("doc", fingerprint=fp, device=lm.device, background=True)
    gate, asked = streamed.pending, []
    streamed.pending = lambda layer: (asked.append(layer), gate(layer))[1]
    fast = StaticDecoder(lm, streamed.share(), graphs=DEVICE == "cuda")
    got = fast.read(q.to(lm.device))
    assert fast.stats["reads"] == 1 and fast.stats["general_steps"] == 0, fast.stats
    assert asked == [*range(memory.n_layers), None]  # layer by layer, then the rest
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    fast.close()
    streamed.ready()
    assert_same_memory(streamed, memory)


def test_a_damaged_row_of_a_background_load_is_raised_where_the_memory_is_used(tmp_path):
    from snapshots import CorruptSnapshotError

    lm, fp, store, _ = _one_doc(tmp_path)
    _flip_a_byte(store, "doc_id = 'doc' AND tensor = 'values' AND layer_from = 1 AND entry_from = 0")
    streamed = store.get("doc", fingerprint=fp, background=True)  # returns: the rows are read later
    with pytest.raises(CorruptSnapshotError, match="fails its checksum"):
        lm.forward(tokens(5, 2), streamed, logits="last")
    with pytest.raises(CorruptSnapshotError):
        streamed.fork()  # and at every later use


def test_a_decoder_over_a_damaged_background_load_raises_once_and_closes(tmp_path):
    """The question raises the load's error; the decoder is then closed (its buffers, which may hold
    part of the memory, are dropped) and close() — which generate calls in a finally — stays quiet."""
    from beacon.decode import StaticDecoder
    from snapshots import CorruptSnapshotError

    lm, fp, store, _ = _one_doc(tmp_path)
    _flip_a_byte(store, "doc_id = 'doc' AND tensor = 'values' AND layer_from = 1 AND entry_from = 0")
    lm.decode_buffers.clear()
    streamed = store.get("doc", fingerprint=fp, device=lm.device, background=True)
    fast = StaticDecoder(lm, streamed.share(), graphs=DEVICE == "cuda")
    with pytest.raises(CorruptSnapshotError, match="fails its checksum"):
        fast.read(tokens(6, 2).to(lm.device))
    fast.close()
    fast.close()
    assert len(lm.decode_buffers) == 0
    with pytest.raises(RuntimeError, match="closed"):
        fast.read(tokens(6, 2).to(lm.device))
    with pytest.raises(CorruptSnapshotError):
        lm.generate(tokens(6, 2), store.get("doc", fingerprint=fp, device=lm.device, background=True))


def test_upkeep_keeps_lookups_indexed_as_puts_add_fragments(tmp_path, monkeypatch):
    """Every put adds a fragment to both tables; upkeep folds them into the doc_id indexes and
    compacts the documents table, so a lookup stops reading every fragment (stores written
    without the index get one)."""
    import lance

    from snapshots import tables

    monkeypatch.setattr(tables, "UPKEEP_EVERY", 4)
    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    store = _store(tmp_path)
    docs_uri, snaps_uri = (str(store.path / f"{t}.lance") for t in ("documents", "snapshots"))
    lance.dataset(snaps_uri).drop_index(tables.DOC_ID_INDEX)  # as written before the index existed
    mems = {f"d{i}": lm.condense(tokens(10 + i, i)) for i in range(9)}
    for k, m in mems.items():
        store.put(k, m, fingerprint=fp)
    docs, snaps = lance.dataset(docs_uri), lance.dataset(snaps_uri)
    assert len(docs.get_fragments()) <= 3  # 9 without upkeep: 4 + 4 compacted at the 4th and 8th commit, + 1
    for ds in (docs, snaps):
        stats = ds.stats.index_stats(tables.DOC_ID_INDEX)
        assert stats["num_unindexed_fragments"] <= 1 < stats["num_indexed_fragments"]
    for k, m in mems.items():  # what the index finds is what was stored
        assert_same_memory(store.get(k, fingerprint=fp), m)
    assert [i.doc_id for i in store.list()] == sorted(mems)


def test_replace_and_append_work_right_after_an_upkeep(tmp_path, monkeypatch):
    """Right after an upkeep the doc_id index covers every fragment of the documents table; a
    replacing put and an append (merge_inserts that update a row) still commit."""
    from snapshots import tables

    monkeypatch.setattr(tables, "UPKEEP_EVERY", 4)
    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    store = _store(tmp_path)
    mems = {f"d{i}": lm.condense(tokens(10 + i, i)) for i in range(4)}
    for k, m in mems.items():  # the 4th commit runs upkeep
        store.put(k, m, fingerprint=fp)
    store.put("d0", mems["d1"], fingerprint=fp)
    assert_same_memory(store.get("d0", fingerprint=fp), mems["d1"])
    for _ in range(3):  # up to the next upkeep, then append right after it
        store.put("d2", mems["d2"], fingerprint=fp)
    assert_same_memory(store.append("d3", tokens(7, 9), lm=lm), lm.condense(tokens(7, 9), mems["d3"].fork()))
    assert store.show("d3").n_tokens == 13 + 7


def test_put_many_commits_a_batch_once_and_names_what_it_refused(tmp_path):
    """Documents put together make one version and one fragment per table, not one per document;
    one that cannot be stored (a NaN found mid-write, bad input, an id given twice, on_exists)
    is named and the others are stored all the same, with no row of it left behind."""
    import lance

    from snapshots import NewDocument

    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    store = _store(tmp_path, max_row_bytes=300)  # several rows per document
    mems = {f"d{i:02d}": lm.condense(tokens(10 + 3 * i, i)) for i in range(12)}
    broken = lm.condense(tokens(50, 3))
    broken.values[1][0, 0, -1, 0] = float("nan")  # found only when its row is encoded, mid-write
    docs = [NewDocument(k, m, fp, text=f"text of {k}") for k, m in mems.items()]
    docs[5:5] = [NewDocument("broken", broken, fp)]
    docs[9:9] = [NewDocument("bad-ids", mems["d00"], fp, token_ids=[1, 2, 3])]
    docs += [NewDocument("twice", mems["d01"], fp), NewDocument("twice", mems["d02"], fp)]
    uris = {t: str(store.path / f"{t}.lance") for t in ("documents", "snapshots")}
    versions, fragments = store.tables.versions(), {t: len(lance.dataset(u).get_fragments()) for t, u in uris.items()}

    results = store.put_many(docs)
    assert {t: n - versions[t] for t, n in store.tables.versions().items()} == {"documents": 1, "snapshots": 1}
    assert {t: len(lance.dataset(u).get_fragments()) - fragments[t] for t, u in uris.items()} == {
        "documents": 1,
        "snapshots": 1,
    }
    errors = {d.doc_id: str(r) for d, r in zip(docs, results, strict=True) if isinstance(r, ValueError)}
    assert sorted(errors) == ["bad-ids", "broken", "twice"]
    assert "'broken'" in errors["broken"] and "NaN or Inf" in errors["broken"]
    assert "token_ids has 3 ids" in errors["bad-ids"] and "given more than once" in errors["twice"]
    infos = [r for r in results if not isinstance(r, Exception)]
    assert [i.doc_id for i in infos] == list(mems) and [i.doc_id for i in store.list()] == list(mems)
    for k, m in mems.items():
        assert_same_memory(store.get(k, fingerprint=fp), m)
        assert store.show(k).text_sha256 == infos[list(mems).index(k)].text_sha256
    assert store.stats().snapshot_rows == store.stats().live_rows  # nothing of the refused ones was written

    # a second batch replaces two, adds one and refuses an existing id with on_exists="error"
    new = {k: lm.condense(tokens(9, 50 + i)) for i, k in enumerate(["d00", "d01", "new"])}
    results = store.put_many([NewDocument(k, m, fp) for k, m in new.items()])
    assert all(not isinstance(r, Exception) for r in results)
    for k, m in (mems | new).items():
        assert_same_memory(store.get(k, fingerprint=fp), m)
    assert store.stats().snapshot_rows == store.stats().live_rows  # the replaced rows are gone
    results = store.put_many([NewDocument("d02", new["d00"], fp), NewDocument("newer", new["d00"], fp)],
                             on_exists="error")  # fmt: skip
    assert isinstance(results[0], DocumentExistsError) and "'d02'" in str(results[0])
    assert_same_memory(store.get("d02", fingerprint=fp), mems["d02"])
    assert_same_memory(store.get("newer", fingerprint=fp), new["d00"])
    assert store.put_many([]) == []


def _fragment_files(store: SnapshotStore) -> dict[int, str]:
    import lance

    ds = lance.dataset(str(store.path / "snapshots.lance"))
    return {f.fragment_id: f.data_files()[0].path for f in ds.get_fragments()}


def test_upkeep_keeps_versions_and_fragments_bounded_over_a_long_run(tmp_path, monkeypatch):
    """A long run of commits: upkeep compacts the snapshots table's small fragments (a big one is
    never rewritten) and drops the versions no longer the latest for KEEP_VERSIONS_S, so neither
    piles up; everything stays readable."""
    import lance

    from snapshots import tables

    monkeypatch.setattr(tables, "UPKEEP_EVERY", 4)
    monkeypatch.setattr(tables, "KEEP_VERSIONS_S", 0.0)  # a version may go as soon as a later one is seen
    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    store = _store(tmp_path)
    big = lm.condense(tokens(3000, 99))
    store.put("big", big, fingerprint=fp)
    ((big_fragment, big_file),) = _fragment_files(store).items()
    big_bytes = lance.dataset(str(store.path / "snapshots.lance")).get_fragment(big_fragment).data_files()[0]
    monkeypatch.setattr(tables, "SMALL_FRAGMENT_BYTES", big_bytes.file_size_bytes)  # it is big, the rest small
    small = {f"s{i:02d}": lm.condense(tokens(5 + i % 7, i)) for i in range(40)}
    sizes = []
    for k, m in small.items():
        store.put(k, m, fingerprint=fp)
        sizes.append((sum(store.tables.versions().values()), len(_fragment_files(store))))
    assert max(v for v, _ in sizes) <= 24  # two tables, 4 commits between upkeeps; 80 commits were made
    assert max(f for _, f in sizes) <= 7  # the big one, one merged, up to 4 new (+1 from the first upkeep)
    assert len(list((store.path / "snapshots.lance" / "data").iterdir())) <= 12  # the files of dropped versions went
    assert _fragment_files(store)[big_fragment] == big_file  # never rewritten
    assert_same_memory(store.get("big", fingerprint=fp), big)
    for k, m in small.items():
        assert_same_memory(store.get(k, fingerprint=fp), m)


def test_upkeep_keeps_the_versions_a_reader_may_still_hold(tmp_path, monkeypatch):
    """Versions that were the latest less than KEEP_VERSIONS_S ago stay, with their files: a view
    opened before upkeep compacted its fragments away still reads its rows."""
    from snapshots import tables

    monkeypatch.setattr(tables, "UPKEEP_EVERY", 4)
    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    store = _store(tmp_path, max_row_bytes=300)
    mems = {f"d{i:02d}": lm.condense(tokens(10 + i, i)) for i in range(12)}
    store.put("d00", mems["d00"], fingerprint=fp)
    view = store.tables.snapshot_view()
    rows = view.rows("doc_id = 'd00'", ["row", "nbytes"])
    held = set(_fragment_files(store).values())
    for k, m in list(mems.items())[1:]:
        store.put(k, m, fingerprint=fp)
    assert not held & set(_fragment_files(store).values())  # compacted: the view's files are old ones now
    assert store.tables.versions()["snapshots"] > 11  # none dropped: all were the latest moments ago
    with view:
        for r, reader in zip(rows, view.blobs(rows), strict=True):
            buf = bytearray(r["nbytes"])
            assert reader.read_into(buf) == r["nbytes"]
    monkeypatch.setattr(tables, "KEEP_VERSIONS_S", 0.0)  # now they may go, at the next upkeeps
    for k, m in mems.items():
        store.put(k, m, fingerprint=fp)
    assert store.tables.versions()["snapshots"] < 11
    for k, m in mems.items():
        assert_same_memory(store.get(k, fingerprint=fp), m)


# ---- dtypes ------------------------------------------------------------------------------------
def test_bf16_is_lossless_and_fp8_halves_it(tmp_path):
    lm = load_tiny("qwen2", dtype="bfloat16", **CONFIGS["append"])
    fp = lm.fingerprint()
    store = _store(tmp_path)
    doc, q = tokens(64, 1), tokens(6, 2)
    memory = lm.condense(doc)
    bf16 = store.put("bf16", memory, fingerprint=fp)
    fp8 = store.put("fp8", memory, fingerprint=fp, store_dtype="float8_e4m3fn")
    assert_same_memory(store.get("bf16", fingerprint=fp), memory)
    n_values = bf16.stored_bytes // 2
    n_vectors = n_values // 16  # one float32 scale per head_dim=16 vector
    assert fp8.stored_bytes == n_values + 4 * n_vectors  # 1 byte per value + scales
    got = store.get("fp8", fingerprint=fp, device=lm.device)
    assert got.dtype == torch.bfloat16 and got.state == memory.state
    for x, y in zip(got.keys + got.values, memory.keys + memory.values, strict=True):
        amax = y.float().abs().amax(-1, keepdim=True)
        assert ((x.float() - y.float()).abs() <= amax / 16 + 1e-6).all()  # e4m3: 3 mantissa bits
    assert lm.generate(q, memory=got, max_new_tokens=4).shape == (1, 4)


def test_store_dtype_float16_of_an_fp32_memory(tmp_path):
    lm = load_tiny("qwen2", **CONFIGS["append"])
    store = _store(tmp_path)
    memory = lm.condense(tokens(37, 1))
    info = store.put("h", memory, fingerprint=lm.fingerprint(), store_dtype="float16")
    assert info.stored_bytes == memory.nbytes() // 2
    got = store.get("h", fingerprint=lm.fingerprint())
    assert got.dtype == torch.float32
    for x, y in zip(got.keys + got.values, memory.keys + memory.values, strict=True):
        torch.testing.assert_close(x, y.half().float(), rtol=0, atol=0)


# ---- fingerprints ------------------------------------------------------------------------------
def test_a_snapshot_is_refused_by_another_model_naming_both(tmp_path):
    qwen = load_tiny("qwen2", **CONFIGS["append"])
    store = _store(tmp_path)
    store.put("doc", qwen.condense(tokens(37, 1)), fingerprint=qwen.fingerprint())

    llama = load_tiny("llama", **CONFIGS["append"])
    with pytest.raises(FingerprintMismatchError) as e:
        store.get("doc", fingerprint=llama.fingerprint())
    msg = str(e.value)
    assert "tiny/qwen2" in msg and "tiny/llama" in msg
    assert qwen.fingerprint()["id"] in msg and llama.fingerprint()["id"] in msg
    assert "model_type: 'qwen2' vs 'llama'" in msg and "base_probe_sha256" in msg
    with pytest.raises(FingerprintMismatchError):
        store.append("doc", tokens(5, 2), lm=llama)

    other_ratio = load_tiny("qwen2", **(CONFIGS["append"] | {"beacon_ratio": [2]}))
    with pytest.raises(FingerprintMismatchError, match=r"beacon_config\.beacon_ratio: \[4\] vs \[2\]"):
        store.get("doc", fingerprint=other_ratio.fingerprint())
    bf16 = load_tiny("qwen2", dtype="bfloat16", **CONFIGS["append"])
    with pytest.raises(FingerprintMismatchError, match="dtype: 'float32' vs 'bfloat16'"):
        store.get("doc", fingerprint=bf16.fingerprint())
    assert store.show("doc").n_tokens == 37  # nothing changed


# ---- bad input ---------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors_and_stores_nothing(tmp_path):
    lm = load_tiny("qwen2", **CONFIGS["append"])
    fp = lm.fingerprint()
    store = _store(tmp_path)
    memory = lm.condense(tokens(20, 1))
    cases = [
        (dict(doc_id="e", memory=lm.new_memory()), "empty"),
        (dict(text=b"caf\xe9 au lait"), "not valid UTF-8"),
        (dict(text="lone \ud800 surrogate"), "UTF-8 cannot encode"),
        (dict(memory=lm.condense(tokens(20, 1, batch=2))), "batch of 2"),
        (dict(doc_id=""), "non-empty string"),
        (dict(doc_id=None), "non-empty string"),
        (dict(metadata={"x": object()}), "metadata must be JSON"),
        (dict(metadata=["x"]), "metadata must be a dict"),
        (dict(store_dtype="int8"), "store_dtype='int8'"),
        (dict(token_ids=tokens(3, 1)), "token_ids has 3 ids"),
        (dict(fingerprint={}), "fingerprint must be"),
        (dict(on_exists="skip"), "on_exists='skip'"),
    ]
    for change, message in cases:
        args = dict(doc_id="d", memory=memory, fingerprint=fp) | change
        with pytest.raises(ValueError, match=message):
            store.put(args.pop("doc_id"), args.pop("memory"), **args)
    bf16 = lm.condense(tokens(20, 1)).to(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="memory is bfloat16"):
        store.put("d", bf16, fingerprint=fp)
    assert store.list() == [] and store.stats().snapshot_rows == 0

    for call in (
        lambda: store.show("nope"),
        lambda: store.get("nope", fingerprint=fp),
        lambda: store.get(["nope"], fingerprint=fp),
        lambda: store.append("nope", tokens(3, 1), lm=lm),
        lambda: store.delete("nope"),
    ):
        with pytest.raises(DocumentNotFoundError, match="'nope'"):
            call()
    store.put("d", memory, fingerprint=fp)
    with pytest.raises(ValueError, match="nothing to append"):
        store.append("d", torch.empty(0, dtype=torch.long), lm=lm)
    with pytest.raises(ValueError, match="get needs at least one"):
        store.get([], fingerprint=fp)
    with pytest.raises(ValueError, match="max_row_bytes"):
        SnapshotStore(tmp_path / "db", max_row_bytes=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("reader", ["direct", "lance"])
@pytest.mark.parametrize("store_dtype", [None, "float8_e4m3fn"])
def test_get_onto_cuda_through_pinned_buffers(tmp_path, monkeypatch, reader, store_dtype):
    """Rows staged in pinned buffers (read straight into them by the direct reader), decoded on
    the GPU; a flipped byte is caught on this path too, and the next load still works."""
    from snapshots import CorruptSnapshotError
    from snapshots.tables import SnapshotView

    if reader == "lance":
        monkeypatch.setattr(SnapshotView, "_direct_files", lambda self, rows: None)
    lm, fp, store, memory = _one_doc(tmp_path, store_dtype=store_dtype, read_workers=3)
    want = store.get("doc", fingerprint=fp)  # on the host: decoded the same way
    got = store.get("doc", fingerprint=fp, device="cuda")
    assert got.device.type == "cuda"
    assert_same_memory(got.to("cpu"), want)
    if store_dtype is None:
        assert_same_memory(got.to("cpu"), memory)
    store.put("bad", memory, fingerprint=fp, store_dtype=store_dtype)
    _flip_a_byte(store, "doc_id = 'bad' AND row = 5", offset=3)
    with pytest.raises(CorruptSnapshotError, match="row 5 .*fails its checksum"):
        store.get("bad", fingerprint=fp, device="cuda")
    assert_same_memory(store.get("doc", fingerprint=fp, device="cuda").to("cpu"), want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("side_stream", [False, True], ids=["default-stream", "side-stream"])
def test_a_background_load_onto_cuda_answers_as_a_loaded_memory(tmp_path, side_stream):
    """The loader thread queues each layer's copies; the question's kernels for a layer are queued
    after them (on the caller's stream, made to wait for that layer's copies even if it is not the
    loader's stream)."""
    import beacon

    from .conftest import tiny_path

    lm = beacon.load(tiny_path("qwen2"), device="cuda", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    store = _store(tmp_path, max_row_bytes=300, read_workers=3)
    memory = lm.condense(tokens(300, 1))
    store.put("doc", memory, fingerprint=fp)
    q = tokens(11, 2)
    _, want = lm.forward(q, store.get("doc", fingerprint=fp, device="cuda"), logits="last")
    stream = torch.cuda.Stream() if side_stream else torch.cuda.current_stream()
    with torch.cuda.stream(stream):
        _, got = lm.forward(q, store.get("doc", fingerprint=fp, device="cuda", background=True), logits="last")
    torch.cuda.synchronize()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_batch_memory_is_put_one_sequence_at_a_time(tmp_path):
    lm = load_tiny("qwen2", **CONFIGS["interleave"])
    fp = lm.fingerprint()
    store = _store(tmp_path)
    batch = lm.condense(tokens(37, 5, batch=2))
    for i in range(2):
        store.put(f"row{i}", batch.select([i]), fingerprint=fp)
        assert_same_memory(store.get(f"row{i}", fingerprint=fp), batch.select([i]))
