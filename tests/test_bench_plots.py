"""bench/plots.py over the committed results: every plot renders, and the condensing table it builds
is the one docs/performance.md §1a prints (so docs, plots and JSON files cannot drift apart)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench import plots

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def test_every_plot_renders_from_the_committed_results(tmp_path):
    written = plots.make_all(RESULTS, tmp_path)
    assert len(written) == 7 and len({p.name for p in written}) == 7
    for path in written:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, path.name


def _doc_table() -> dict[tuple[str, int, int], list[str]]:
    """§1a's rows: (shape, tokens, ratio) -> the table's cells."""
    text = (ROOT / "docs" / "performance.md").read_text()
    section = text[text.index("### 1a.") : text.index("### 1b.")]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| qwen2-"):
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            rows[(cells[0], int(cells[1].rstrip("K")) * 1024, int(cells[2]))] = cells
    return rows


def test_the_condensing_table_is_the_one_the_docs_print():
    doc = _doc_table()
    table = plots.condense_table(RESULTS)
    assert len(table) == len(doc) == 18
    num = lambda cell: float(re.sub(r"[^\d.]", "", cell.split("(")[0]))  # noqa: E731
    for row in table:
        cells = doc[(row["shape"], row["length"], row["ratio"])]
        assert num(cells[3]) == round(row["beacon_tok_s"])
        assert num(cells[5]) == round(row["prefill_tok_s"])
        assert num(cells[7]) == round(row["official_tok_s"])
        assert num(cells[6]) == pytest.approx(row["beacon_tok_s"] / row["prefill_tok_s"], abs=0.006)
        assert num(cells[8]) == pytest.approx(row["beacon_tok_s"] / row["official_tok_s"], abs=0.006)


def test_a_missing_run_is_named(tmp_path):
    for f in RESULTS.glob("condense_*.json"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "condense_trim_qwen2-1.5b.json"
    data = json.loads(path.read_text())
    data["runs"] = [r for r in data["runs"] if not (r["kind"] == "official" and r.get("ratio") == 8)]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="qwen2-1.5b 8192 ratio 8: 0 runs"):
        plots.condense_table(tmp_path)
