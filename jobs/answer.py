"""Batch QA as a Ray job:

    ray job submit --working-dir . -- python -m jobs.answer QUESTIONS --output /shared/answers.jsonl \\
        --db /shared/beacon_db

A thin entrypoint: parse arguments, build an AnswerConfig, make one pipeline call (batch QA),
print the report as JSON. Any AnswerConfig field can be set with --set KEY=VALUE (JSON values),
e.g. --set max_new_tokens=32 --set top_k=2. Give --db/--output as paths every node can reach.
"""

from __future__ import annotations

import argparse
import json

from jobs.ingest import parse_settings, pool
from pipelines.answer import answer_questions
from pipelines.cluster import ensure_ray, gpus_per_actor
from pipelines.config import AnswerConfig
from pipelines.defaults import DEFAULT_DB, DEFAULT_MODEL


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Answer a file of questions from beacon snapshots on Ray.")
    parser.add_argument("questions", help=".jsonl or .parquet: question, doc_ids?, id?, answer?")
    parser.add_argument("--output", required=True, help="answers file, *.jsonl or *.parquet")
    parser.add_argument("--db", default=DEFAULT_DB, help="snapshot store folder")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the checkpoint the snapshots were made with")
    parser.add_argument("--dtype", default=None, help="the dtype they were made with")
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 if GPUs are up; 1 to autoscale")
    parser.add_argument("--actors", type=pool, default=(1, 1), help="pool size MIN or MIN:MAX (autoscaled)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per actor call")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any AnswerConfig field")
    args = parser.parse_args(argv)
    ensure_ray()
    config = AnswerConfig.from_dict(
        {
            "questions": args.questions,
            "output": args.output,
            "db": args.db,
            "model": args.model,
            "dtype": args.dtype,
            "num_gpus": gpus_per_actor(args.gpus_per_actor),
            "min_actors": args.actors[0],
            "max_actors": args.actors[1],
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "progress": not args.no_progress,
            **parse_settings(parser, args.set),
        }
    )
    report = answer_questions(config).to_dict()
    print(json.dumps(report, indent=2, default=str), flush=True)
    return report


if __name__ == "__main__":
    main()
