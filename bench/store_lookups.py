"""Cost of a store's per-document metadata work as documents pile up: put, show, a load's plan.

    python -m bench.store_lookups --docs 300 --out docs/results/store_lookups_cpu.json

Puts `--docs` small synthetic memories (Qwen2-7B-shaped entries, `--mb` MB each) one by one,
as an ingestion actor does, and every `--every` documents times a `put`, a `show` and the plan
of a `get` (metadata only), with the store's upkeep on (the default: doc_id indexes folded in and
the documents table compacted every UPKEEP_EVERY commits) and off (as before it existed). CPU
only; the bytes written are small on purpose — this measures lookups, not bandwidth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from snapshots import SnapshotStore, tables

from .shapes import save_json
from .snapshot_io import synthetic


def ms(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def run(root: Path, docs: int, every: int, mb: float, upkeep: bool) -> list[dict]:
    shutil.rmtree(root, ignore_errors=True)
    saved = tables.UPKEEP_EVERY
    tables.UPKEEP_EVERY = saved if upkeep else 1 << 62
    try:
        memory, fp = synthetic(mb / 1000, "cpu")
        store = SnapshotStore(root)
        points = []
        for i in range(docs):
            doc = f"doc{i:06d}"
            put_ms = ms(lambda doc=doc: store.put(doc, memory, fingerprint=fp), repeats=1)
            if (i + 1) % every == 0:
                info = store.show(doc)
                point = {
                    "documents": i + 1,
                    "put_ms": put_ms,
                    "show_ms": ms(lambda doc=doc: store.show(doc)),
                    "plan_ms": ms(lambda info=info: store._plan_load(store.tables.snapshot_view(), info)),
                }
                points.append(point)
                print(json.dumps({"upkeep": upkeep, **point}), flush=True)
        return points
    finally:
        tables.UPKEEP_EVERY = saved
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=300)
    p.add_argument("--every", type=int, default=50, help="measure after every this many documents")
    p.add_argument("--mb", type=float, default=4.0, help="MB per synthetic memory")
    p.add_argument("--out", default="docs/results/store_lookups_cpu.json")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="beacon-lookups-"))
    result = {
        "command": " ".join(["python -m bench.store_lookups"] + sys.argv[1:]),
        "upkeep_every": tables.UPKEEP_EVERY,
        "with_upkeep": run(root / "on", args.docs, args.every, args.mb, upkeep=True),
        "without_upkeep": run(root / "off", args.docs, args.every, args.mb, upkeep=False),
    }
    save_json(result, args.out)


if __name__ == "__main__":
    main()
