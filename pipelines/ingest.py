"""Ingestion: check the corpus, drop what is stored, then on Ray: tokenize → Condenser actors → store.

    scan (corpus.py, driver) ─► drop documents already stored ─┬─► short: tokenize ─► Condenser pool ─► driver
    bad entries → skip table    (same text hash + fingerprint;   │   CPU tasks         min..max actors
                                 before Ray starts)              └─► long: their own actors, piece by piece,
                                                                     progress per document (tokens/s, ETA)

Everything that needs no cluster happens first, in the driver: the store path and the corpus are
checked, every corpus entry is read and checked (corpus.py: a bad entry is a skip naming its file,
line and reason, never the end of the run; `strict` makes any skip an error before anything is
written), and documents stored already with the same text and model are dropped (the model's
fingerprint comes from a cache in the store folder, pipelines/fingerprints.py). If nothing is left,
Ray never starts.

Documents are then scheduled by size: those whose UTF-8 text is longer than `long_document_tokens`
bytes (byte-level tokenizers give at most one token per byte) go to `long_actors` actors of their
own, which tokenize and condense each alone, piece by piece, reporting after every piece; the rest
flows through Ray Data to the Condenser pool (`min_actors..max_actors`, autoscaled) and is stored
while the long ones proceed. On a machine whose GPUs the pool holds, the long actors wait for it.
Actors of the pool are restarted and their in-flight batches retried if they die (Ray Data's
defaults); the store's atomic put and the Condenser's "already stored" check make a retried batch
neither lose nor repeat a document.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from beacon_actors.columns import NO_TIMES
from beacon_actors.text import tokenizer_source
from snapshots import SnapshotStore, store_exists
from snapshots.search import SearchIndex

from . import fingerprints
from .catalog import check_store_path
from .cluster import RayOptions, ensure_ray, gpus_per_actor
from .config import IngestConfig
from .corpus import Scan, scan_corpus, to_dataset
from .defaults import absolute, resolve_model
from .progress import DocumentProgress, Progress
from .reports import IngestReport, WorkerStats

SEARCH_ROWS_PER_COMMIT = 256  # search rows are upserted per this many documents ...
SEARCH_COMMIT_S = 10.0  # ... or this many seconds, whichever comes first


class StrictCorpusError(ValueError):
    """`strict` ingestion found entries it would skip; nothing was written."""


def ingest(
    config: IngestConfig,
    *,
    ray_options: RayOptions | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> IngestReport:
    """Condense every document of `config.corpus` not yet stored into the store `config.db`.

    Joins Ray (or starts it) with `ray_options` only if something is left to condense, unless this
    process is connected already. `on_batch(rows)` is called with the CONDENSED rows of each
    finished batch (and of each long document); `on_progress(event)` after each piece of a long
    document ({doc_id, done, n_tokens, seconds, tokens_per_s, eta_s}). Returns the report;
    documents that fail or are skipped are listed in it, not raised.
    """
    start = time.perf_counter()
    db = absolute(config.db)
    check_store_path(db)
    model = resolve_model(config.model)
    scan = scan_corpus(config.corpus, format=config.corpus_format, ids=config.ids,
                       follow_symlinks=config.follow_symlinks)  # fmt: skip
    if config.strict and (scan.skipped or scan.empty):
        raise StrictCorpusError(strict_message(scan))
    report = IngestReport(scan.source, db, model, None, n_items=scan.n_items)
    report.skipped = [s.to_dict() for s in scan.skipped]
    report.empty = [r["doc_id"] for r in scan.empty]
    report.n_empty = len(report.empty)
    report.n_documents = len(scan.documents) + len(scan.empty)
    todo, damaged = _drop_stored(config, scan, db, model, report, ray_options)
    if todo:
        _condense(config, todo, damaged, db, model, report, ray_options, on_batch, on_progress)
    report.n_skipped = len(report.skipped)
    for kind in ("condensed", "stored", "empty", "repaired"):
        getattr(report, kind).sort()
    report.seconds = time.perf_counter() - start
    return report


def strict_message(scan: Scan) -> str:
    lines = [f"--strict: {len(scan.skipped) + len(scan.empty)} corpus entries would be skipped; nothing was written:"]
    lines += [f"  {s.where}: {s.reason}" for s in scan.skipped[:50]]
    lines += [f"  {r['source_uri']}: empty (no text besides whitespace)" for r in scan.empty[:50]]
    return "\n".join(lines)


def _drop_stored(config, scan, db, model, report, ray_options) -> tuple[list[dict], dict[str, str]]:
    """(documents left to condense, {doc_id: damage} of stored ones to condense again); fills report.stored."""
    rows = scan.documents
    if not rows or not store_exists(db):
        return rows, {}
    store = SnapshotStore(db)
    infos, damaged = store.list_readable()
    corpus_ids = {r["doc_id"] for r in rows}
    if config.repair:
        damaged |= store.verify([i.doc_id for i in infos if i.doc_id in corpus_ids and i.doc_id not in damaged])
    damaged = {d: e for d, e in damaged.items() if d in corpus_ids}
    if not config.skip_existing:
        return rows, damaged
    stored = {i.doc_id: i for i in infos if i.doc_id in corpus_ids and i.doc_id not in damaged}
    same_text = [r for r in rows if r["doc_id"] in stored and stored[r["doc_id"]].text_sha256 == r["text_sha256"]]
    if not same_text:
        return rows, damaged
    fingerprint = model_fingerprint(db, model, config.dtype, ray_options)
    report.fingerprint_id = fingerprint["id"]
    indexed = SearchIndex(db).known() if config.search else None
    done = {
        r["doc_id"]
        for r in same_text
        if stored[r["doc_id"]].fingerprint_id == fingerprint["id"]
        and (indexed is None or indexed.get(r["doc_id"]) == r["text_sha256"])
    }
    report.stored = sorted(done)
    report.n_stored = len(done)
    return [r for r in rows if r["doc_id"] not in done], damaged


def model_fingerprint(db: str, model: str, dtype: str | None, ray_options: RayOptions | None = None) -> dict:
    """lm.fingerprint() of `model` in `dtype`: cached in the store folder, else computed here (small
    models) or by a Ray task on a CPU (Ray is joined or started for it)."""
    fp = fingerprints.cached(db, model, dtype)
    if fp is None:
        if fingerprints.small_enough_here(model):
            fp = fingerprints.compute(model, dtype)
        else:
            ensure_ray(ray_options)
            fp = fingerprints.on_ray(model, dtype)
        fingerprints.remember(db, model, dtype, fp)
    return fp


def streamed_alone(text: str, long_document_tokens: int) -> bool:
    """Whether a document goes to a long-document actor: judged before tokenizing, by its UTF-8
    bytes (byte-level tokenizers give at most one token per byte)."""
    return len(text.encode("utf-8")) > long_document_tokens


def _condense(config, todo, damaged, db, model, report, ray_options, on_batch, on_progress) -> None:
    """Run the Ray part: short documents through the Condenser pool, long ones on actors of their own."""
    from ray.data import ActorPoolStrategy

    from beacon_actors.condenser import Condenser
    from beacon_actors.tokenize import tokenize_documents

    ensure_ray(ray_options)
    report.ray_started = True
    num_gpus = gpus_per_actor(config.num_gpus)
    tokenizer = tokenizer_source(model, None if config.tokenizer is None else resolve_model(config.tokenizer))
    SnapshotStore(db)  # creates the tables before the actors race to
    search = SearchIndex(db) if config.search else None
    kwargs = dict(
        model=model, db=db, dtype=config.dtype, device=config.device, batch_size=config.batch_size,
        piece_tokens=config.piece_tokens, long_document_tokens=config.long_document_tokens,
        store_dtype=config.store_dtype, return_text=config.search, skip_stored=config.skip_existing,
        compile_layers=config.compile_layers, compile_cache=config.compile_cache,
        max_document_tokens=config.max_document_tokens,
        replace_ids=sorted(damaged),
    )  # fmt: skip
    long = [r for r in todo if streamed_alone(r["text"], config.long_document_tokens)]
    short = [r for r in todo if not streamed_alone(r["text"], config.long_document_tokens)]
    bar = Progress(len(todo), desc="ingest", unit="doc", enabled=config.progress)
    long_runs = LongDocuments(long, kwargs, tokenizer, num_cpus=config.long_cpus, num_gpus=num_gpus,
                              n_actors=config.long_actors, progress=config.progress)  # fmt: skip
    seen: set[str] = set()
    pending: list[dict] = []  # search rows not yet committed
    flushed = time.perf_counter()

    def take(rows: list[dict]) -> None:
        nonlocal pending, flushed
        bar.update(len(rows), _tally(report, rows, seen, damaged))
        if search is not None:
            pending += [r for r in rows if r["status"] in ("condensed", "stored")]
            if len(pending) >= SEARCH_ROWS_PER_COMMIT or (pending and time.perf_counter() - flushed > SEARCH_COMMIT_S):
                search.upsert(pending)
                pending, flushed = [], time.perf_counter()
        if on_batch is not None:
            on_batch(rows)

    def drain(block: bool) -> None:
        for kind, item in long_runs.messages(block):
            if kind == "result":
                take([item])
            elif on_progress is not None:
                on_progress(item)

    try:
        if long and (num_gpus == 0 or not short):  # GPUs: the pool's actors take them first
            long_runs.start()
        if short:
            ds = to_dataset(short, config.batch_size)
            # CPU tasks of their own: resources unlike the Condenser's keep Ray Data from fusing them into it
            ds = ds.map_batches(tokenize_documents, fn_kwargs={"tokenizer": tokenizer}, batch_format="pyarrow",
                                num_cpus=config.tokenize_cpus)  # fmt: skip
            # Ray Data restarts a dead actor and retries its batches (its defaults: max_restarts=max_task_retries=-1)
            ds = ds.map_batches(
                Condenser, fn_constructor_kwargs=kwargs,
                compute=ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors),
                num_gpus=num_gpus, num_cpus=config.num_cpus, batch_size=config.batch_size, batch_format="pyarrow",
            )  # fmt: skip
            ds.context.enable_progress_bars = False  # ours counts documents and tokens
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                take(batch.to_pylist())
                if long and not long_runs.started:
                    long_runs.start()
                drain(block=False)
        long_runs.start()
        drain(block=True)
    finally:
        long_runs.close()
        bar.close()
    report.long_documents = long_runs.finished
    if search is not None:  # rows lost to a crash before this are written by the next run ('stored')
        search.upsert(pending)
        search.refresh()


class LongDocuments:
    """Long documents, condensed one at a time on each of `n_actors` Condenser actors of their own.

    A thread per actor walks its share of the documents, calling `Condenser.stream` as a Ray
    streaming generator; progress events and the final CONDENSED rows come back through a queue
    the driver drains (`messages`). A document whose actor dies is reported failed (run again:
    nothing of it was stored).
    """

    def __init__(self, rows, kwargs, tokenizer, *, num_cpus, num_gpus, n_actors, progress):
        self.rows, self.kwargs, self.tokenizer = rows, kwargs, tokenizer
        self.resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self.n_actors = min(n_actors, len(rows))
        self.progress = progress
        self.queue: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.actors: list = []
        self.started = False
        self.n_done = 0
        self.bars: dict[str, DocumentProgress] = {}
        self.finished: list[dict] = []

    def start(self) -> None:
        if self.started or not self.rows:
            self.started = True
            return
        import ray

        from beacon_actors.condenser import Condenser

        self.started = True
        cls = ray.remote(Condenser).options(max_restarts=0, **self.resources)
        for i in range(self.n_actors):
            actor = cls.remote(**self.kwargs)
            self.actors.append(actor)
            share = self.rows[i :: self.n_actors]
            t = threading.Thread(target=self._run, args=(actor, share), daemon=True, name=f"long-{i}")
            t.start()
            self.threads.append(t)

    def _run(self, actor, rows: list[dict]) -> None:
        import ray

        for row in rows:
            try:
                for ref in actor.stream.options(num_returns="streaming").remote(row, self.tokenizer):
                    msg = ray.get(ref)
                    self.queue.put(("result", msg["result"]) if "result" in msg else ("progress", msg))
            except Exception as err:  # the actor died (out of memory, killed): this document failed
                self.queue.put(("result", _failed_row(row, f"its actor was lost: {type(err).__name__}: {err}")))
        self.queue.put(("done", None))

    def messages(self, block: bool):
        """Yield ("progress", event) and ("result", row) messages; block=True: until every thread is done."""
        while self.n_done < len(self.threads):
            try:
                kind, item = self.queue.get(block=block, timeout=None)
            except queue.Empty:
                return
            if kind == "done":
                self.n_done += 1
                continue
            if kind == "progress":
                item = self._progress(item)
            else:
                self._finish(item)
            yield kind, item

    def _progress(self, event: dict) -> dict:
        doc_id = event["doc_id"]
        if doc_id not in self.bars:
            self.bars[doc_id] = DocumentProgress(doc_id, event["n_tokens"], enabled=self.progress)
        return self.bars[doc_id].update(event["done"], event["seconds"])

    def _finish(self, row: dict) -> None:
        bar = self.bars.pop(row["doc_id"], None)
        if bar is not None:
            bar.close()
        if row["status"] == "condensed":
            speed = row["n_tokens"] / row["seconds"] if row["seconds"] else 0.0
            self.finished.append({"doc_id": row["doc_id"], "n_tokens": row["n_tokens"], "seconds": row["seconds"],
                                  "tokens_per_s": speed})  # fmt: skip

    def close(self) -> None:
        import ray

        for bar in self.bars.values():
            bar.close()
        for actor in self.actors:
            ray.kill(actor)


def _failed_row(row: dict, error: str) -> dict:
    return {"doc_id": row["doc_id"], "status": "failed", "n_tokens": 0, **NO_TIMES, "error": error,
            "title": row.get("title"), "source_uri": row.get("source_uri"), "text_sha256": row.get("text_sha256"),
            "text": None, "embedding": row.get("embedding"), "worker": "?", "pid": 0, "device": "?"}  # fmt: skip


def _tally(report: IngestReport, rows: list[dict], seen: set[str], damaged: dict[str, str]) -> int:
    """Add CONDENSED rows to the report; returns the tokens condensed in them."""
    tokens = 0
    for r in rows:
        doc_id, status = r["doc_id"], r["status"]
        if doc_id in seen:
            report.duplicates.append(doc_id)
        seen.add(doc_id)
        if status == "skipped":
            report.skipped.append({"where": r["source_uri"] or doc_id, "doc_id": doc_id, "reason": r["error"]})
        elif status == "failed":
            report.n_failed += 1
            report.failures.append({"doc_id": doc_id, "error": r["error"]})
        else:
            setattr(report, f"n_{status}", getattr(report, f"n_{status}") + 1)
            getattr(report, status).append(doc_id)
            if status == "condensed" and doc_id in damaged:
                report.repaired.append(doc_id)
        w = report.workers.setdefault(r["worker"], WorkerStats(device=r["device"]))
        w.seconds += r["seconds"]
        if status == "condensed":
            tokens += r["n_tokens"]
            w.items += 1
            w.tokens += r["n_tokens"]
    report.n_tokens += tokens
    return tokens
