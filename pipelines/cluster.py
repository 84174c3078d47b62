"""Join a Ray cluster or start one here — the one place the pipelines call `ray.init`."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class RayOptions:
    """How to reach Ray.

    address: a running cluster ("auto", "HOST:PORT", "ray://HOST:10001"); None joins the one named
        by RAY_ADDRESS (set inside `ray job submit`), else starts a new Ray here, embedded in this
        process (address="local": never a cluster `ray start` left running on the machine).
    dashboard_host: where a Ray started here serves its dashboard and job server.
    include_dashboard: start the dashboard with a local Ray (None: Ray's default, if installed).
    num_cpus, num_gpus: resources of a Ray started here (None: what the machine has).
    """

    address: str | None = None
    dashboard_host: str = "127.0.0.1"  # not reachable from other machines unless told otherwise
    include_dashboard: bool | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    log_to_driver: bool = True
    quiet: bool = False  # hide Ray's and Ray Data's own log lines below ERROR (the CLI without -v)


def ensure_ray(options: RayOptions | None = None) -> None:
    """Connect to Ray unless this process already is (then `options` are ignored)."""
    import ray

    if ray.is_initialized():
        return
    o = options or RayOptions()
    if o.quiet:
        quiet_ray()
    ray_notices_to_stderr()
    address = o.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=o.log_to_driver)
        else:
            ray.init(
                address="local",
                num_cpus=o.num_cpus,
                num_gpus=o.num_gpus,
                dashboard_host=o.dashboard_host,
                include_dashboard=o.include_dashboard,
                log_to_driver=o.log_to_driver,
            )
    except ConnectionError as err:
        raise ValueError(
            f"could not reach a Ray cluster at {address!r} ({err}). Check that it runs (`ray status` on its head"
            " node), or leave out --address to start Ray here."
        ) from err
    except Exception as err:
        if "auth" not in type(err).__name__.lower() and "token" not in str(err).lower():
            raise
        raise ValueError(
            f"the Ray cluster at {address!r} refused this client ({err}). It uses token authentication: run"
            " with RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)."
        ) from err


def ray_notices_to_stderr() -> None:
    """Ray's driver prints the raylet's notices (a task retried, a worker killed) to stdout whatever
    log_to_driver says (`ray._private.worker.listen_error_messages` calls the module's
    `print_to_stdstream` with is_err False). A command's stdout is its result (`--json` must parse),
    so every such print goes to stderr."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "beacon_to_stderr", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        original(dict(data, is_err=True), ignore_prefix)

    to_stderr.beacon_to_stderr = True
    ray_worker.print_to_stdstream = to_stderr


def quiet_ray() -> None:
    """Keep Ray's own warnings off the terminal: its loggers at ERROR, no Ray Data progress bars,
    no usage-stats notice, and Lance's fork warning (its tables are opened before Ray forks) off."""
    import logging
    import warnings

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # C++ log lines (core_worker notices) off the terminal
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*fork.*")
    import ray.data  # noqa: F401  (it configures its loggers on import; quieten them after)

    for name in ("ray", "ray.data", "ray._private", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)


def gpus_per_actor(requested: float | None) -> float:
    """`requested`, or when None: 1 if the connected cluster has GPUs (or can add them), else 0."""
    import ray

    if requested is not None:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
