"""bench/plots.py over the committed results, and the results manifest: every plot renders from the
JSON files alone, a missing run is named, every file under docs/results is in its manifest (and every
name there exists), and every results file the docs name exists."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench import plots

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
MANIFEST = RESULTS / "README.md"


def test_every_plot_renders_from_the_committed_results(tmp_path):
    written = plots.make_all(RESULTS, tmp_path)
    assert len(written) == 7 and len({p.name for p in written}) == 7
    for path in written:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, path.name
    # the committed plots are the ones make_all draws (same names)
    assert {p.name for p in written} == {p.name for p in (RESULTS / "plots").glob("*.png")}


def test_the_condensing_rows_are_the_runs_of_their_source_files():
    table = plots.condense_table(RESULTS)
    assert {r["shape"] for r in table} == set(plots.SHAPES)
    for row in table:
        runs = json.loads((RESULTS / plots.CONDENSE_SOURCES[row["shape"]]).read_text())["runs"]
        beacon = [r for r in runs if r.get("kind") == "beacon" and r["length"] == row["length"]
                  and r["ratio"] == row["ratio"] and r.get("attn_mode") == "auto"]  # fmt: skip
        assert [r["tok_s"] for r in beacon] == [row["beacon_tok_s"]]


def test_a_missing_run_is_named(tmp_path):
    for f in RESULTS.glob("condense_*.json"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "condense_trim_qwen2-1.5b.json"
    data = json.loads(path.read_text())
    data["runs"] = [r for r in data["runs"] if not (r["kind"] == "official" and r.get("ratio") == 8)]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="qwen2-1.5b 8192 ratio 8: 0 runs"):
        plots.condense_table(tmp_path)


def _manifest_names() -> set[str]:
    """Every `name` in backquotes in the manifest's table rows that looks like a results file."""
    names = set()
    for line in MANIFEST.read_text().splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`([^`*\s]+\.(?:json|jsonl|png|md|log))`", first_cell))
    return names


def test_the_manifest_lists_every_results_file_and_nothing_else():
    on_disk = {p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file()} - {"README.md"}
    listed = _manifest_names()
    assert sorted(on_disk - listed) == [], "results files missing from docs/results/README.md"
    assert sorted(listed - on_disk) == [], "docs/results/README.md lists files that do not exist"


def test_every_results_file_the_docs_name_exists():
    """docs/performance.md names results files bare; the other docs as docs/results/NAME."""
    on_disk = {p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file()}
    performance = (ROOT / "docs" / "performance.md").read_text()
    named = {(Path("performance.md"), n) for n in re.findall(r"`([\w./-]+\.(?:json|jsonl|log))`", performance)}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named |= {(doc, n) for n in re.findall(r"docs/results/([\w./-]+\.(?:json|jsonl|log|md|png))", doc.read_text())}
    missing = [f"{doc.name}: {name}" for doc, name in sorted(named) if name not in on_disk and "*" not in name]
    assert missing == []
    assert len(named) > 20  # the pattern still finds the names
