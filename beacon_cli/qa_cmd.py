"""`beacon ask`, `beacon qa`, `beacon generate` — answer from snapshots, in one go or in batch, or from raw text."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .pipeline_options import (
    allow_failures_option,
    exit_if_failed,
    explain_errors,
    model_options,
    pool_options,
    quiet_transformers,
    ray_options,
    ray_settings,
    settings_option,
    store_options,
)

SHOWN_ANSWERS = 20  # `beacon qa` lists each graded answer when there are at most this many


def _answer_config(**kwargs):
    from pipelines.config import AnswerConfig
    from pipelines.defaults import resolve_model

    resolve_model(kwargs["model"])  # a missing default model is explained first
    return AnswerConfig(**kwargs)


@click.command("ask")
@click.argument("question")
@click.option(
    "--doc-id", "doc_ids", multiple=True, help="Document to read (repeat: read in this order). Default: search."
)
@store_options
@model_options
@click.option("--top-k", type=int, default=1, show_default=True, help="Documents picked by search.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer row (doc ids, timings) as JSON.")
@allow_failures_option
@explain_errors
def ask(question, doc_ids, db, model, tokenizer, dtype, top_k, max_new_tokens, device, as_json, allow_failures) -> None:
    """Answer QUESTION from stored snapshots (in this process, no Ray) and print the answer.

    --doc-id takes a stored id or its stem. Exit status: 0, 1 (could not run), 3 (no answer: the row's
    error says why; --allow-failures: 0).
    """
    from pipelines.ask import ask as run

    quiet_transformers()
    config = _answer_config(db=db, model=model, tokenizer=tokenizer, dtype=dtype, top_k=top_k,
                            max_new_tokens=max_new_tokens, device=device)  # fmt: skip
    row = run(question, config, doc_ids=list(doc_ids) or None)
    if as_json:
        click.echo(json.dumps(row, indent=2, default=str))
        exit_if_failed(int(bool(row.get("error"))), "answers", allow_failures)
    elif row.get("error"):
        click.echo(f"Error: {row['error']}", err=True)
        exit_if_failed(1, "answers", allow_failures)
    else:
        click.echo(row["answer"])
        click.echo(
            f"[{', '.join(row['doc_ids'])}; load {row['load_s'] * 1e3:.0f} ms, first token"
            f" {row['first_token_s'] * 1e3:.0f} ms, total {row['total_s'] * 1e3:.0f} ms]",
            err=True,
        )


@click.command("qa")
@click.argument("questions")
@click.option("-o", "--output", default="answers.jsonl", show_default=True, help="Answers: *.jsonl or *.parquet.")
@store_options
@model_options
@pool_options(default_batch=16)
@ray_options
@click.option("--top-k", type=int, default=1, show_default=True, help="Documents picked by search per question.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--cache-gb", type=float, default=2.0, show_default=True, help="Loaded memories kept per actor (LRU).")
@click.option("--lanes", type=int, default=0, show_default=True,
              help="One-row answers per actor decoding in lanes of one arena, one pass for all (beacon serve --lanes).")
@click.option("--lane-slots", type=int, default=16384, show_default=True, help="Slots per lane.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@allow_failures_option
@settings_option("AnswerConfig")
@explain_errors
def qa(questions, output, db, model, tokenizer, dtype, actors, gpus_per_actor, cpus_per_actor, batch_size, address,
       dashboard_host, dashboard, num_cpus, num_gpus, verbose, top_k, max_new_tokens, cache_gb, lanes, lane_slots,
       progress, as_json, allow_failures, settings) -> None:  # fmt: skip
    """Answer every question of QUESTIONS (.jsonl/.parquet: question, doc_ids?, id?, answer?) on Ray.

    Questions without doc_ids read the --top-k documents that full-text search picks. Answers, with
    their doc ids and timings (load, first token, total), go to --output. Exit status: 0, 1 (could not
    run), 3 (some questions failed: listed; --allow-failures: 0).
    """
    from pipelines.answer import answer_questions

    config = _answer_config(
        questions=questions, output=output, db=db, model=model, tokenizer=tokenizer, dtype=dtype,
        num_gpus=gpus_per_actor, num_cpus=cpus_per_actor, min_actors=actors[0], max_actors=actors[1],
        batch_size=batch_size, max_new_tokens=max_new_tokens, top_k=top_k, cache_bytes=int(cache_gb * 2**30),
        lanes=lanes, lane_slots=lane_slots, progress=progress,
    ).with_settings(settings)  # fmt: skip
    report = answer_questions(config, ray_options=ray_settings(address, dashboard_host, dashboard, num_cpus, num_gpus,
                                                               verbose))  # fmt: skip
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        exit_if_failed(report.n_failed, "questions", allow_failures)
        return
    total = report.latency.get("total_s", {})
    graded = f", {report.n_correct}/{report.n_with_expected} correct" if report.n_with_expected else ""
    click.echo(
        f"{report.n_answered} answered, {report.n_failed} failed of {report.n_questions} questions{graded} in"
        f" {report.seconds:.1f} s (latency p50 {total.get('p50', 0) * 1e3:.0f} ms) -> {report.output}"
    )
    if len(report.graded) <= SHOWN_ANSWERS:  # a small graded set (the sample): each answer beside its expected one
        for g in report.graded:
            mark = "right" if g["correct"] else "wrong"
            expected = " and ".join(repr(e) for e in g["expected"])
            click.echo(f"  {mark}  {g['question_id']}: {g['answer']!r} (expected {expected})")
    for f in report.failures[:10]:
        click.echo(f"  failed {f['question_id']}: {f['error']}", err=True)
    exit_if_failed(report.n_failed, "questions", allow_failures)


@click.command("generate")
@click.argument("question")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False), help="Read the document from this file.")
@click.option("--doc-id", help="Read the text this stored document was ingested from (kept by the search table).")
@click.option("--text", help="The document itself.")
@click.option("--db", default=None, help="Store folder, for --doc-id (default: beacon_db).")
@model_options
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@explain_errors
def generate(question, file_, doc_id, text, db, model, tokenizer, dtype, max_new_tokens, device, as_json) -> None:
    """Answer QUESTION after reading a document's raw text in one pass (no snapshot).

    For comparison with `beacon ask`: the same model, document and question give the same answer.
    """
    from pipelines.ask import document_text, generate_from_text
    from pipelines.defaults import DEFAULT_DB

    quiet_transformers()
    if sum(x is not None for x in (file_, doc_id, text)) != 1:
        raise click.UsageError("give the document one way: --file PATH, --doc-id ID or --text TEXT")
    if file_ is not None:
        text = Path(file_).read_text(encoding="utf-8")
    elif doc_id is not None:
        text = document_text(db or DEFAULT_DB, doc_id)
    config = _answer_config(model=model, tokenizer=tokenizer, dtype=dtype, max_new_tokens=max_new_tokens, device=device)
    row = generate_from_text(question, text, config)
    click.echo(json.dumps(row, indent=2) if as_json else row["answer"])
