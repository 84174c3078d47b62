"""Settings of `beacon serve` and the Ray Serve config they make (`serve.yaml`, `beacon serve --dry-run`).

No Ray import: the config is plain data, turned into Serve's deployment options here and applied
by pipelines/serve.py (or by `serve deploy serve.yaml` on a cluster).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .defaults import DEFAULT_DB, DEFAULT_MODEL

APP_NAME = "beacon"
DEPLOYMENT = "BeaconServer"  # the model replicas
INGRESS = "BeaconIngress"  # the HTTP side, in front of them
IMPORT_PATH = "pipelines.serve:build"  # the application builder serve.yaml names
ROUTER = "pipelines.serve_router:DocumentAffinityRouter"  # routes answers to the replica of their documents


@dataclass
class ServeConfig:
    """Everything a replica and its deployment need; fields are JSON values (they travel in serve.yaml).

    Model and store: `model`, `tokenizer`, `dtype` (what the snapshots were condensed with), `db`.
    Per replica: `max_batch` rows per batched decoder step, `max_running` answers decoding at once,
    `max_waiting` admitted but not started (beyond both: 429 with Retry-After), `cache_bytes` of
    loaded memories kept on the device (LRU) and `host_cache_bytes` more in pinned host memory (GPU
    replicas), `max_tokens` default and `max_tokens_limit` bound of an answer, `lanes` one-row answers
    decoding in lanes of one arena of `lane_slots` slots each (Batcher; 0: none).
    Replicas: `min_replicas..max_replicas` (autoscaling on ongoing requests when they differ),
    `gpus_per_replica`, `cpus_per_replica`; `max_queued_requests` waiting for a replica with room
    (in the ingress; also at each proxy) before a 429. HTTP: `host`, `port`; `api_key` (None: no
    key asked; else every /v1 request needs `Authorization: Bearer KEY`). `served_model_name`: the
    name /v1/models lists and requests give (default: the model folder's name).
    """

    model: str = DEFAULT_MODEL
    db: str = DEFAULT_DB
    tokenizer: str | None = None
    dtype: str | None = None
    device: str = "auto"
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 8
    max_running: int = 32
    max_waiting: int = 32
    cache_bytes: int = 2 << 30
    host_cache_bytes: int = 8 << 30
    max_tokens: int = 64
    max_tokens_limit: int = 1024
    lanes: int = 0
    lane_slots: int = 16384
    min_replicas: int = 1
    max_replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_queued_requests: int = 64
    retry_after_s: float = 1.0

    def __post_init__(self):
        for name in ("max_batch", "max_running", "max_tokens", "max_tokens_limit", "min_replicas", "port"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_waiting", "cache_bytes", "host_cache_bytes", "gpus_per_replica", "cpus_per_replica", "lanes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.max_tokens > self.max_tokens_limit:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be <= max_tokens_limit ({self.max_tokens_limit})")

    @property
    def model_name(self) -> str:
        return self.served_model_name or os.path.basename(str(self.model).rstrip("/")) or str(self.model)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ServeConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown serve settings {unknown}; known: {sorted(known)}")
        return cls(**values)


def deployment_options(config: ServeConfig) -> dict:
    """Ray Serve options of the BeaconServer deployment (`Deployment.options(**these)`)."""
    per_replica = config.max_running + config.max_waiting  # the replica answers 429 itself beyond this
    options = {
        "max_ongoing_requests": per_replica + 1,  # one more, so the replica's own 429 is what clients see
        "max_queued_requests": config.max_queued_requests,  # in the ingress's handle; beyond: 429
        "ray_actor_options": {"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus_per_replica},
        "graceful_shutdown_timeout_s": 10,
        # the replica holding the request's documents, unless it has per_replica answers already
        "request_router_config": {"request_router_class": ROUTER, "request_router_kwargs": {"busy_at": per_replica}},
    }
    if config.max_replicas > config.min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": max(1, config.max_running // 2),  # add a replica before the batch is full
            "upscale_delay_s": 5,
            "downscale_delay_s": 120,
        }
    else:
        options["num_replicas"] = config.min_replicas
    return options


def ingress_options(config: ServeConfig) -> dict:
    """Ray Serve options of the BeaconIngress deployment: one replica, no CPU reserved (it parses,
    searches and relays tokens; the model replicas do the work). One, so that its router sees every
    answer call: the queue lengths it keeps of the model replicas are whole, and a busy replica is
    seen as busy (several ingress replicas would each see only their share)."""
    per_replica = config.max_running + config.max_waiting
    return {
        "num_replicas": 1,
        # everything the model replicas hold plus what waits for them, so the ingress is never the limit
        "max_ongoing_requests": (per_replica + 1) * config.max_replicas + config.max_queued_requests,
        "max_queued_requests": config.max_queued_requests,  # at each proxy; beyond: Serve's own 429
        "backpressure_config": {"status_code": 429, "retry_after_s": config.retry_after_s},
        "ray_actor_options": {"num_cpus": 0},
        "graceful_shutdown_timeout_s": 10,
    }


def serve_config(config: ServeConfig, *, working_dir: str | None = None) -> dict:
    """The Ray Serve config file (what `serve deploy` and `serve run` read) for `config`. The API key
    is never written into it: replicas read BEACON_API_KEY from their environment (set it on the
    cluster's nodes, or in the application's runtime_env.env_vars)."""
    args = config.to_dict()
    args.pop("api_key")
    runtime_env: dict = {}
    if working_dir is not None:
        runtime_env["working_dir"] = working_dir
    deployments = [{"name": INGRESS, **ingress_options(config)}, {"name": DEPLOYMENT, **deployment_options(config)}]
    app = {"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args, "deployments": deployments}
    if runtime_env:
        app["runtime_env"] = runtime_env
    return {"proxy_location": "EveryNode", "http_options": {"host": config.host, "port": config.port},
            "applications": [app]}  # fmt: skip
