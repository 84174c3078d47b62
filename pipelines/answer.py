"""Batch QA on Ray Data: questions → pick documents → Answerer actors (GPU) → answers file.

questions file ─► pick documents ─► sort by documents ─► Answerer pool ─► driver ─► .jsonl/.parquet
(JSONL/Parquet)   (doc ids or        (one memory load     min..max actors   progress,
                   search, driver)    per group)          LRU of memories   latency report
"""

from __future__ import annotations

import time
from collections.abc import Callable

from beacon_actors.text import is_correct

from .catalog import open_store
from .cluster import RayOptions, ensure_ray, gpus_per_actor
from .config import AnswerConfig
from .defaults import absolute, resolve_model
from .progress import Progress
from .questions import answer_format, questions_table, read_questions, write_answers
from .reports import AnswerReport, WorkerStats, summarize


def answer_questions(
    config: AnswerConfig,
    *,
    ray_options: RayOptions | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
) -> AnswerReport:
    """Answer every question of `config.questions` from the store; write `config.output`.

    Questions are sorted by their documents so that a batch mostly shares one memory; each
    Answerer keeps hot memories on its device. Returns the report (counts, accuracy where the
    questions carry answers, latency percentiles); failed questions are in the file and report.
    """
    import ray.data
    from ray.data import ActorPoolStrategy

    from beacon_actors.answerer import Answerer

    if not config.questions or not config.output:
        raise ValueError("batch QA needs questions (a .jsonl/.parquet file) and output (answers .jsonl/.parquet)")
    model = resolve_model(config.model)
    tokenizer = None if config.tokenizer is None else resolve_model(config.tokenizer)
    db = absolute(config.db)
    start = time.perf_counter()
    open_store(db)  # checked before Ray starts: a missing store or a --db that is a file is a one-line error
    answer_format(config.output)
    rows = read_questions(config.questions, db, top_k=config.top_k)
    ensure_ray(ray_options)
    num_gpus = gpus_per_actor(config.num_gpus)
    report = AnswerReport(str(config.questions), absolute(config.output), db, model, n_questions=len(rows))
    rows.sort(key=lambda r: (tuple(r["doc_ids"] or ()), r["index"]))  # one memory load per group and batch
    out: list[dict] = []
    if rows:
        n_blocks = max(1, min(1000, -(-len(rows) // config.batch_size)))
        ds = ray.data.from_arrow(questions_table(rows)).repartition(n_blocks)
        ds = ds.map_batches(
            Answerer,
            fn_constructor_kwargs=dict(
                model=model, db=db, tokenizer=tokenizer, dtype=config.dtype, device=config.device,
                max_new_tokens=config.max_new_tokens, cache_bytes=config.cache_bytes,
                lanes=config.lanes, lane_slots=config.lane_slots,
            ),
            compute=ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors),
            num_gpus=num_gpus,
            num_cpus=config.num_cpus,
            batch_size=config.batch_size,
            batch_format="pyarrow",
        )  # fmt: skip
        ds.context.enable_progress_bars = False
        bar = Progress(len(rows), desc="qa", unit="question", enabled=config.progress)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                got = batch.to_pylist()
                out += got
                bar.update(len(got), sum(r["n_new_tokens"] for r in got))
                if on_batch is not None:
                    on_batch(got)
        finally:
            bar.close()
    write_answers(out, config.output)
    report.seconds = time.perf_counter() - start
    _tally(report, out)
    return report


def _tally(report: AnswerReport, rows: list[dict]) -> None:
    ok = [r for r in rows if r["error"] is None]
    report.n_answered, report.n_failed = len(ok), len(rows) - len(ok)
    report.failures = [{"question_id": r["question_id"], "error": r["error"]} for r in rows if r["error"]]
    graded = [r for r in ok if r["expected"] is not None]
    report.n_with_expected = len(graded)
    report.graded = [{"question_id": r["question_id"], "answer": r["answer"], "expected": r["expected"],
                      "correct": is_correct(r["answer"], r["expected"])} for r in graded]  # fmt: skip
    report.n_correct = sum(g["correct"] for g in report.graded)
    report.latency = {
        "load_s": summarize([r["load_s"] for r in ok if not r["cache_hit"]]),
        "first_token_s": summarize([r["first_token_s"] for r in ok if r["first_token_s"] is not None]),
        "total_s": summarize([r["total_s"] for r in ok]),
    }
    for r in rows:
        w = report.workers.setdefault(r["worker"], WorkerStats())
        w.items += 1
        w.tokens += r["n_new_tokens"]
        w.seconds += r["total_s"]
