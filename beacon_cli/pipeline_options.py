"""Options and error handling shared by the pipeline commands (ingest, ask, qa, generate, snapshots)."""

from __future__ import annotations

import functools

import click

from pipelines.defaults import DEFAULT_DB, DEFAULT_MODEL


def store_options(f):
    """--db."""
    return click.option(
        "--db", default=DEFAULT_DB, show_default=True,
        help="Snapshot store: a folder (created if missing) or an object-store URI, e.g. s3://bucket/prefix"
        " (credentials and endpoint from the environment: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...).",
    )(f)  # fmt: skip


def model_options(f):
    """--model, --tokenizer, --dtype."""
    f = click.option(
        "--dtype",
        default=None,
        help="Model dtype: bf16 | fp16 | fp32 (default: the checkpoint's). Ask with the one you ingested with.",
    )(f)
    f = click.option("--tokenizer", default=None, help="Tokenizer folder (default: the model's own).")(f)
    f = click.option(
        "--model", default=DEFAULT_MODEL, show_default=True, help="Beacon checkpoint: local folder or hub id."
    )(f)
    return f


def ray_options(f):
    """--address, --dashboard-host, --dashboard/--no-dashboard, --num-cpus, --num-gpus, --verbose."""
    f = click.option("-v", "--verbose", is_flag=True, help="Show Ray's and the actors' logs.")(f)
    f = click.option("--num-gpus", type=int, default=None, help="GPUs of a Ray started here (default: all).")(f)
    f = click.option("--num-cpus", type=int, default=None, help="CPUs of a Ray started here (default: all).")(f)
    f = click.option(
        "--dashboard/--no-dashboard", default=None, help="Start Ray's dashboard and job server with a Ray started here."
    )(f)
    f = click.option(
        "--dashboard-host",
        default="127.0.0.1",
        show_default=True,
        help="Where a Ray started here serves its dashboard/job server (0.0.0.0: every interface).",
    )(f)
    f = click.option(
        "--address",
        default=None,
        envvar="RAY_ADDRESS",
        help="Join this Ray cluster (auto, HOST:PORT, ray://HOST:10001). Default: start Ray here.",
    )(f)
    return f


def pool_options(default_batch: int):
    """--actors MIN[:MAX], --gpus-per-actor, --cpus-per-actor, --batch-size."""

    def decorate(f):
        f = click.option(
            "--batch-size", type=int, default=default_batch, show_default=True, help="Items per actor call."
        )(f)
        f = click.option("--cpus-per-actor", type=float, default=1.0, show_default=True)(f)
        f = click.option(
            "--gpus-per-actor",
            type=float,
            default=None,
            help="GPUs per actor (default: 1 if the cluster has GPUs now, else 0; say 1 on autoscaling clusters).",
        )(f)
        f = click.option(
            "--actors",
            default="1",
            show_default=True,
            callback=_actors,
            help="Actor pool size MIN or MIN:MAX (Ray Data autoscales between them).",
        )(f)
        return f

    return decorate


def settings_option(config: str):
    """--set KEY=VALUE (repeatable): any field of the `config` dataclass, the value JSON or a plain string."""
    return click.option(
        "--set", "settings", multiple=True, callback=_settings, metavar="KEY=VALUE",
        help=f"Any {config} field (repeatable; JSON values), e.g. --set batch_size=16.",
    )  # fmt: skip


def _settings(_ctx, _param, items: tuple[str, ...]) -> dict:
    import json

    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE, e.g. --set batch_size=16")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value  # a plain string
    return settings


def _actors(_ctx, _param, value: str) -> tuple[int, int]:
    try:
        lo, _, hi = value.partition(":")
        pool = (int(lo), int(hi or lo))
    except ValueError as err:
        raise click.BadParameter(f"{value!r}: write MIN or MIN:MAX, e.g. 1:4") from err
    if not 1 <= pool[0] <= pool[1]:
        raise click.BadParameter(f"{value!r}: need 1 <= MIN <= MAX")
    return pool


def ray_settings(address, dashboard_host, dashboard, num_cpus, num_gpus, verbose):
    """The RayOptions of a command's Ray options (quiet unless --verbose); Ray starts only when needed."""
    from pipelines.cluster import RayOptions

    if not verbose:
        quiet_transformers()
    return RayOptions(
        address=address,
        dashboard_host=dashboard_host,
        include_dashboard=dashboard,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        log_to_driver=verbose,
        quiet=not verbose,
    )


PARTIAL_FAILURE = 3  # exit status of a run that finished but failed some items (--allow-failures: 0)


def exit_if_failed(n_failed: int, what: str, allow_failures: bool) -> None:
    """Exit with PARTIAL_FAILURE when items failed, unless allowed (the summary was printed already)."""
    if n_failed and not allow_failures:
        click.echo(f"{n_failed} {what} failed (exit {PARTIAL_FAILURE}; --allow-failures exits 0)", err=True)
        raise SystemExit(PARTIAL_FAILURE)


def allow_failures_option(f):
    return click.option(
        "--allow-failures", is_flag=True, help=f"Exit 0 even if some items failed (default: exit {PARTIAL_FAILURE})."
    )(f)


def quiet_transformers() -> None:
    """No 'Loading weights' bars from transformers in this process (the CLI prints its own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def explain_errors(f):
    """Turn expected failures (bad input, missing model or document) into one-line CLI errors."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from snapshots.errors import SnapshotError

        try:
            return f(*args, **kwargs)
        except (OSError, ValueError, SnapshotError) as err:
            cause = getattr(err, "cause", None)  # a Ray task's error: show what the task raised
            raise click.ClickException(str(cause if isinstance(cause, Exception) else err)) from err
        except Exception as err:  # a Ray task's error wrapping one of the above: its cause, not its traceback
            cause = getattr(err, "cause", None)
            if isinstance(cause, (OSError, ValueError, SnapshotError)):
                raise click.ClickException(str(cause)) from err
            raise

    return wrapper
