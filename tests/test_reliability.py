"""Bad input without Ray: every corpus entry kind checked in the driver (skipped and named, the rest
kept), folder ids, lookups by stem with suggestions, store verification, and the CLI's exit codes and
errors for user mistakes (no traceback, no Ray started). docs/reliability.md lists what each checks."""

from __future__ import annotations

import json
import os

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from beacon_actors.columns import TOKENIZED, table
from beacon_actors.condenser import Condenser
from beacon_actors.tokenize import tokenize_documents
from beacon_cli.main import main as cli
from pipelines.config import IngestConfig
from pipelines.corpus import MAX_ID_CHARS, scan_corpus
from pipelines.ingest import StrictCorpusError, ingest
from pipelines.lookup import resolve_id
from snapshots import SnapshotStore
from snapshots.errors import DocumentNotFoundError

from ._pipelines_helpers import tiny_model
from .test_pipelines_units import documents
from .test_snapshots_store import _flip_a_byte

GOOD = "# Lighthouse\n\nHARBOR_LANTERN_42 = amber-falcon\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "qwen2")


def bad_folder(root):
    """The folder of issue 19: ordinary prose next to every kind of bad file."""
    root.mkdir()
    (root / "lighthouse.md").write_text(GOOD)
    (root / "crlf.txt").write_bytes(b"line one\r\nline two\r\n")
    (root / "bom.txt").write_bytes("\ufeffwith a byte order mark".encode())
    (root / "cjk.md").write_text("# 漢字 🚀\n\n日本語のテキスト 🎉\n")
    (root / "empty.txt").write_text("")
    (root / "white.txt").write_text("  \n\t\n")
    (root / "binary.bin").write_bytes(bytes(range(256)))
    (root / "nul.txt").write_bytes(b"text\x00more")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "link.md").symlink_to(root / "lighthouse.md")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "inner.md").write_text("nested text")
    (root / ".hidden.md").write_text("hidden files are not corpus entries")
    return root


def test_a_folder_of_bad_files_keeps_every_good_one(tmp_path):
    scan = scan_corpus(bad_folder(tmp_path / "c"))
    assert [d["doc_id"] for d in scan.documents] == ["bom", "cjk", "crlf", "lighthouse", "nested/deeper/inner"]
    assert [d["doc_id"] for d in scan.empty] == ["empty", "white"]  # whitespace-only is empty, and named
    reasons = {os.path.basename(s.where): s.reason for s in scan.skipped}
    assert reasons.keys() == {"binary.bin", "nul.txt", "latin1.txt", "link.md"} and scan.n_items == 11
    assert "not a text file" in reasons["binary.bin"] and "NUL byte at offset 4" in reasons["nul.txt"]
    assert "not UTF-8 (byte 3)" in reasons["latin1.txt"] and "iconv" in reasons["latin1.txt"]
    assert "symlink: not followed" in reasons["link.md"]
    texts = {d["doc_id"]: d["text"] for d in scan.documents}
    assert texts["crlf"] == "line one\r\nline two\r\n" and texts["bom"] == "with a byte order mark"

    followed = scan_corpus(tmp_path / "c", follow_symlinks=True)  # followed once: never one file twice
    assert [d["doc_id"] for d in followed.documents] == [d["doc_id"] for d in scan.documents]
    assert any("same file as one read already" in s.reason for s in followed.skipped)
    (tmp_path / "c" / "nested" / "loop").symlink_to(tmp_path / "c")  # a folder loop ends
    assert len(scan_corpus(tmp_path / "c", follow_symlinks=True).documents) == len(scan.documents)


def test_an_unreadable_file_is_named_and_the_rest_read(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "fine.md").write_text("fine")
    secret = tmp_path / "c" / "secret.txt"
    if os.geteuid() == 0:  # root reads any mode: a regular file whose read fails instead
        secret.symlink_to("/proc/self/mem")
    else:
        secret.write_text("hidden")
        secret.chmod(0)
    scan = scan_corpus(tmp_path / "c", follow_symlinks=True)
    assert [d["doc_id"] for d in scan.documents] == ["fine"]
    (skip,) = scan.skipped
    assert skip.where.endswith("secret.txt") and "cannot be read" in skip.reason


def test_folder_ids_are_paths_without_extensions_and_unique(tmp_path):
    (tmp_path / "c" / "sub").mkdir(parents=True)
    for name in ("a.md", "a.txt", "b.md", "sub/b.md", "sub/c.rst"):
        (tmp_path / "c" / name).write_text(name)
    assert [d["doc_id"] for d in scan_corpus(tmp_path / "c").documents] == ["a.md", "a.txt", "b", "sub/b", "sub/c"]
    assert [d["doc_id"] for d in scan_corpus(tmp_path / "c", ids="path").documents] == [
        "a.md", "a.txt", "b.md", "sub/b.md", "sub/c.rst"]  # fmt: skip


def test_bad_jsonl_rows_are_named_by_line_and_the_rest_kept(tmp_path):
    lines = [
        {"id": "good1", "text": "first good text"},
        "{not json",
        {"text": "no id"},
        {"id": "", "text": "empty id"},
        {"id": ["a"], "text": "id not a string"},
        {"id": "../../etc/passwd", "text": "path-like id"},
        {"id": "/abs", "text": "absolute id"},
        {"id": "x" * (MAX_ID_CHARS + 1), "text": "overlong id"},
        {"id": "good1", "text": "a duplicate id"},
        {"id": "notext"},
        {"id": "numtext", "text": 5},
        [1, 2],
        {"id": "blank", "text": "   "},
        {"id": 7, "text": "an integer id is written as text"},
        {"id": "good2", "text": "second good text", "metadata": {"k": 1}},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines) + "\n\n")
    scan = scan_corpus(path)
    assert [d["doc_id"] for d in scan.documents] == ["good1", "7", "good2"] and scan.n_items == len(lines)
    assert [d["doc_id"] for d in scan.empty] == ["blank"]
    where = {int(s.where.rsplit(":", 1)[1]): s.reason for s in scan.skipped}
    assert sorted(where) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "not JSON" in where[2] and "no 'id'" in where[3] and "empty id" in where[4]
    assert "must be a string" in where[5] and "path-like" in where[6] and "path-like" in where[7]
    assert "characters (at most 512)" in where[8] and f"duplicate id (first at {path}:1)" == where[9]
    assert "'text' must be a string, got nothing" in where[10] and "got int" in where[11]
    assert "not a JSON object" in where[12]


def test_bad_parquet_rows_are_named_by_row(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"id": "a", "text": "aa"}, {"id": None, "text": "b"},
                                         {"id": "c", "text": None}, {"id": "a", "text": "again"}]),
                   tmp_path / "c.parquet")  # fmt: skip
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    scan = scan_corpus(tmp_path, format="parquet")
    assert [d["doc_id"] for d in scan.documents] == ["a"]
    assert sorted((os.path.basename(s.where), s.reason.split(" (")[0]) for s in scan.skipped) == [
        ("broken.parquet", "not a readable Parquet file"), ("c.parquet:row 1", "no 'id'"),
        ("c.parquet:row 2", "'text' must be a string, got nothing"), ("c.parquet:row 3", "duplicate id")]  # fmt: skip


def test_strict_refuses_before_anything_is_written_and_bad_paths_fail_before_ray(model, tmp_path):
    import ray

    corpus = bad_folder(tmp_path / "c")
    config = IngestConfig(corpus=str(corpus), db=str(tmp_path / "db"), model=str(model), strict=True, progress=False)
    with pytest.raises(StrictCorpusError, match="latin1.txt: not UTF-8"):
        ingest(config)
    assert not (tmp_path / "db").exists() and not ray.is_initialized()
    run = CliRunner().invoke
    out = run(cli, ["ingest", str(corpus), "--db", str(tmp_path / "db"), "--model", str(model), "--strict"])
    assert out.exit_code == 1 and "nothing was written" in out.output and "Traceback" not in out.output
    (tmp_path / "file").write_text("x")
    for db in ("file", "file/sub"):
        out = run(cli, ["ingest", str(corpus), "--db", str(tmp_path / db), "--model", str(model)])
        assert out.exit_code == 1 and "is a file" in out.output and "Traceback" not in out.output, out.output
        out = run(cli, ["qa", str(tmp_path / "q.jsonl"), "--db", str(tmp_path / db), "--model", str(model)])
        assert out.exit_code == 1 and "file" in out.output and "Traceback" not in out.output, out.output
    out = run(cli, ["ingest", str(tmp_path / "nope"), "--db", str(tmp_path / "db"), "--model", str(model)])
    assert out.exit_code == 1 and "does not exist" in out.output
    assert not ray.is_initialized()  # every one of these stopped before a cluster was started


def test_lookups_take_the_id_or_its_stem_and_suggest_the_closest():
    stored = {"lighthouse", "notes/glacier", "a/readme", "b/readme", "orbit_config"}
    assert resolve_id("lighthouse", stored) == "lighthouse"
    assert resolve_id("lighthouse.md", stored) == "lighthouse"
    assert resolve_id("glacier", stored) == "notes/glacier" and resolve_id("glacier.md", stored) == "notes/glacier"
    with pytest.raises(DocumentNotFoundError, match="several stored documents: 'a/readme', 'b/readme'"):
        resolve_id("readme", stored)
    with pytest.raises(DocumentNotFoundError, match="did you mean 'lighthouse'"):
        resolve_id("lighthous", stored)
    with pytest.raises(DocumentNotFoundError, match="did you mean 'orbit_config'"):
        resolve_id("orbit-config.txt", stored)
    with pytest.raises(DocumentNotFoundError, match="snapshots list"):
        resolve_id("zzz", stored)


def test_a_batch_is_stored_in_one_commit_and_a_refused_document_is_named(model, tmp_path):
    """The Condenser stores the documents of one call together (one commit per table), and a
    document the store refuses is reported failed, by name and reason, while the rest is stored."""
    db = tmp_path / "db"
    texts = {f"note{i}": f"NOTE_{i} = {'abcdefgh'[i]}\n" * (i + 1) for i in range(6)}
    rows = tokenize_documents(documents(texts), tokenizer=str(model)).to_pylist()
    rows[2]["metadata_json"] = '{"score": NaN}'  # not JSON the store keeps: refused when put
    condense = Condenser(str(model), str(db), batch_size=4)
    store = SnapshotStore(db)
    before = store.tables.versions()
    out = condense(table(rows, TOKENIZED)).to_pylist()
    assert {t: n - before[t] for t, n in store.tables.versions().items()} == {"documents": 1, "snapshots": 1}
    assert [r["status"] for r in out] == ["condensed", "condensed", "failed", "condensed", "condensed", "condensed"]
    assert out[2]["doc_id"] == "note2" and "the store refused it" in out[2]["error"] and "'note2'" in out[2]["error"]
    assert "metadata must be JSON" in out[2]["error"]
    assert [i.doc_id for i in store.list()] == [d for d in texts if d != "note2"]
    assert store.stats().snapshot_rows == store.stats().live_rows


def test_verify_lists_damaged_documents_and_ask_exits_non_zero(model, tmp_path):
    db = tmp_path / "db"
    texts = {"lighthouse": GOOD, "notes/glacier": "GLACIER = 90517\n" * 4, "river": "RIVER = violet\n" * 3}
    Condenser(str(model), str(db))(tokenize_documents(documents(texts), tokenizer=str(model)))
    store = SnapshotStore(db)
    assert store.verify() == {}
    _flip_a_byte(store, "doc_id = 'lighthouse' AND row = 0", offset=3)
    lance.dataset(str(db / "documents.lance")).update({"n_rows": "n_rows + 1"}, where="doc_id = 'river'")
    damaged = store.verify()
    assert sorted(damaged) == ["lighthouse", "river"] and "fails its checksum" in damaged["lighthouse"]
    assert store.verify(["notes/glacier"]) == {} and list(store.verify(["lighthouse"], read_data=False)) == []
    infos, bad = store.list_readable()
    assert [i.doc_id for i in infos] == ["lighthouse", "notes/glacier"] and list(bad) == ["river"]

    run = CliRunner().invoke
    out = run(cli, ["snapshots", "verify", "--db", str(db)])
    assert out.exit_code == 3 and "3 documents checked, 2 damaged" in out.output and "lighthouse:" in out.output
    out = run(cli, ["snapshots", "verify", "glacier", "--db", str(db), "--json"])
    assert out.exit_code == 0 and json.loads(out.output) == {"checked": 1, "damaged": {}}
    out = run(cli, ["snapshots", "show", "glacier", "--db", str(db)])  # a stem finds notes/glacier
    assert out.exit_code == 0 and json.loads(out.output)["doc_id"] == "notes/glacier"
    out = run(cli, ["snapshots", "show", "glaciers", "--db", str(db)])
    assert out.exit_code == 1 and "did you mean 'notes/glacier'" in out.output and "Traceback" not in out.output
    common = ["--db", str(db), "--model", str(model), "--max-new-tokens", "3"]
    out = run(cli, ["ask", "What is GLACIER?", "--doc-id", "glacier.md", *common])
    assert out.exit_code == 0 and out.output.strip(), out.output
    for extra, code in (([], 3), (["--json"], 3), (["--allow-failures"], 0), (["--json", "--allow-failures"], 0)):
        out = run(cli, ["ask", "What is HARBOR_LANTERN_42?", "--doc-id", "lighthouse", *common, *extra])
        assert out.exit_code == code and "CorruptSnapshotError" in out.output, (extra, out.output)
    out = run(cli, ["ask", "q?", "--doc-id", "lightouse", *common])
    assert out.exit_code == 1 and "did you mean 'lighthouse'" in out.output
