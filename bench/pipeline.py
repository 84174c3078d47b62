"""The main job end to end on Ray: ingest a corpus with N Condenser actors, then batch QA with N Answerers.

    python -m bench.pipeline --gpus 1 --tag gpu1        # one GPU actor each (docs/results/pipeline_gpu1.json)
    python -m bench.pipeline --gpus 2 --tag gpu2        # two: the scaling run
    python -m bench.pipeline --gpus 0 --actors 1 --docs 8 --doc-chars 3000 --model PATH --tag cpu-smoke

The corpus is synthetic but real text: Python source files of this interpreter's standard library,
cut into `--docs` documents of about `--doc-chars` characters, each with one needle line
(`NAME_WORD_17 = "value"`, the default model's training format) and a question about it with its
expected answer (`--corpus FOLDER --questions FILE` use your own instead). Prints and writes one JSON:
ingestion documents/s and tokens/s (wall time of the whole run, and busy time per actor), tokens/s
per GPU, batch-QA latency (load, first token, total: p50/p90) and accuracy, and the environment.

Needs ray, pyarrow, pylance, torch, transformers (and this repository's beacon, snapshots,
beacon_actors, pipelines); no lancedb. Ray starts here (--num-cpus/--num-gpus of this machine).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sysconfig
import time
from pathlib import Path

from pipelines.answer import answer_questions
from pipelines.cluster import RayOptions, ensure_ray
from pipelines.config import AnswerConfig, IngestConfig
from pipelines.defaults import DEFAULT_MODEL
from pipelines.ingest import ingest

WORDS = "amber birch cedar delta ember falcon garnet harbor iris jade kestrel lumen maple nova orbit pine".split()


def synthetic_corpus(folder: Path, n_docs: int, doc_chars: int, seed: int = 0) -> Path:
    """`n_docs` JSONL documents cut from standard-library sources, each with a needle; returns the
    questions file (one question per document, with its expected answer)."""
    rng = random.Random(seed)
    sources = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py") if p.stat().st_size > 2000)
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in sources[:400])
    folder.mkdir(parents=True, exist_ok=True)
    docs, questions = [], []
    for i in range(n_docs):
        start = rng.randrange(0, max(1, len(text) - doc_chars))
        lines = text[start : start + doc_chars].split("\n")[1:-1]  # whole lines only
        key = f"{rng.choice(WORDS).upper()}_{rng.choice(WORDS).upper()}_{rng.randrange(10, 100)}"
        value = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}" if rng.random() < 0.5 else str(rng.randrange(1000, 99999))
        lines.insert(rng.randrange(0, len(lines) + 1), f'{key} = "{value}"')
        docs.append({"id": f"doc{i:05d}", "text": "\n".join(lines) + "\n", "title": f"stdlib slice {i}"})
        questions.append({"id": f"q{i:05d}", "question": f"What is the value of {key}?", "doc_ids": [docs[-1]["id"]],
                          "answer": value})  # fmt: skip
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return folder / "questions.jsonl"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="beacon checkpoint with a tokenizer")
    ap.add_argument(
        "--dtype", default=None, help="bf16 | fp32 ... (default: bf16 on GPU actors, else the checkpoint's)"
    )
    ap.add_argument("--gpus", type=int, default=1, help="GPU actors per stage, one GPU each (0: CPU actors)")
    ap.add_argument("--actors", type=int, default=1, help="actors per stage when --gpus 0")
    ap.add_argument("--docs", type=int, default=256, help="synthetic documents")
    ap.add_argument("--doc-chars", type=int, default=24000, help="characters per synthetic document")
    ap.add_argument("--corpus", default=None, help="your own corpus instead (folder, .jsonl, .parquet)")
    ap.add_argument("--questions", default=None, help="questions for --corpus (.jsonl/.parquet)")
    ap.add_argument("--batch-size", type=int, default=8, help="documents per Condenser call / pass")
    ap.add_argument("--qa-batch-size", type=int, default=16, help="questions per Answerer call")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--no-qa", action="store_true", help="time ingestion only")
    ap.add_argument("--compile", action="store_true", help="compile the Condensers' decoder layer (IngestConfig)")
    ap.add_argument(
        "--warmup-docs", type=int, default=0,
        help="first ingest this many other documents (untimed), so compile caches are warm for the timed run",
    )  # fmt: skip
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    ap.add_argument("--work", default="/tmp/beacon_bench", help="corpus, store and answers go here (wiped)")
    ap.add_argument("--cleanup", action="store_true", help="delete --work when done (a large corpus fills disks)")
    ap.add_argument("--tag", default=None, help="result name: docs/results/pipeline_<tag>.json")
    ap.add_argument("--out", default=None, help="result file (default from --tag, else only printed)")
    args = ap.parse_args(argv)

    ensure_ray(RayOptions(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False))
    import ray
    import torch

    from .shapes import environment

    if args.gpus > ray.cluster_resources().get("GPU", 0):
        raise SystemExit(f"--gpus {args.gpus}: this Ray has {ray.cluster_resources().get('GPU', 0):.0f} GPUs")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    if args.corpus:
        corpus, questions = args.corpus, args.questions
    else:
        questions = str(synthetic_corpus(work / "corpus", args.docs, args.doc_chars))
        corpus = str(work / "corpus" / "corpus.jsonl")
    n = args.gpus or args.actors
    dtype = args.dtype or ("bf16" if args.gpus else None)
    pool = dict(num_gpus=1.0 if args.gpus else 0.0, min_actors=n, max_actors=n, dtype=dtype, model=args.model)
    db = str(work / "db")

    if args.warmup_docs:  # the same code path on a throw-away corpus and store
        synthetic_corpus(work / "warmup", args.warmup_docs, args.doc_chars, seed=1)
        warm = IngestConfig(corpus=str(work / "warmup" / "corpus.jsonl"), db=str(work / "warmup_db"),
                            batch_size=args.batch_size, compile_layers=args.compile, **pool)  # fmt: skip
        ingest(warm)

    arrivals: list[tuple[float, int]] = []  # (seconds since start, tokens condensed) per finished batch
    per_worker: dict[str, dict] = {}  # worker -> first/last arrival, batches
    started = time.perf_counter()

    def on_batch(rows: list[dict]) -> None:
        now = time.perf_counter() - started
        tokens = sum(r["n_tokens"] for r in rows if r["status"] == "condensed")
        arrivals.append((now, tokens))
        for worker in {r["worker"] for r in rows}:
            w = per_worker.setdefault(worker, {"first_s": now, "batches": 0})
            w["last_s"], w["batches"] = now, w["batches"] + 1

    config = IngestConfig(corpus=corpus, db=db, batch_size=args.batch_size, compile_layers=args.compile, **pool)
    report = ingest(config, on_batch=on_batch)
    busy = [w.tokens / w.seconds for w in report.workers.values() if w.seconds > 0 and w.tokens]
    # when results reached the driver: a late first batch is start-up (Ray, actors, model load)
    times = [t for t, _ in arrivals]
    arrived = {"first": times[0], "median": times[len(times) // 2], "last": times[-1]} if times else None
    # steady state: the tokens that arrived after the first batch, over the time they took (no start-up)
    steady = sum(t for _, t in arrivals[1:]) / (times[-1] - times[0]) if len(times) > 1 else None
    result = {
        "bench": "pipeline",
        "gpus": args.gpus,
        "actors": n,
        "model": args.model,
        "dtype": dtype,
        "ingest": {
            "documents": report.n_documents,
            "condensed": report.n_condensed,
            "failed": report.n_failed,
            "tokens": report.n_tokens,
            "seconds": report.seconds,
            "documents_per_s": report.documents_per_s,
            "tokens_per_s": report.tokens_per_s,
            "tokens_per_s_per_gpu": report.tokens_per_s / args.gpus if args.gpus else None,
            "busy_tokens_per_s_per_actor": sum(busy) / len(busy) if busy else None,
            "batches_arrived_s": arrived,
            "steady_tokens_per_s": steady,
            "arrivals_per_worker": per_worker,
            "warmup_docs": args.warmup_docs,
            "workers": {k: vars(v) for k, v in report.workers.items()},
        },
    }
    if questions and not args.no_qa:
        started = time.perf_counter()
        qa = answer_questions(
            AnswerConfig(
                questions=questions,
                output=str(work / "answers.jsonl"),
                db=db,
                batch_size=args.qa_batch_size,
                max_new_tokens=args.max_new_tokens,
                **pool,
            )  # fmt: skip
        )
        result["qa"] = {
            "questions": qa.n_questions,
            "answered": qa.n_answered,
            "failed": qa.n_failed,
            "accuracy": qa.n_correct / qa.n_with_expected if qa.n_with_expected else None,
            "seconds": time.perf_counter() - started,
            "questions_per_s": qa.questions_per_s,
            "latency_s": qa.latency,
        }
    result["environment"] = environment() | {"ray": ray.__version__, "cuda_devices": torch.cuda.device_count()}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    out = args.out or (f"docs/results/pipeline_{args.tag}.json" if args.tag else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    if args.cleanup:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
