"""`beacon serve` — an OpenAI-compatible answer service over the stored snapshots, on Ray Serve."""

from __future__ import annotations

import logging
import os

import click

from .pipeline_options import explain_errors, model_options, quiet_transformers, ray_options, store_options


@click.command("serve")
@store_options
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Where to listen (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar="BEACON_API_KEY",
    default=None,
    help="Ask every /v1 request for 'Authorization: Bearer KEY' (also BEACON_API_KEY). Default: no key.",
)
@click.option("--served-model-name", default=None, help="The model name clients give (default: the folder's name).")
@click.option(
    "--replicas",
    default="1",
    show_default=True,
    help="Replicas MIN or MIN:MAX (Serve autoscales between them on ongoing requests).",
)
@click.option("--gpus-per-replica", type=float, default=0.0, show_default=True)
@click.option("--cpus-per-replica", type=float, default=1.0, show_default=True)
@click.option("--max-batch", type=int, default=8, show_default=True, help="Rows per batched decoder step.")
@click.option("--max-running", type=int, default=32, show_default=True, help="Answers decoding at once per replica.")
@click.option(
    "--max-waiting",
    type=int,
    default=32,
    show_default=True,
    help="Answers waiting per replica; beyond running + waiting: 429 with Retry-After.",
)
@click.option("--cache-gb", type=float, default=2.0, show_default=True, help="Loaded memories kept per replica (LRU).")
@click.option(
    "--host-cache-gb",
    type=float,
    default=8.0,
    show_default=True,
    help="Memories pushed out of --cache-gb kept in pinned host memory per GPU replica (0: none).",
)
@click.option(
    "--lanes",
    type=int,
    default=0,
    show_default=True,
    help="One-row answers decoding in lanes of one preallocated arena: one pass (a CUDA graph) for all (0: off).",
)
@click.option(
    "--lane-slots",
    type=int,
    default=16384,
    show_default=True,
    help="Slots per lane: a memory's entries + question + answer room (3 x layers x lanes x slots key/value rows).",
)
@click.option("--max-tokens", type=int, default=64, show_default=True, help="Answer length when a request gives none.")
@click.option("--max-tokens-limit", type=int, default=1024, show_default=True, help="Longest answer a request may ask.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option(
    "--dry-run",
    type=click.Path(dir_okay=False),
    default=None,
    is_flag=False,
    flag_value="serve.yaml",
    help="Write the Ray Serve config (default serve.yaml) and print it; start nothing.",
)
@click.option(
    "--working-dir",
    default=None,
    help="With --dry-run: the application's runtime_env working_dir (a zip URI of this repository).",
)
@ray_options
@explain_errors
def serve(db, model, tokenizer, dtype, host, port, api_key, served_model_name, replicas, gpus_per_replica,
          cpus_per_replica, max_batch, max_running, max_waiting, cache_gb, host_cache_gb, lanes, lane_slots, max_tokens,
          max_tokens_limit, device, dry_run, working_dir, address, dashboard_host, dashboard, num_cpus, num_gpus,
          verbose) -> None:  # fmt: skip
    """Serve POST /v1/chat/completions and /v1/completions (OpenAI's API; `documents` or `search` pick
    the snapshots to answer from), GET /v1/models, /v1/documents, /health. Ctrl-C stops."""
    from pipelines.serve_config import ServeConfig, serve_config

    low, _, high = replicas.partition(":")
    try:
        min_replicas, max_replicas = int(low), int(high or low)
    except ValueError as err:
        raise click.BadParameter(f"{replicas!r}: write MIN or MIN:MAX, e.g. 1:4", param_hint="--replicas") from err
    config = ServeConfig(model=model, db=db, tokenizer=tokenizer, dtype=dtype, device=device,
                         served_model_name=served_model_name, host=host, port=port, api_key=api_key,
                         max_batch=max_batch, max_running=max_running, max_waiting=max_waiting,
                         cache_bytes=int(cache_gb * (1 << 30)), host_cache_bytes=int(host_cache_gb * (1 << 30)),
                         lanes=lanes, lane_slots=lane_slots, max_tokens=max_tokens,
                         max_tokens_limit=max_tokens_limit, min_replicas=min_replicas,
                         max_replicas=max_replicas, gpus_per_replica=gpus_per_replica,
                         cpus_per_replica=cpus_per_replica)  # fmt: skip
    if dry_run is not None:
        import yaml

        text = yaml.safe_dump(serve_config(config, working_dir=working_dir), sort_keys=False)
        with open(dry_run, "w") as f:
            f.write(text)
        click.echo(text, nl=False)
        click.echo(f"# written to {os.path.abspath(dry_run)}; deploy with: serve deploy {dry_run}", err=True)
        if api_key:
            click.echo("# the API key is not written: set BEACON_API_KEY on the replicas' nodes", err=True)
        return
    from pipelines.cluster import RayOptions
    from pipelines.defaults import resolve_model
    from pipelines.serve import run

    resolve_model(model)  # a missing default model is explained before Ray starts
    if not verbose:
        quiet_transformers()
        for name in ("ray", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
    options = RayOptions(address=address, dashboard_host=dashboard_host, include_dashboard=dashboard,
                         num_cpus=num_cpus, num_gpus=num_gpus, log_to_driver=verbose)  # fmt: skip
    run(config, ray_options=options)
