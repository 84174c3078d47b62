"""`beacon ingest` — condense a corpus into the snapshot store (a thin shim over pipelines.ingest)."""

from __future__ import annotations

import json

import click

from .pipeline_options import (
    allow_failures_option,
    exit_if_failed,
    explain_errors,
    model_options,
    pool_options,
    ray_options,
    ray_settings,
    settings_option,
    store_options,
)

NAMED = 10  # ids named per kind in the summary (--json lists all)


@click.command("ingest")
@click.argument("corpus")
@store_options
@model_options
@pool_options(default_batch=8)
@ray_options
@click.option("--format", "corpus_format", type=click.Choice(["auto", "files", "jsonl", "parquet"]), default="auto")
@click.option("--ids", type=click.Choice(["stem", "path"]), default="stem", show_default=True,
              help="Folder ids: the relative path without (stem) or with (path) the file's extension.")  # fmt: skip
@click.option("--follow-symlinks", is_flag=True, help="Read symlinked files and folders (each file once).")
@click.option(
    "--strict", is_flag=True, help="Any skipped entry (bad row, binary file, ...) is an error; nothing is written."
)
@click.option(
    "--repair", is_flag=True, help="Check every stored byte of the corpus's documents; condense damaged ones again."
)
@click.option("--store-dtype", default=None, help="Stored bytes: float8_e4m3fn halves bf16 (lossy). Default: lossless.")
@click.option("--long-document-tokens", type=int, default=32768, show_default=True,
              help="Longer: condensed alone, on actors of their own, with progress per document.")  # fmt: skip
@click.option(
    "--max-document-tokens", type=int, default=None, help="Skip documents with more tokens (default: no limit)."
)
@click.option(
    "--piece-tokens", type=int, default=8192, show_default=True, help="Tokens per engine call when streaming."
)
@click.option(
    "--compile", "compile_layers", is_flag=True,
    help="torch.compile the decoder layer on GPU actors: 1.25-1.4x faster condensing after a 60-145 s warm-up at"
    " each actor's start (eager's is 7-15 s); pays on long jobs. --set compile_cache=FILE shares what was compiled.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Condense every document again, even those already stored.")
@click.option("--no-search", is_flag=True, help="Keep no search table (questions must then name their doc ids).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@allow_failures_option
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON (every id of every kind).")
@settings_option("IngestConfig")
@explain_errors
def ingest(corpus, db, model, tokenizer, dtype, actors, gpus_per_actor, cpus_per_actor, batch_size, address,
           dashboard_host, dashboard, num_cpus, num_gpus, verbose, corpus_format, ids, follow_symlinks, strict, repair,
           store_dtype, long_document_tokens, max_document_tokens, piece_tokens, compile_layers, force, no_search,
           progress, allow_failures, as_json, settings) -> None:  # fmt: skip
    """Condense every document of CORPUS into snapshots in --db.

    CORPUS: a folder of .txt/.md files, a .jsonl (id, text, title?, metadata?) or .parquet file.
    Documents already stored with the same text and model are skipped (before Ray starts), so running
    it again is cheap. Bad entries are skipped and listed, the rest is ingested. Exit status: 0, 1
    (could not run; --strict with skipped entries), 3 (some documents failed; --allow-failures: 0).
    """
    from pipelines.config import IngestConfig
    from pipelines.ingest import ingest as run

    config = IngestConfig(
        corpus=corpus, db=db, model=model, tokenizer=tokenizer, dtype=dtype, corpus_format=corpus_format, ids=ids,
        follow_symlinks=follow_symlinks, strict=strict, repair=repair, max_document_tokens=max_document_tokens,
        num_gpus=gpus_per_actor, num_cpus=cpus_per_actor, min_actors=actors[0], max_actors=actors[1],
        batch_size=batch_size, piece_tokens=piece_tokens, long_document_tokens=long_document_tokens,
        store_dtype=store_dtype, compile_layers=compile_layers, skip_existing=not force, search=not no_search,
        progress=progress,
    ).with_settings(settings)  # fmt: skip
    report = run(config, ray_options=ray_settings(address, dashboard_host, dashboard, num_cpus, num_gpus, verbose))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print_summary(report)
    exit_if_failed(report.n_failed, "documents", allow_failures)


def print_summary(report) -> None:
    """The counts, the ids of each kind (the first few) and the table of skipped entries."""
    click.echo(
        f"{report.n_condensed} condensed, {report.n_stored} already stored, {report.n_empty} empty,"
        f" {report.n_failed} failed, {report.n_skipped} skipped of {report.n_items} corpus entries in"
        f" {report.seconds:.1f} s ({report.tokens_per_s:,.0f} tokens/s, {len(report.workers)} actors) -> {report.db}"
    )
    for kind in ("condensed", "repaired", "stored", "empty"):
        ids = getattr(report, kind)
        if ids:
            more = f" (+{len(ids) - NAMED} more; --json lists all)" if len(ids) > NAMED else ""
            click.echo(f"  {kind}: {', '.join(ids[:NAMED])}{more}")
    for f in report.failures[:NAMED]:
        click.echo(f"  failed {f['doc_id']}: {f['error']}", err=True)
    if report.skipped:
        click.echo(f"skipped ({report.n_skipped}):", err=True)
        width = min(60, max(len(s["where"]) for s in report.skipped))
        for s in report.skipped[:50]:
            click.echo(f"  {s['where']:<{width}}  {s['reason']}", err=True)
        if report.n_skipped > 50:
            click.echo(f"  ... {report.n_skipped - 50} more (--json lists all)", err=True)
