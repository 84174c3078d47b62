"""The HTTP side of `beacon serve`: the `BeaconIngress` deployment (FastAPI, `@serve.ingress`).

It holds no model. Per request: the API key, the body checked (pipelines/openai_api.py: a bad field
is a 400 naming it), the served model's name, the store's search when the request asks for one;
then `BeaconServer.answer` (pipelines/serve.py) is called by handle with the document ids as a
keyword, which Serve's router for BeaconServer (pipelines/serve_router.py) routes on. The replica's
first item says the status (`_head` there); the ingress answers with it, adds `x-beacon-replica`
(which replica answered), and relays a stream's events. It also serves GET /v1/models,
/v1/documents (the store's table) and /health (one replica's state, or every one's).

    POST /v1/chat/completions, POST /v1/completions   answers; `documents` or `search` pick the memory
    GET  /v1/models, GET /v1/documents (paged), GET /health

(No `from __future__ import annotations` here: FastAPI reads the routes' `Request` annotations at
run time, through Serve's wrapping of the class.)
"""

import asyncio
import hmac
import logging
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from .openai_api import DONE, ApiError, error_event, parse_body, parse_request
from .serve_config import INGRESS, ServeConfig
from .serve_router import ROUTE_KWARG, SKIP_KWARG

logger = logging.getLogger(__name__)
app = FastAPI(title="beacon", docs_url=None, redoc_url=None, openapi_url=None)
REPLICA_HEADER = "x-beacon-replica"  # which BeaconServer replica answered
HEALTH_TIMEOUT_S = 10.0  # /health waits this long for a replica, then answers 503


def requests_counter():
    """The `beacon_requests` counter (route, status): the ingress and the replicas each count the
    statuses they decide, so a request is counted once."""
    from ray.serve.metrics import Counter

    return Counter("beacon_requests", description="Requests by route and HTTP status.", tag_keys=("route", "status"))


def _authorize(request: Request, api_key: bytes | None) -> None:
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), api_key):  # constant time in the key's contents
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' (the key the server was"
                       " started with, --api-key or BEACON_API_KEY)", kind="authentication_error")  # fmt: skip


@serve.deployment(name=INGRESS)
@serve.ingress(app)
class BeaconIngress:
    """The HTTP side: API key, request checks, search, the plain routes; answers come from a
    BeaconServer replica chosen by the request's documents (pipelines/serve_router.py)."""

    def __init__(self, server: DeploymentHandle, settings: dict):
        from snapshots import SnapshotStore
        from snapshots.search import SearchIndex

        from .defaults import absolute

        self.server = server  # BeaconServer's
        self.answers = server.options(stream=True)
        self.config = config = ServeConfig.from_dict(settings)
        key = config.api_key or os.environ.get("BEACON_API_KEY") or None
        self.api_key = None if key is None else key.encode()
        self.store = SnapshotStore(absolute(config.db))
        self.search = SearchIndex(absolute(config.db))
        self._known: set[str] = set()  # stored ids seen so far (a document once stored stays resolvable)
        self.started = time.time()
        self.m_requests = requests_counter()

    # ---- plain routes --------------------------------------------------------------------------
    @app.get("/health")
    async def health(self, request: Request):
        """One BeaconServer replica's state (the least loaded; `replica` says which), or with
        `?replicas=all` every replica's (`replicas`, a list); 503 if none answers."""
        try:
            if request.query_params.get("replicas") == "all":
                replicas = await asyncio.wait_for(self._every_health(), HEALTH_TIMEOUT_S)
                return {"status": "ok", "replicas": replicas}
            return await asyncio.wait_for(self.server.health.remote(), HEALTH_TIMEOUT_S)
        except Exception as err:  # no replica running, or none answered in time
            return JSONResponse({"status": "unavailable", "error": f"{type(err).__name__}: {err}"}, status_code=503)

    async def _every_health(self) -> list[dict]:
        """Every replica's health, asked one after another: each call is routed to a replica not heard
        yet (serve_router.SKIP_KWARG) while one has room, so the first repeat means all have answered.
        A replica with every Serve slot taken is missed (the router skips full replicas)."""
        heard: dict[str, dict] = {}
        while True:
            health = await self.server.health.remote(**{SKIP_KWARG: sorted(heard)})
            if health["replica"] in heard:
                return list(heard.values())
            heard[health["replica"]] = health

    @app.get("/v1/models")
    async def models(self, request: Request):
        def answer():
            return {"object": "list", "data": [{"id": self.config.model_name, "object": "model",
                                                "created": int(self.started), "owned_by": "beacon"}]}  # fmt: skip

        return await self._route("models", request, answer)

    @app.get("/v1/documents")
    async def documents(self, request: Request):
        def answer():
            q = request.query_params
            try:
                limit = int(q.get("limit", "20"))
            except ValueError:
                raise ApiError(400, f"'limit' must be an integer, got {q.get('limit')!r}", param="limit") from None
            if not 1 <= limit <= 1000:
                raise ApiError(400, f"'limit' must be in [1, 1000], got {limit}", param="limit")
            after = q.get("after")
            docs = self.store.list()  # sorted by doc_id
            if after is not None:
                docs = [d for d in docs if d.doc_id > after]
            page = docs[:limit]
            data = [{"id": d.doc_id, "object": "document", "title": d.title, "tokens": d.n_tokens,
                     "stored_bytes": d.stored_bytes, "updated_at": d.updated_at.isoformat()} for d in page]  # fmt: skip
            ids = [d["id"] for d in data] or [None]
            ends = {"first_id": ids[0], "last_id": ids[-1]}
            return {"object": "list", "data": data, "has_more": len(docs) > limit, **ends}

        return await self._route("documents", request, answer, threaded=True)

    async def _route(self, name: str, request: Request, answer, *, threaded: bool = False):
        try:
            _authorize(request, self.api_key)
            body = await asyncio.to_thread(answer) if threaded else answer()
            self.m_requests.inc(tags={"route": name, "status": "200"})
            return body
        except ApiError as err:
            return self._error(name, err)

    # ---- answers -------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, *, chat: bool):
        from ray.serve.exceptions import BackPressureError

        route, arrived = "chat" if chat else "completions", time.time()
        try:
            _authorize(request, self.api_key)
            req = parse_request(parse_body(await request.body()), chat=chat, default_max_tokens=self.config.max_tokens,
                                max_tokens_limit=self.config.max_tokens_limit)  # fmt: skip
            if req.model is not None and req.model != self.config.model_name:
                raise ApiError(404, f"model {req.model!r} is not served here; this server serves"
                               f" {self.config.model_name!r} (GET /v1/models)", param="model")  # fmt: skip
            # the search runs here, before routing: the request goes to the replica of the documents it picked
            if req.documents is not None:  # the ids a person typed, resolved as `beacon ask` resolves them
                documents = await asyncio.to_thread(self._resolve, req.documents)
            else:
                documents = await asyncio.to_thread(self._search, req)
        except ApiError as err:
            return self._error(route, err)
        # the documents go as the keyword the router reads (serve_router.ROUTE_KWARG)
        answer = self.answers.answer.remote(req, **{ROUTE_KWARG: documents}, arrived=arrived)
        try:
            head = await answer.__anext__()
        except BackPressureError as err:  # every replica full and max_queued_requests waiting for one
            retry = {"Retry-After": str(max(1, round(self.config.retry_after_s)))}
            return self._error(route, ApiError(429, f"the server is busy ({err}); retry later", headers=retry))
        except Exception as err:  # the replica failed outside the answer (it died, say)
            logger.exception("answer call failed")
            return self._error(route, ApiError(500, f"the answer failed: {type(err).__name__}: {err}"))
        except BaseException:  # the client went away: the replica's answer stops too
            answer.cancel()
            raise
        headers = head["headers"] | {REPLICA_HEADER: head["replica"]}
        if head["body"] is not None:
            return JSONResponse(head["body"], status_code=head["status"], headers=headers)
        return StreamingResponse(self._relay(answer), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"} | headers)  # fmt: skip

    async def _relay(self, answer):
        """The replica's server-sent events, as they come."""
        try:
            async for event in answer:
                yield event
        except Exception as err:  # the replica died half-way (the status is 200 by now)
            logger.exception("answer stream failed")
            yield error_event(ApiError(500, f"the answer failed: {type(err).__name__}: {err}"))
            yield DONE
        finally:
            answer.cancel()  # the client disconnected, or the stream ended: the replica frees the slot

    def _resolve(self, given: list[str]) -> list[str]:
        """The stored ids `given` names (pipelines.lookup: the id, without its extension, or an
        unambiguous stem), so 'lighthouse.md' and 'lighthouse' are one memory and one replica; 404
        naming the closest ids otherwise. Exact ids cost no store read."""
        from snapshots import DocumentNotFoundError

        from .lookup import resolve_ids

        if all(d in self._known for d in given):
            return list(given)
        self._known = set(self.store.ids())  # new documents may have been ingested since
        try:
            return resolve_ids(given, self._known)
        except DocumentNotFoundError as err:
            raise ApiError(404, f"{err} (GET /v1/documents lists them)", param="documents") from None

    def _search(self, req) -> list[str]:
        """The documents the store's search picks for `req`, best match last (read closest to the prompt)."""
        hits = self.search.search(req.search_text, k=req.top_k)
        if not hits:
            raise ApiError(404, "the store's search found no document for this request (is the store ingested,"
                           " with its search table?); give 'documents'", param="search")  # fmt: skip
        return [d for d, _ in reversed(hits)]

    def _error(self, route: str, err: ApiError) -> JSONResponse:
        self.m_requests.inc(tags={"route": route, "status": str(err.status)})
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
