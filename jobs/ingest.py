"""Ingestion as a Ray job:

    ray job submit --working-dir . -- python -m jobs.ingest CORPUS --db /shared/beacon_db \\
        [--gpus-per-actor 1 --actors 1:4]

A thin entrypoint: parse arguments, build an IngestConfig, make one pipeline call, print the report
as JSON. Any IngestConfig field can be set with --set KEY=VALUE (values are JSON, or plain strings),
e.g. --set store_dtype=float8_e4m3fn --set long_document_tokens=65536. Inside `ray job submit` Ray
is joined through RAY_ADDRESS; run directly, Ray starts locally. Give --db as a path every node can
reach (a relative one would land in the job's temporary working directory).
"""

from __future__ import annotations

import argparse
import json

from pipelines.cluster import ensure_ray, gpus_per_actor
from pipelines.config import IngestConfig
from pipelines.defaults import DEFAULT_DB, DEFAULT_MODEL
from pipelines.ingest import ingest


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """--set KEY=VALUE items as a dict (values parsed as JSON when they are JSON)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: write KEY=VALUE, e.g. --set batch_size=16")
        settings[key] = _value(value)
    return settings


def pool(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    return int(lo), int(hi or lo)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Condense a corpus into beacon snapshots on Ray (Condenser actors).")
    parser.add_argument("corpus", help="folder of .txt/.md files, .jsonl or .parquet")
    parser.add_argument("--db", default=DEFAULT_DB, help="snapshot store folder (shared by every node)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="beacon checkpoint (folder or hub id)")
    parser.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: the checkpoint's)")
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 if GPUs are up; 1 to autoscale")
    parser.add_argument("--actors", type=pool, default=(1, 1), help="pool size MIN or MIN:MAX (autoscaled)")
    parser.add_argument("--batch-size", type=int, default=8, help="documents per actor call")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any IngestConfig field")
    args = parser.parse_args(argv)
    ensure_ray()
    config = IngestConfig.from_dict(
        {
            "corpus": args.corpus,
            "db": args.db,
            "model": args.model,
            "dtype": args.dtype,
            "num_gpus": gpus_per_actor(args.gpus_per_actor),
            "min_actors": args.actors[0],
            "max_actors": args.actors[1],
            "batch_size": args.batch_size,
            "progress": not args.no_progress,
            **parse_settings(parser, args.set),
        }
    )
    report = ingest(config).to_dict()
    print(json.dumps(report, indent=2, default=str), flush=True)
    return report


if __name__ == "__main__":
    main()
