"""The main job end to end on Ray: ingest a corpus with N Condenser actors, then batch QA with N Answerers.

    python -m bench.pipeline --gpus 1 --tag gpu1        # one GPU actor each (docs/results/pipeline_gpu1.json)
    python -m bench.pipeline --gpus 2 --tag gpu2        # two: the scaling run
    python -m bench.pipeline --gpus 0 --actors 1 --docs 8 --doc-chars 3000 --model PATH --tag cpu-smoke
    python -m bench.pipeline --gpus 1 --mixed-lengths --no-qa --model /root/m15 --out mixed.json  # perf. §5

The corpus is synthetic but real text: Python source files of this interpreter's standard library,
cut into `--docs` documents of about `--doc-chars` characters, each with one needle line
(`NAME_WORD_17 = "value"`, the toy model's training format) and a question about it with its
expected answer (`--corpus FOLDER --questions FILE` use your own instead). `--mixed-lengths` cuts
documents of mixed lengths instead: `--min-tokens` (1K) and `--max-tokens` (128K) and log-uniform
draws between them, about `--total-tokens` (2M) in all, seeded, in tokens of `--model`'s tokenizer
(its characters per token measured on the same text).

Prints and writes one JSON: ingestion documents/s and tokens/s (wall time of the whole run, and
busy time per actor), tokens/s per GPU, batch-QA latency (load, first token, total: p50/p90) and
accuracy, and the environment; `breakdown`: where the job's wall time went (Ray's start, the
actors' model load and warm-up, tokenizing on the actors, condensing, the store's puts, the rest),
from the Condensers' own clocks (see `breakdown`). `--baselines` (default with `--mixed-lengths` on
CUDA) then times, in this process once the job's actors are gone, the engine's steady state and
transformers' full prefill on the same documents (bench/ingest_baselines.py), and `comparison`
divides the job's tokens/s by each (the target: >= 0.8 of the engine's).

Needs ray, pyarrow, pylance, torch, transformers (and this repository's beacon, snapshots,
beacon_actors, pipelines); no lancedb. Ray starts here (--num-cpus/--num-gpus of this machine).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sysconfig
import time
from pathlib import Path

from beacon_actors.text import document_ids, load_tokenizer
from pipelines.answer import answer_questions
from pipelines.cluster import RayOptions, ensure_ray
from pipelines.config import AnswerConfig, IngestConfig
from pipelines.defaults import TOY_MODEL, resolve_model
from pipelines.ingest import ingest

TARGET_JOB_OVER_ENGINE = 0.8  # the target: the whole job at >= 80% of the engine's steady state on its documents
WORDS = "amber birch cedar delta ember falcon garnet harbor iris jade kestrel lumen maple nova orbit pine".split()


def stdlib_text() -> str:
    """The synthetic corpora's text: this interpreter's standard-library Python sources, concatenated."""
    sources = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).glob("*.py") if p.stat().st_size > 2000)
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in sources[:400])


def synthetic_corpus(folder: Path, n_docs: int, doc_chars: int, seed: int = 0) -> Path:
    """`n_docs` JSONL documents cut from standard-library sources, each with a needle; returns the
    questions file (one question per document, with its expected answer)."""
    return _write_corpus(folder, [doc_chars] * n_docs, random.Random(seed))


def mixed_lengths(total_tokens: int, min_tokens: int, max_tokens: int, seed: int = 0) -> list[int]:
    """Document lengths in tokens, in a seeded random order: `min_tokens` and `max_tokens` (so both
    ends are always there), then log-uniform draws between them until they add up to about
    `total_tokens` (the last one cut to what is left, but never below `min_tokens`)."""
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"--min-tokens {min_tokens}, --max-tokens {max_tokens}: need 1 <= min <= max")
    rng = random.Random(seed)
    lengths = [min_tokens, max_tokens]
    while sum(lengths) < total_tokens:
        draw = round(math.exp(rng.uniform(math.log(min_tokens), math.log(max_tokens))))
        lengths.append(max(min_tokens, min(draw, total_tokens - sum(lengths))))
    rng.shuffle(lengths)
    return lengths


def mixed_length_corpus(folder: Path, lengths: list[int], chars_per_token: float, seed: int = 0) -> Path:
    """One document per entry of `lengths` (tokens; `chars_per_token` turns them into characters),
    cut from standard-library sources as synthetic_corpus's are; returns the questions file."""
    return _write_corpus(folder, [round(n * chars_per_token) for n in lengths], random.Random(seed))


def chars_per_token(tokenizer, text: str, samples: int = 20, sample_chars: int = 20_000, seed: int = 0) -> float:
    """Characters per token of `tokenizer` on `text`, measured on `samples` random slices of it."""
    rng = random.Random(seed)
    starts = [rng.randrange(0, max(1, len(text) - sample_chars)) for _ in range(samples)]
    slices = [text[s : s + sample_chars] for s in starts]
    return sum(map(len, slices)) / sum(len(document_ids(tokenizer, t)) for t in slices)


def _write_corpus(folder: Path, doc_chars: list[int], rng: random.Random) -> Path:
    """corpus.jsonl (a document of about doc_chars[i] characters each, with a needle line) and
    questions.jsonl (one question per document, with its expected answer) in `folder`."""
    text = stdlib_text()
    if max(doc_chars) > len(text):
        raise ValueError(
            f"a document of {max(doc_chars):,} characters asked for, but the standard library's sources hold"
            f" {len(text):,}: ask for shorter documents (--max-tokens, --doc-chars)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    docs, questions = [], []
    for i, chars in enumerate(doc_chars):
        start = rng.randrange(0, max(1, len(text) - chars))
        lines = text[start : start + chars].split("\n")[1:-1]  # whole lines only
        key = f"{rng.choice(WORDS).upper()}_{rng.choice(WORDS).upper()}_{rng.randrange(10, 100)}"
        value = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}" if rng.random() < 0.5 else str(rng.randrange(1000, 99999))
        lines.insert(rng.randrange(0, len(lines) + 1), f'{key} = "{value}"')
        docs.append({"id": f"doc{i:05d}", "text": "\n".join(lines) + "\n", "title": f"stdlib slice {i}"})
        questions.append({"id": f"q{i:05d}", "question": f"What is the value of {key}?", "doc_ids": [docs[-1]["id"]],
                          "answer": value})  # fmt: skip
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return folder / "questions.jsonl"


# CONDENSED's time columns -> the breakdown's parts they add up to
PARTS = {"load_s": "actor_load_s", "warmup_s": "actor_warmup_s", "tokenize_s": "actor_tokenize_s",
         "condense_s": "condense_s", "put_s": "put_s"}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=TOY_MODEL, help="beacon checkpoint with a tokenizer")
    ap.add_argument(
        "--dtype", default=None, help="bf16 | fp32 ... (default: bf16 on GPU actors, else the checkpoint's)"
    )
    ap.add_argument("--gpus", type=int, default=1, help="GPU actors per stage, one GPU each (0: CPU actors)")
    ap.add_argument("--actors", type=int, default=1, help="actors per stage when --gpus 0")
    ap.add_argument("--docs", type=int, default=256, help="synthetic documents")
    ap.add_argument("--doc-chars", type=int, default=24000, help="characters per synthetic document")
    ap.add_argument(
        "--mixed-lengths", action="store_true",
        help="synthetic documents of mixed lengths instead of --docs x --doc-chars: --min-tokens and --max-tokens,"
        " log-uniform between them, about --total-tokens in all (tokens of --model's tokenizer)",
    )  # fmt: skip
    ap.add_argument("--total-tokens", type=int, default=2_000_000, help="--mixed-lengths: tokens in all")
    ap.add_argument("--min-tokens", type=int, default=1024, help="--mixed-lengths: the shortest document")
    ap.add_argument("--max-tokens", type=int, default=131072, help="--mixed-lengths: the longest document")
    ap.add_argument("--corpus", default=None, help="your own corpus instead (folder, .jsonl, .parquet)")
    ap.add_argument("--questions", default=None, help="questions for --corpus (.jsonl/.parquet)")
    ap.add_argument("--batch-size", type=int, default=8, help="documents per Condenser call / pass")
    ap.add_argument("--piece-tokens", type=int, default=IngestConfig.piece_tokens,
                    help="tokens per engine call of a long document (IngestConfig)")  # fmt: skip
    ap.add_argument(
        "--long-document-tokens", type=int, default=IngestConfig.long_document_tokens,
        help="longer documents (UTF-8 bytes) go to a long-document actor, piece by piece (IngestConfig)",
    )  # fmt: skip
    ap.add_argument("--qa-batch-size", type=int, default=16, help="questions per Answerer call")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--no-qa", action="store_true", help="time ingestion only")
    ap.add_argument("--compile", action="store_true", help="compile the Condensers' decoder layer (IngestConfig)")
    ap.add_argument(
        "--warmup-docs", type=int, default=0,
        help="first ingest this many other documents (untimed), so compile caches are warm for the timed run",
    )  # fmt: skip
    ap.add_argument(
        "--baselines", action=argparse.BooleanOptionalAction, default=None,
        help="after the job, time the engine's steady state and full prefill on its documents in this process"
        " (bench.ingest_baselines; default: with --mixed-lengths on CUDA)",
    )  # fmt: skip
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    ap.add_argument("--work", default="/tmp/beacon_bench", help="corpus, store and answers go here (wiped)")
    ap.add_argument("--cleanup", action="store_true", help="delete --work when done (a large corpus fills disks)")
    ap.add_argument("--tag", default=None, help="result name: docs/results/pipeline_<tag>.json")
    ap.add_argument("--out", default=None, help="result file (default from --tag, else only printed)")
    return ap.parse_args(argv)


def write_corpus(args: argparse.Namespace, folder: Path) -> tuple[str, str | None, dict]:
    """(corpus, questions, what was asked for) of the run: --corpus, or a synthetic one in `folder`."""
    if args.corpus:
        return args.corpus, args.questions, {"corpus": args.corpus}
    if not args.mixed_lengths:
        questions = synthetic_corpus(folder, args.docs, args.doc_chars)
        return str(folder / "corpus.jsonl"), str(questions), {"docs": args.docs, "doc_chars": args.doc_chars}
    lengths = mixed_lengths(args.total_tokens, args.min_tokens, args.max_tokens)
    cpt = chars_per_token(load_tokenizer(resolve_model(args.model)), stdlib_text())
    questions = mixed_length_corpus(folder, lengths, cpt)
    asked = {"mixed_lengths": True, "total_tokens": args.total_tokens, "min_tokens": args.min_tokens,
             "max_tokens": args.max_tokens, "chars_per_token": cpt, "target_lengths": sorted(lengths)}  # fmt: skip
    return str(folder / "corpus.jsonl"), str(questions), asked


def breakdown(rows: list[dict], wall_s: float, ray_start_s: float, lanes: int) -> dict:
    """Where the job's wall time went, from the Condensers' own clocks (CONDENSED's time columns)
    and this process's Ray start (0 if Ray was up already), in seconds per lane: a GPU (whose actors
    run one at a time) or, without GPUs, an actor. `rest_s` is what no clock covers: the corpus scan, Ray Data's start,
    actor scheduling, worker start and imports, waiting for batches (short documents are tokenized
    by CPU tasks beside the actors, so their tokenizing shows only where an actor waited), the
    driver's own work (the search table's upserts, its last one and refresh after the last result)."""
    parts = {"ray_start_s": ray_start_s}
    parts |= {part: sum(r[column] for r in rows) / lanes for column, part in PARTS.items()}
    parts["rest_s"] = wall_s - sum(parts.values())
    return {"wall_s": wall_s, "lanes": lanes, **parts, "share": {k: v / wall_s for k, v in parts.items()}}


def comparison(tokens: int, wall_s: float, baselines: dict, gpus: int = 1) -> dict:
    """The job's tokens/s per GPU (Ray's start included) against the engine's steady state and full
    prefill, both timed on one."""
    job = tokens / wall_s / max(1, gpus)
    engine = baselines["engine"]["tokens_per_s"]
    prefill = baselines.get("prefill", {}).get("tokens_per_s")
    return {
        "job_tokens_per_s_per_gpu": job,
        "engine_steady_tokens_per_s": engine,
        "prefill_tokens_per_s": prefill,
        "job_over_engine": job / engine,
        "job_over_prefill": job / prefill if prefill else None,
        "target_job_over_engine": TARGET_JOB_OVER_ENGINE,
        "meets_target": job / engine >= TARGET_JOB_OVER_ENGINE,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import ray

    started_ray = not ray.is_initialized()
    start = time.perf_counter()
    ensure_ray(RayOptions(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False))
    ray_start_s = time.perf_counter() - start if started_ray else 0.0
    import torch

    from . import ingest_baselines
    from .shapes import environment

    if args.gpus > ray.cluster_resources().get("GPU", 0):
        raise SystemExit(f"--gpus {args.gpus}: this Ray has {ray.cluster_resources().get('GPU', 0):.0f} GPUs")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    corpus, questions, asked = write_corpus(args, work / "corpus")
    n = args.gpus or args.actors
    dtype = args.dtype or ("bf16" if args.gpus else None)
    pool = dict(num_gpus=1.0 if args.gpus else 0.0, min_actors=n, max_actors=n, dtype=dtype, model=args.model,
                batch_size=args.batch_size, compile_layers=args.compile, piece_tokens=args.piece_tokens,
                long_document_tokens=args.long_document_tokens)  # fmt: skip
    db = str(work / "db")

    if args.warmup_docs:  # the same code path on a throw-away corpus and store
        synthetic_corpus(work / "warmup", args.warmup_docs, args.doc_chars, seed=1)
        ingest(IngestConfig(corpus=str(work / "warmup" / "corpus.jsonl"), db=str(work / "warmup_db"), **pool))

    arrivals: list[tuple[float, int]] = []  # (seconds since start, tokens condensed) per finished batch
    per_worker: dict[str, dict] = {}  # worker -> first/last arrival, batches
    timed_rows: list[dict] = []  # every CONDENSED row's time columns
    started = time.perf_counter()

    def on_batch(rows: list[dict]) -> None:
        now = time.perf_counter() - started
        tokens = sum(r["n_tokens"] for r in rows if r["status"] == "condensed")
        arrivals.append((now, tokens))
        timed_rows.extend({k: r[k] for k in ("worker", "n_tokens", *PARTS)} for r in rows)
        for worker in {r["worker"] for r in rows}:
            w = per_worker.setdefault(worker, {"first_s": now, "batches": 0})
            w["last_s"], w["batches"] = now, w["batches"] + 1

    report = ingest(IngestConfig(corpus=corpus, db=db, **pool), on_batch=on_batch)
    busy = [w.tokens / w.seconds for w in report.workers.values() if w.seconds > 0 and w.tokens]
    # when results reached the driver: a late first batch is start-up (Ray, actors, model load)
    times = [t for t, _ in arrivals]
    arrived = {"first": times[0], "median": times[len(times) // 2], "last": times[-1]} if times else None
    # steady state: the tokens that arrived after the first batch, over the time they took (no start-up)
    steady = sum(t for _, t in arrivals[1:]) / (times[-1] - times[0]) if len(times) > 1 else None
    wall_s = ray_start_s + report.seconds
    lengths = sorted(r["n_tokens"] for r in timed_rows)  # of the documents as tokenized
    spread = {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]} if lengths else None
    result = {
        "bench": "pipeline",
        "gpus": args.gpus,
        "actors": n,
        "model": args.model,
        "dtype": dtype,
        "corpus": asked | {"lengths": spread},
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
            "long_documents": len(report.long_documents),
            "workers": {k: vars(v) for k, v in report.workers.items()},
        },
        # the whole job: Ray's start (where this process started it) and ingest(), from the call to the last result
        "breakdown": breakdown(timed_rows, wall_s, ray_start_s, args.gpus or len({r["worker"] for r in timed_rows}))
        # part of rest_s: from the last result reaching the driver to ingest()'s return (search table, teardown)
        | {"rest_after_last_result_s": report.seconds - times[-1] if times else None},
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
                **{k: pool[k] for k in ("num_gpus", "min_actors", "max_actors", "dtype", "model")},
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
    out = args.out or (f"docs/results/pipeline_{args.tag}.json" if args.tag else None)
    if args.baselines if args.baselines is not None else (args.mixed_lengths and torch.cuda.is_available()):
        _save(result, out)  # the job's half, should the baselines not finish
        if started_ray:  # its actors' processes end with it: one model on the GPU at a time
            ray.shutdown()
        device = "cuda" if args.gpus else "cpu"
        free = torch.cuda.mem_get_info() if device == "cuda" else None  # (free, total) bytes: the job's actors gone?
        base = ingest_baselines.run(
            resolve_model(args.model), Path(corpus), dtype=dtype, device=device, batch_size=args.batch_size,
            piece_tokens=args.piece_tokens, long_document_tokens=args.long_document_tokens,
            compile_layers=args.compile,
        )  # fmt: skip
        base["gpu_free_gib_before"] = None if free is None else [free[0] / 2**30, free[1] / 2**30]
        result["baselines"] = base
        result["comparison"] = comparison(report.n_tokens, wall_s, base, gpus=args.gpus)
    print(_save(result, out))
    if args.cleanup:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _save(result: dict, out: str | None) -> str:
    """`result` as JSON text, written to `out` if given."""
    text = json.dumps(result, indent=2, default=str)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
