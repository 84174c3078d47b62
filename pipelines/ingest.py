"""Ingestion on Ray Data: corpus → tokenize (CPU tasks) → Condenser actors (GPU) → snapshot store.

    read (corpus.py) ─► drop documents already stored ─► tokenize ─► Condenser pool ─► driver
                         (same text hash + fingerprint)   CPU tasks   min..max actors   progress, search table

The Condenser pool is a Ray Data actor pool of `min_actors..max_actors` actors with `num_gpus`
each: Ray Data grows it while actors are busy and inputs wait, asking the cluster autoscaler for
nodes, and shrinks it when the inputs run out. Actors are restarted and their in-flight batches
retried if they die (Ray Data's defaults: max_restarts=-1, max_task_retries=-1); the store's
atomic put and the Condenser's "already stored" check make a retried batch neither lose nor
repeat a document. Re-running a job skips what is stored before tokenizing anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow as pa

from beacon_actors.columns import DOCUMENTS
from beacon_actors.text import tokenizer_source
from snapshots import SnapshotStore
from snapshots.records import DocumentInfo
from snapshots.search import SearchIndex

from .cluster import RayOptions, ensure_ray
from .config import IngestConfig
from .corpus import read_corpus
from .defaults import absolute, resolve_model
from .progress import Progress
from .reports import IngestReport, WorkerStats

MAX_REPORTED_FAILURES = 100
SEARCH_ROWS_PER_COMMIT = 256  # search rows are upserted per this many documents ...
SEARCH_COMMIT_S = 10.0  # ... or this many seconds, whichever comes first


def ingest(
    config: IngestConfig,
    *,
    ray_options: RayOptions | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
) -> IngestReport:
    """Condense every document of `config.corpus` not yet stored into the store `config.db`.

    Joins Ray (or starts it) with `ray_options` unless this process is connected already.
    `on_batch(rows)` is called with the CONDENSED rows of each finished batch (progress hooks,
    tests). Returns the report; documents that fail are listed in it, not raised.
    """
    import ray
    from ray.data import ActorPoolStrategy

    from beacon_actors.condenser import Condenser
    from beacon_actors.tokenize import tokenize_documents

    ensure_ray(ray_options)
    model = resolve_model(config.model)
    tokenizer = tokenizer_source(model, None if config.tokenizer is None else resolve_model(config.tokenizer))
    db = absolute(config.db)
    start = time.perf_counter()
    store = SnapshotStore(db)  # creates the tables before the actors race to
    search = SearchIndex(db) if config.search else None
    corpus = read_corpus(config.corpus, format=config.corpus_format, rows_per_block=config.batch_size)
    stored = store.list() if config.skip_existing else []
    # the fingerprint costs a model load on a CPU: only worth it when something could be skipped
    fingerprint = model_fingerprint(model, config.dtype) if stored else None
    report = IngestReport(corpus.source, db, model, None if fingerprint is None else fingerprint["id"])
    report.n_documents = corpus.n_documents

    ds = corpus.dataset
    known = complete_documents(stored, search, fingerprint) if fingerprint else {}
    if known:
        ds = ds.map_batches(drop_known, fn_kwargs={"known": ray.put(known)}, batch_format="pyarrow")
    # CPU tasks of their own: resources unlike the Condenser's keep Ray Data from fusing them into it
    ds = ds.map_batches(
        tokenize_documents, fn_kwargs={"tokenizer": tokenizer}, batch_format="pyarrow", num_cpus=config.tokenize_cpus
    )
    # Ray Data restarts a dead actor and retries its batches (its defaults: max_restarts=max_task_retries=-1)
    ds = ds.map_batches(
        Condenser,
        fn_constructor_kwargs=dict(
            model=model, db=db, dtype=config.dtype, device=config.device, batch_size=config.batch_size,
            piece_tokens=config.piece_tokens, long_document_tokens=config.long_document_tokens,
            store_dtype=config.store_dtype, return_text=config.search, skip_stored=config.skip_existing,
            compile_layers=config.compile_layers,
        ),
        compute=ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors),
        num_gpus=config.num_gpus,
        num_cpus=config.num_cpus,
        batch_size=config.batch_size,
        batch_format="pyarrow",
    )  # fmt: skip
    ds.context.enable_progress_bars = False  # ours below counts documents and tokens

    bar = Progress(corpus.n_documents, desc="ingest", unit="doc", enabled=config.progress)
    seen: set[str] = set()
    n_out = 0
    pending: list[dict] = []  # search rows not yet committed
    flushed = time.perf_counter()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            condensed = _tally(report, rows, seen)
            n_out += len(rows)
            if search is not None:
                pending += [r for r in rows if r["status"] in ("condensed", "stored")]
            if len(pending) >= SEARCH_ROWS_PER_COMMIT or (pending and time.perf_counter() - flushed > SEARCH_COMMIT_S):
                search.upsert(pending)
                pending, flushed = [], time.perf_counter()
            bar.update(len(rows), condensed)
            if on_batch is not None:
                on_batch(rows)
        report.n_skipped = max(0, report.n_documents - n_out)
        bar.update(report.n_skipped)
    finally:
        bar.close()
    if search is not None:  # rows lost to a crash before this are written by the next run ('stored')
        search.upsert(pending)
        search.refresh()
    report.seconds = time.perf_counter() - start
    return report


def model_fingerprint(model: str, dtype: str | None) -> dict:
    """lm.fingerprint() of `model` in `dtype`, computed in a Ray task on a CPU (device-independent)."""
    import ray

    return ray.get(ray.remote(num_cpus=1)(_fingerprint).remote(model, dtype))


def _fingerprint(model: str, dtype: str | None) -> dict:
    import beacon

    return beacon.load(model, device="cpu", dtype=dtype, tokenizer=False).fingerprint()


def complete_documents(stored: list[DocumentInfo], search: SearchIndex | None, fingerprint: dict) -> dict[str, str]:
    """doc_id -> text_sha256 of the `stored` documents nothing is left to do for: condensed by this
    model (and in the search table, if one is kept)."""
    done = {i.doc_id: i.text_sha256 for i in stored if i.fingerprint_id == fingerprint["id"] and i.text_sha256}
    if search is not None:
        indexed = search.known()
        done = {d: h for d, h in done.items() if indexed.get(d) == h}
    return done


def drop_known(batch: pa.Table, *, known) -> pa.Table:
    """Ray Data task: drop DOCUMENTS rows whose (doc_id, text_sha256) is in `known` (a dict or its ObjectRef)."""
    import ray

    if isinstance(known, ray.ObjectRef):
        known = ray.get(known)
    keep = [d not in known or known[d] != h for d, h in zip(
        batch.column("doc_id").to_pylist(), batch.column("text_sha256").to_pylist(), strict=True
    )]  # fmt: skip
    return batch.filter(pa.array(keep, pa.bool_())).cast(DOCUMENTS)


def _tally(report: IngestReport, rows: list[dict], seen: set[str]) -> int:
    """Add a batch of CONDENSED rows to the report; returns the tokens condensed in it."""
    tokens = 0
    for r in rows:
        if r["doc_id"] in seen:
            report.duplicates.append(r["doc_id"])
        seen.add(r["doc_id"])
        status = r["status"]
        setattr(report, f"n_{status}", getattr(report, f"n_{status}") + 1)
        if status == "failed" and len(report.failures) < MAX_REPORTED_FAILURES:
            report.failures.append({"doc_id": r["doc_id"], "error": r["error"]})
        w = report.workers.setdefault(r["worker"], WorkerStats(device=r["device"]))
        w.seconds += r["seconds"]
        if status == "condensed":
            tokens += r["n_tokens"]
            w.items += 1
            w.tokens += r["n_tokens"]
    report.n_tokens += tokens
    return tokens
