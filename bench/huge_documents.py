"""A huge document beside many small ones: does the corpus flow while the long one proceeds?

    python -m bench.huge_documents --small 10 --huge-tokens 100000,1000000          # CPU, the toy (--model's default)
    python -m bench.huge_documents --small 10000 --huge-tokens 1000000              # many small files
    python -m bench.huge_documents --small 10 --huge-tokens 1000000,10000000 --gpus 1 --dtype bf16   # a GPU

For each size in `--huge-tokens`, a folder corpus is written: `--small` ordinary files (prose of
about `--small-chars` characters, cut from this interpreter's standard-library sources) and one
file holding a single line of about that many tokens. `beacon ingest`'s pipeline
(pipelines.ingest.ingest, in this process) condenses it into a fresh store, and the run records
when each ordinary document was stored and the long document's progress after every piece. The
JSON reports per size: seconds until the last ordinary document was stored, the long document's
total seconds and tokens/s, and its pace — seconds per 100K tokens over the last 100K tokens
before each mark of `--marks` (100K, 1M, 10M), which the memory's O(L/α) attention lets grow
slowly with L — plus the whole run's wall time, documents stored per second, the store's table
versions, fragments and bytes on disk when the run ends, and the report's counts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

from pipelines.cluster import RayOptions
from pipelines.config import IngestConfig
from pipelines.defaults import TOY_MODEL, resolve_model
from pipelines.ingest import ingest
from snapshots import SnapshotStore

from .shapes import environment, save_json


def stdlib_text(n_chars: int) -> str:
    """At least `n_chars` characters of real text (standard-library sources, repeated as needed)."""
    sources = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py") if p.stat().st_size > 2000)
    parts, total = [], 0
    while total < n_chars:
        for p in sources:
            parts.append(p.read_text(encoding="utf-8", errors="replace"))
            total += len(parts[-1])
            if total >= n_chars:
                break
    return "".join(parts)


def chars_per_token(model: str) -> float:
    """How many characters of `stdlib_text` one token of `model`'s tokenizer covers (measured on 200K)."""
    from transformers import AutoTokenizer

    text = stdlib_text(200_000)[:200_000]
    n = len(AutoTokenizer.from_pretrained(model)(text, add_special_tokens=False)["input_ids"])
    return len(text) / n


def write_corpus(folder: Path, n_small: int, small_chars: int, huge_chars: int) -> None:
    """`n_small` files of prose and `huge.txt`, one line of `huge_chars` characters."""
    folder.mkdir(parents=True)
    text = stdlib_text(max(huge_chars, 1_000_000))
    for i in range(n_small):
        start = (i * 7919 * 13) % max(1, len(text) - small_chars)
        (folder / f"doc{i:05d}.md").write_text(text[start : start + small_chars])
    (folder / "huge.txt").write_text(text[:huge_chars].replace("\n", " ") + "\n")


def pace(events: list[dict], mark: int, span: int = 100_000) -> float | None:
    """Seconds the long document took for the `span` tokens ending at the first event at or past
    `mark` (None if it never got there), scaled to exactly `span` tokens."""
    after = next((e for e in events if e["done"] >= mark), None)
    if after is None:
        return None
    before = [e for e in events if e["done"] <= after["done"] - span] or [{"done": 0, "seconds": 0.0}]
    b = before[-1]
    return (after["seconds"] - b["seconds"]) / (after["done"] - b["done"]) * span


def run_one(args, model: str, huge_tokens: int, cpt: float, work: Path) -> dict:
    corpus, db = work / f"corpus_{huge_tokens}", work / f"db_{huge_tokens}"
    write_corpus(corpus, args.small, args.small_chars, int(huge_tokens * cpt))
    stored_at: dict[str, float] = {}
    events: list[dict] = []
    start = time.perf_counter()

    def on_batch(rows: list[dict]) -> None:
        for r in rows:
            stored_at[r["doc_id"]] = time.perf_counter() - start

    config = IngestConfig(
        corpus=str(corpus), db=str(db), model=model, dtype=args.dtype, num_gpus=float(args.gpus),
        max_actors=args.actors, min_actors=1, long_document_tokens=args.long_document_tokens,
        piece_tokens=args.piece_tokens, batch_size=args.batch_size, search=False, progress=not args.quiet,
    )  # fmt: skip
    report = ingest(config, ray_options=RayOptions(num_cpus=args.num_cpus), on_batch=on_batch,
                    on_progress=events.append)  # fmt: skip
    wall = time.perf_counter() - start
    tables = SnapshotStore(db).tables
    store = {"versions": tables.versions(), "fragments": tables.fragments(), "disk_bytes": tables.disk_bytes()}
    small = [t for d, t in stored_at.items() if d != "huge"]
    (long,) = report.long_documents or [{"n_tokens": 0, "seconds": 0.0, "tokens_per_s": 0.0}]
    row = {
        "huge_tokens": long["n_tokens"], "n_small": args.small, "small_chars": args.small_chars,
        "small_stored": len(small), "last_small_stored_s": max(small) if small else None,
        "huge_stored_s": stored_at.get("huge"), "huge_condense_s": long["seconds"],
        "huge_tokens_per_s": long["tokens_per_s"],
        "s_per_100k_at": {str(m): pace(events, m) for m in args.marks if m <= long["n_tokens"]},
        "wall_s": wall, "documents_per_s": report.n_condensed / wall, "store": store,
        "n_condensed": report.n_condensed, "n_failed": report.n_failed,
        "failures": report.failures[:5], "progress_events": len(events),
    }  # fmt: skip
    print(json.dumps(row), flush=True)
    if not args.keep:
        shutil.rmtree(corpus), shutil.rmtree(db, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=TOY_MODEL)
    ap.add_argument("--dtype", default=None, help="model dtype, e.g. bf16 on a GPU")
    ap.add_argument("--small", type=int, default=10, help="ordinary documents beside the huge one")
    ap.add_argument("--small-chars", type=int, default=4000)
    ap.add_argument("--huge-tokens", type=lambda s: [int(x) for x in s.split(",")], default=[100_000, 1_000_000])
    ap.add_argument("--marks", type=lambda s: [int(x) for x in s.split(",")], default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--gpus", type=float, default=0.0, help="GPUs per actor (0: CPU actors)")
    ap.add_argument("--actors", type=int, default=1, help="max actors of the pool for the small documents")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--piece-tokens", type=int, default=8192)
    ap.add_argument("--long-document-tokens", type=int, default=32768)
    ap.add_argument("--work", default=None, help="folder for the corpora and stores (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the corpora and stores")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    model = resolve_model(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="huge_docs_"))
    work.mkdir(parents=True, exist_ok=True)
    cpt = chars_per_token(model)
    rows = [run_one(args, model, t, cpt, work) for t in args.huge_tokens]
    result = {"command": "python -m bench.huge_documents " + " ".join(argv or []), "chars_per_token": cpt,
              "rows": rows, "env": environment()}  # fmt: skip
    if args.out:
        save_json(result, args.out)
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
