"""`beacon ingest` — condense a corpus into the snapshot store (a thin shim over pipelines.ingest)."""

from __future__ import annotations

import json

import click

from .pipeline_options import (
    connect,
    explain_errors,
    model_options,
    pool_options,
    ray_options,
    settings_option,
    store_options,
)


@click.command("ingest")
@click.argument("corpus")
@store_options
@model_options
@pool_options(default_batch=8)
@ray_options
@click.option("--format", "corpus_format", type=click.Choice(["auto", "files", "jsonl", "parquet"]), default="auto")
@click.option("--store-dtype", default=None, help="Stored bytes: float8_e4m3fn halves bf16 (lossy). Default: lossless.")
@click.option("--long-document-tokens", type=int, default=32768, show_default=True, help="Longer: streamed alone.")
@click.option(
    "--piece-tokens", type=int, default=8192, show_default=True, help="Tokens per engine call when streaming."
)
@click.option(
    "--compile", "compile_layers", is_flag=True,
    help="torch.compile the decoder layer on GPU actors: faster once compiled, after a first call of 30-80 s.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Condense every document again, even those already stored.")
@click.option("--no-search", is_flag=True, help="Keep no search table (questions must then name their doc ids).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@settings_option("IngestConfig")
@explain_errors
def ingest(corpus, db, model, tokenizer, dtype, actors, gpus_per_actor, cpus_per_actor, batch_size, address,
           dashboard_host, dashboard, num_cpus, num_gpus, verbose, corpus_format, store_dtype, long_document_tokens,
           piece_tokens, compile_layers, force, no_search, progress, as_json, settings) -> None:  # fmt: skip
    """Condense every document of CORPUS into snapshots in --db.

    CORPUS: a folder of .txt/.md files, a .jsonl (id, text, title?, metadata?) or .parquet file.
    Documents already stored with the same text and model are skipped, so running it again is cheap.
    """
    from pipelines.cluster import gpus_per_actor as default_gpus
    from pipelines.config import IngestConfig
    from pipelines.defaults import resolve_model
    from pipelines.ingest import ingest as run

    resolve_model(model)  # a missing default model is explained before Ray starts
    connect(address, dashboard_host, dashboard, num_cpus, num_gpus, verbose)
    config = IngestConfig(
        corpus=corpus, db=db, model=model, tokenizer=tokenizer, dtype=dtype, corpus_format=corpus_format,
        num_gpus=default_gpus(gpus_per_actor), num_cpus=cpus_per_actor, min_actors=actors[0], max_actors=actors[1],
        batch_size=batch_size, piece_tokens=piece_tokens, long_document_tokens=long_document_tokens,
        store_dtype=store_dtype, compile_layers=compile_layers, skip_existing=not force, search=not no_search,
        progress=progress,
    ).with_settings(settings)  # fmt: skip
    report = run(config)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    click.echo(
        f"{report.n_condensed} condensed, {report.n_skipped + report.n_stored} already stored, {report.n_empty} empty,"
        f" {report.n_failed} failed of {report.n_documents} documents in {report.seconds:.1f} s"
        f" ({report.tokens_per_s:,.0f} tokens/s, {len(report.workers)} actors) -> {report.db}"
    )
    for f in report.failures[:10]:
        click.echo(f"  failed {f['doc_id']}: {f['error']}", err=True)
