"""`beacon serve`: an OpenAI-compatible answer service on Ray Serve, answering from stored snapshots.

Two deployments. `BeaconIngress` (pipelines/serve_ingress.py: FastAPI, light, no model) takes the
HTTP request, checks it, runs the store's search if asked, and calls `BeaconServer.answer` by
handle with the document ids; Serve's router for BeaconServer (pipelines/serve_router.py) sends
the call to the replica those documents hash to, the one whose LRU already holds their memory.
Each `BeaconServer` replica (here) loads the model, opens the store and runs a
`beacon_actors.batcher.Batcher` (the continuous-batching loop, an LRU of loaded memories). Why two:
Serve's HTTP proxy routes a request before its body is read (the replica pulls the body from the
proxy), so routing by the documents a body names needs a hop after the body is parsed.

A replica checks what needs the model or the store: an unknown document is a 404 naming it, a
memory + prompt + max_tokens past the model's positions a 400 saying the limit (`_check_length`).
Document ids are only ever looked up in the store's tables, never used as paths. An answer starts
only once its first token exists, so a memory that fails to load is a plain 500 even for
`stream: true`. Metrics go through ray.serve.metrics (Ray's Prometheus endpoint on each node):
requests by route and status, time to first token, tokens, cache hits and misses. Settings:
pipelines/serve_config.py. Docs: docs/serving.md.
"""

import asyncio
import collections
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Sequence

from ray import serve

from beacon.windows import PositionsError, check_answer_room

from .openai_api import DONE, ApiError, Request, TextStream, chunk, completion, error_event, new_id
from .serve_config import APP_NAME, DEPLOYMENT, ServeConfig, deployment_options, ingress_options
from .serve_ingress import BeaconIngress, requests_counter

logger = logging.getLogger(__name__)
TTFT_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


# (helpers above the deployment: Serve pickles the class when it is decorated, with the globals its
# methods name as they are at that moment)
class _Answer:
    """What one answer has so far: the request, its ids, the text stream, counts."""

    def __init__(self, req, rid, model, doc_ids, n_prompt, start, ttft, text):
        self.req, self.rid, self.model, self.doc_ids = req, rid, model, doc_ids
        self.n_prompt, self.start, self.ttft, self.text = n_prompt, start, ttft, text
        self.n_tokens, self.finish = 0, None

    def usage(self) -> dict:
        n, m = self.n_prompt, self.n_tokens
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m,
                "memory_tokens": self.start["memory_tokens"]}  # fmt: skip

    def whole(self, finish: str) -> dict:
        extra = {"documents": self.doc_ids, "cache_hit": self.start["cache_hit"], "ttft_s": self.ttft}
        return completion(self.req, self.rid, self.model, self.text.text, finish, self.usage(), extra)


class _Inbox:
    """A job's events, pushed from the batcher's thread, read in this event loop: a push wakes the
    loop only when it is not already due to wake, and a read takes everything that has arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items, self.lock = loop, collections.deque(), threading.Lock()
        self.ready = asyncio.Event()
        self.waking = False

    def push(self, kind: str, value) -> None:  # the batcher's thread
        with self.lock:
            self.items.append((kind, value))
            if self.waking:
                return
            self.waking = True
        self.loop.call_soon_threadsafe(self.ready.set)

    async def get_all(self) -> list:
        while True:
            with self.lock:
                if self.items:
                    items, self.items = list(self.items), collections.deque()
                    return items
                self.waking = False
                self.ready.clear()
            await self.ready.wait()

    async def get(self):
        """The next event alone."""
        while True:
            with self.lock:
                if self.items:
                    return self.items.popleft()
                self.waking = False
                self.ready.clear()
            await self.ready.wait()

    def unget(self, item) -> None:
        with self.lock:
            self.items.appendleft(item)


def _check_length(lm, states: list, n_prompt: int, max_tokens: int) -> None:
    """400 unless the answer's positions stay within the model's (windows.check_answer_room)."""
    try:
        check_answer_room(lm.config, states, n_prompt, max_tokens, lm.parts.max_positions)
    except PositionsError as err:
        raise ApiError(400, str(err), param="max_tokens") from None


def _answer_error(err: BaseException, doc_ids: list[str]) -> ApiError:
    """The HTTP error for what the batcher raised while answering."""
    from snapshots import CorruptSnapshotError, DocumentNotFoundError, FingerprintMismatchError

    if isinstance(err, PositionsError):  # the memory grew between the check above and the load
        return ApiError(400, str(err), param="max_tokens")
    if isinstance(err, DocumentNotFoundError):
        return ApiError(404, f"a document of {doc_ids} is no longer stored ({err})", param="documents")
    if isinstance(err, CorruptSnapshotError):
        return ApiError(500, f"a snapshot of {doc_ids} failed its checks ({err}); ingest the document again")
    if isinstance(err, FingerprintMismatchError):
        return ApiError(500, f"the snapshots of {doc_ids} were made by another model or dtype than this server's"
                        f" ({err}); serve the model they were ingested with (--model, --dtype)")  # fmt: skip
    logger.exception("answer failed", exc_info=err)
    return ApiError(500, f"the answer failed: {type(err).__name__}: {err}")


def _head(status: int, replica: str, body: dict | None = None, headers: dict | None = None) -> dict:
    """The first item of every `BeaconServer.answer` stream: the HTTP status, the whole JSON body
    (an error, or a non-streamed answer; None: server-sent events follow), extra headers, and the
    replica that answered."""
    return {"status": status, "body": body, "headers": headers or {}, "replica": replica}


@serve.deployment(name=DEPLOYMENT)
class BeaconServer:
    """One model replica: model, store, batcher, metrics. Called by the ingress, never over HTTP."""

    def __init__(self, settings: dict):
        import beacon
        from beacon_actors.batcher import Batcher
        from beacon_actors.device import resolve_device
        from beacon_actors.text import load_tokenizer, stop_ids
        from snapshots import SnapshotStore

        from .defaults import absolute, resolve_model

        config = ServeConfig.from_dict(settings)
        # paths as this replica sees them; the name stays the folder's
        self.config = config = ServeConfig.from_dict(config.to_dict() | {
            "model": resolve_model(config.model), "db": absolute(config.db),
            "tokenizer": None if config.tokenizer is None else resolve_model(config.tokenizer),
            "served_model_name": config.model_name,
        })  # fmt: skip
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.lm = beacon.load(config.model, device=resolve_device(config.device), dtype=config.dtype,
                              tokenizer=config.tokenizer is None)  # fmt: skip
        if config.tokenizer is not None:
            self.lm.tokenizer = load_tokenizer(config.tokenizer)
        if self.lm.tokenizer is None:
            raise ValueError(f"model {config.model!r} has no tokenizer files: give the tokenizer folder (--tokenizer)")
        self.store = SnapshotStore(config.db)
        self.stops = stop_ids(self.lm)
        self.batcher = Batcher(self.lm, self.store, stops=self.stops, cache_bytes=config.cache_bytes,
                               host_cache_bytes=config.host_cache_bytes, max_batch=config.max_batch,
                               max_running=config.max_running, max_waiting=config.max_waiting,
                               lanes=config.lanes, lane_slots=config.lane_slots)  # fmt: skip
        self.started = time.time()
        self._metrics()

    def _metrics(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.m_requests = requests_counter()
        self.m_ttft = Histogram("beacon_ttft_seconds", description="Seconds from a request's arrival to its first"
                                " token.", boundaries=TTFT_BOUNDS, tag_keys=("cache",))  # fmt: skip
        self.m_tokens = Counter("beacon_generated_tokens", description="Answer tokens generated.")
        self.m_prompt = Counter("beacon_prompt_tokens", description="Prompt tokens read (memories not counted).")
        self.m_cache = Counter("beacon_memory_cache", description="Memory lookups of started answers, by result.",
                               tag_keys=("result",))  # fmt: skip

    def __del__(self):
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()

    def check_health(self) -> None:
        """Ray Serve's periodic replica check: a replica whose batcher stopped is replaced."""
        if not self.batcher.alive:
            raise RuntimeError("this replica's batcher has stopped (see its log): it answers nothing")

    async def health(self, *, skip_replicas: Sequence[str] = ()) -> dict:
        """This replica's state. `skip_replicas` is read by the router, not here
        (serve_router.SKIP_KWARG: /health?replicas=all asks every replica in turn)."""
        b = self.batcher
        return {"status": "ok", "model": self.config.model_name, "replica": self.replica,
                "running_or_waiting": b.held(), "waiting": b.waiting(), "cached_memories": len(b.cache),
                "cache_bytes": b.cache.nbytes, "host_cached_memories": b.cache.host_count,
                "host_cache_bytes": b.cache.host_nbytes, "batcher": dict(b.stats), "memory": self._memory(),
                "uptime_s": round(time.time() - self.started, 3)}  # fmt: skip

    def _memory(self) -> dict:
        """The process's memory, what a soak test compares before and after its load (bench/serve_load.py
        --soak). Cheap: /proc and the CUDA caching allocator's counters, no device sync."""
        import psutil  # a dependency of ray[default]
        import torch

        device = self.lm.device
        cuda = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        return {"rss_bytes": psutil.Process().memory_info().rss, "cuda_allocated_bytes": cuda,
                "decode_buffer_sets": len(self.lm.decode_buffers),
                "lanes_busy": lanes.busy if (lanes := self.lm.decode_buffers.lanes) is not None else None}  # fmt: skip

    # ---- answers -------------------------------------------------------------------------------
    async def answer(self, req: Request, *, documents: list[str], arrived: float) -> AsyncIterator[dict | str]:
        """The answer to the checked request `req` from `documents`: first a
        `_head`, then, for a stream that started, its server-sent events. `documents` is a keyword
        (serve_router.ROUTE_KWARG) because the router reads it there; `arrived` is the wall-clock
        time the ingress received the request (TTFT counts from it)."""
        from beacon_actors.batcher import Job, Overloaded, Sampling

        route = "chat" if req.chat else "completions"
        job = None
        try:
            prompt = self._prompt_ids(req)
            await asyncio.to_thread(self._check_documents, documents, len(prompt), req.max_tokens)
            events = _Inbox(asyncio.get_running_loop())
            sampling = Sampling(req.max_tokens, req.temperature, req.top_p, req.seed)
            job = Job(tuple(documents), prompt, sampling, events.push)
            try:
                self.batcher.submit(job)
            except Overloaded as err:
                job = None
                retry = {"Retry-After": str(max(1, round(self.config.retry_after_s)))}
                raise ApiError(429, str(err), headers=retry) from err
            start = await events.get()
            if start[0] == "error":
                raise _answer_error(start[1], documents)
            first = await events.get()  # the first token (or an error)
            if first[0] == "error":
                raise _answer_error(first[1], documents)
            events.unget(first)
            ttft = max(0.0, time.time() - arrived)  # another process's clock: never below 0
            tier = {"device": "hit", "host": "host", "store": "miss"}[start[1]["cache"]]
            self.m_ttft.observe(ttft, tags={"cache": tier})
            self.m_cache.inc(tags={"result": tier})
            self.m_prompt.inc(len(prompt))
        except ApiError as err:
            if job is not None:
                job.cancel()
            yield self._error(route, err)
            return
        except BaseException:  # the request was cancelled (the client went away), or a bug: free the slot
            if job is not None:
                job.cancel()
            raise
        context = _Answer(req, new_id(req.chat), self.config.model_name, documents, len(prompt), start[1], ttft,
                          TextStream(self.lm.tokenizer, req.stop))  # fmt: skip
        self.m_requests.inc(tags={"route": route, "status": "200"})
        if req.stream:
            yield _head(200, self.replica)
            async for event in self._stream(context, job, events):
                yield event
            return
        try:
            async for _ in self._deltas(context, job, events):
                pass  # the text gathers in context.text
        except ApiError as err:  # a step failed half-way
            yield self._error(route, err)
            return
        finally:
            job.cancel()  # done already, or the client went away: either way nothing more is generated
        yield _head(200, self.replica, context.whole(context.finish))

    async def _stream(self, context: _Answer, job, events: _Inbox):
        """Server-sent events: a role chunk, text chunks as tokens come, a finish chunk, usage if asked, [DONE]."""
        req, rid, model = context.req, context.rid, context.model
        try:
            yield chunk(req, rid, model, "", None, first=True)
            async for delta in self._deltas(context, job, events):
                yield chunk(req, rid, model, delta, None)
            yield chunk(req, rid, model, None, context.finish)
            if req.include_usage:
                yield chunk(req, rid, model, None, None, usage=context.usage())
            yield DONE
        except ApiError as err:  # the answer failed half-way (the status is 200 by now)
            yield error_event(err)
            yield DONE
        finally:
            job.cancel()  # the client disconnected (GeneratorExit / CancelledError) or the answer ended: free the slot

    async def _deltas(self, context: _Answer, job, events: _Inbox):
        """Text deltas of the answer as its tokens come (stop strings applied); sets context.finish.
        Tokens that arrived together go out as one delta: a client (or a busy event loop) that falls
        behind gets fewer, longer chunks instead of a growing backlog of events."""
        text = context.text
        while context.finish is None:
            delta = []
            for kind, value in await events.get_all():
                if kind == "token":
                    context.n_tokens += 1
                    delta.append("" if value in self.stops else text.add(value))
                    if text.stopped:
                        job.cancel()
                        context.finish = "stop"
                        break
                elif kind == "end":
                    context.finish = "length" if value == "length" else "stop"
                    break
                elif kind == "error":
                    raise _answer_error(value, context.doc_ids)
            if delta:  # the end can come alone (pushed after the last token, read apart): Ray's inc refuses 0
                self.m_tokens.inc(len(delta))
            delta = "".join(delta) + (text.finish() if context.finish is not None else "")
            if delta:
                yield delta

    # ---- pieces --------------------------------------------------------------------------------
    def _prompt_ids(self, req) -> list[int]:
        from beacon_actors.text import PLAIN_QUESTION, question_text

        tok = self.lm.tokenizer
        if not req.chat:
            text = req.prompt
        elif len(req.messages) == 1 and req.messages[0]["role"] == "user":
            text = question_text(tok, req.messages[0]["content"])  # exactly what `beacon ask` reads
        elif getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        else:
            users = [m["content"] for m in req.messages if m["role"] == "user"]
            text = "".join(f"\n\n{m['role'].title()}: {m['content']}" for m in req.messages if m["role"] != "user")
            text += PLAIN_QUESTION.format(question=users[-1] if users else "")
        ids = list(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
        if not ids:
            raise ApiError(400, "the prompt has no tokens", param="messages" if req.chat else "prompt")
        return ids

    def _check_documents(self, doc_ids: list[str], n_prompt: int, max_tokens: int) -> None:
        """Each document checked to be stored; the length checked against the model."""
        from snapshots import DocumentNotFoundError

        infos = []
        for d in doc_ids:
            try:
                infos.append(self.store.show(d))  # a lookup in the documents table, never a path
            except DocumentNotFoundError:
                raise ApiError(404, f"no document {d!r} is stored (GET /v1/documents lists them)",
                               param="documents") from None  # fmt: skip
            except ValueError as err:
                raise ApiError(400, f"document id {d!r}: {err}", param="documents") from None
        _check_length(self.lm, [i.state for i in infos], n_prompt, max_tokens)

    def _error(self, route: str, err: ApiError) -> dict:
        self.m_requests.inc(tags={"route": route, "status": str(err.status)})
        return _head(err.status, self.replica, err.body(), err.headers)


# ---- building and running ------------------------------------------------------------------------
def build(args: dict):
    """The Serve application for `args` (ServeConfig fields): what serve.yaml's import_path names."""
    config = ServeConfig.from_dict(dict(args))
    server = BeaconServer.options(**deployment_options(config)).bind(config.to_dict())
    return BeaconIngress.options(**ingress_options(config)).bind(server, config.to_dict())


def run(config: ServeConfig, *, ray_options=None, ready: threading.Event | None = None) -> None:
    """Start (or join) Ray, run the application on config.host:config.port, block until SIGINT/SIGTERM,
    then take the application down (and Serve with it when Ray was started here)."""
    import ray

    from .catalog import check_store_path
    from .cluster import ensure_ray
    from .defaults import absolute, resolve_model

    settings = ServeConfig.from_dict(config.to_dict() | {
        "model": resolve_model(config.model), "db": absolute(config.db),
        "tokenizer": None if config.tokenizer is None else resolve_model(config.tokenizer),
        "served_model_name": config.model_name,
    })  # fmt: skip
    check_store_path(settings.db)  # a --db that is a file, or a bucket out of reach: one line, before Ray starts
    address = (ray_options.address if ray_options else None) or os.environ.get("RAY_ADDRESS")
    embedded = not ray.is_initialized() and not address  # Ray starts here, and stops with the command
    ensure_ray(ray_options)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build(settings.to_dict()), name=APP_NAME, route_prefix="/")
        print(f"beacon serve: http://{settings.host}:{settings.port}/v1 (model {settings.model_name}, store"
              f" {settings.db}); Ctrl-C stops", flush=True)  # fmt: skip
        ports = sorted({n["MetricsExportPort"] for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")})
        if ports:
            print(f"beacon serve: Prometheus metrics of this node at http://127.0.0.1:{ports[0]}/metrics", flush=True)
        if ready is not None:
            ready.set()
        stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            serve.delete(APP_NAME)
            if embedded:
                serve.shutdown()
        finally:
            if embedded:
                ray.shutdown()
