"""OpenAI's HTTP protocol for `beacon serve`: request bodies checked into a `Request`, answers and
stream chunks in OpenAI's shapes, error bodies. No Ray, no model: plain data in, plain data out.

Beyond OpenAI's fields a request names the memory to answer from: `"documents": ["doc-id", ...]`
(read in order, the last closest to the prompt) or `"search": {"top_k": K, "query"?: TEXT}` (the
store's full-text search over the last user message, or `query`). Every problem with a body is an
`ApiError` whose message names the field.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

MAX_STOPS = 4  # as OpenAI
MAX_TOP_K = 16  # documents one search may pick
ROLES = ("system", "user", "assistant", "developer")


class ApiError(Exception):
    """An error answered as OpenAI's error body with this HTTP status (`param`: the field at fault)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str | None = None,
                 headers: dict | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             429: "rate_limit_error"}.get(status, "server_error")  # fmt: skip
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class Request:
    """A checked completion request."""

    chat: bool  # /v1/chat/completions (messages) or /v1/completions (prompt)
    messages: list[dict] | None  # chat: [{"role", "content" (str)}]
    prompt: str | None  # completions: text read right after the memory
    documents: list[str] | None  # given ids, in order
    top_k: int | None  # or: this many search hits
    query: str | None  # the search text (default: the last user message / the prompt)
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    model: str | None = None

    @property
    def search_text(self) -> str:
        if self.query is not None:
            return self.query
        if self.prompt is not None:
            return self.prompt
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else self.messages[-1]["content"]


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body (400 if it is not one)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err}): send a JSON object") from err
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def parse_request(body: dict, *, chat: bool, default_max_tokens: int, max_tokens_limit: int) -> Request:
    """Check `body` (a parsed JSON object) field by field; raises ApiError(400) naming the field."""
    messages = prompt = None
    if chat:
        messages = _messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string", param="prompt")
    documents, top_k, query = _memory_fields(body)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens")
    name = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = default_max_tokens if max_tokens is None else _int(max_tokens, name, 1, max_tokens_limit)
    n = body.get("n")
    if n is not None and _int(n, "n", 1, 1_000_000) != 1:
        raise ApiError(400, "'n' must be 1: one choice per request", param="n")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be {\"include_usage\": true|false}", param="stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, got {type(model).__name__}", param="model")
    seed = body.get("seed")
    return Request(
        chat=chat, messages=messages, prompt=prompt, documents=documents, top_k=top_k, query=query,
        max_tokens=max_tokens,
        temperature=_float(body.get("temperature", 0.0), "temperature", 0.0, 2.0),
        top_p=_float(body.get("top_p", 1.0), "top_p", 0.0, 1.0, low_open=True),
        seed=None if seed is None else _int(seed, "seed", -(2**63), 2**63 - 1),
        stop=stop, stream=stream, include_usage=bool(options.get("include_usage", False)), model=model,
    )  # fmt: skip


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, '\'messages\' must be a non-empty list of {"role", "content"} objects', param="messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"'{where}' must be an object with 'role' and 'content'", param=where)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ApiError(400, f"'{where}.role' must be one of {list(ROLES)}, got {role!r}", param=f"{where}.role")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):  # fmt: skip
                raise ApiError(400, f"'{where}.content' parts must be text parts", param=f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"'{where}.content' must be a string", param=f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _memory_fields(body: dict) -> tuple[list[str] | None, int | None, str | None]:
    documents, search = body.get("documents"), body.get("search")
    if documents is not None and search is not None:
        raise ApiError(400, "give 'documents' or 'search', not both", param="documents")
    if documents is not None:
        if not isinstance(documents, list) or not documents or not all(isinstance(d, str) and d for d in documents):
            raise ApiError(400, "'documents' must be a non-empty list of document ids (strings)", param="documents")
        return documents, None, None
    if search is None:
        raise ApiError(400, "say what to answer from: 'documents': [ids] or 'search': {\"top_k\": K}",
                       param="documents")  # fmt: skip
    if not isinstance(search, dict):
        raise ApiError(400, "'search' must be an object, e.g. {\"top_k\": 3}", param="search")
    top_k = _int(search.get("top_k", 1), "search.top_k", 1, MAX_TOP_K)
    query = search.get("query")
    if query is not None and (not isinstance(query, str) or not query.strip()):
        raise ApiError(400, "'search.query' must be a non-empty string", param="search.query")
    return None, top_k, query


def _int(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, got {json.dumps(value)}", param=name)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be in [{low}, {high}], got {value}", param=name)
    return value


def _float(value, name: str, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"'{name}' must be a number, got {json.dumps(value)}", param=name)
    if not (low < value if low_open else low <= value) or value > high:
        raise ApiError(400, f"'{name}' must be in {'(' if low_open else '['}{low}, {high}], got {value}", param=name)
    return float(value)


# ---- answers ------------------------------------------------------------------------------------
def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def completion(req: Request, rid: str, model: str, text: str, finish: str, usage: dict, extra: dict) -> dict:
    """The whole answer (stream: false)."""
    if req.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {"id": rid, "object": "chat.completion" if req.chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage, **extra}  # fmt: skip


def chunk(req: Request, rid: str, model: str, text: str | None, finish: str | None, *, first: bool = False,
          usage: dict | None = None) -> str:  # fmt: skip
    """One server-sent event of a stream: `data: {chunk}\\n\\n` (choices empty for the usage chunk)."""
    if usage is not None:
        choices = []
    elif req.chat:
        delta = ({"role": "assistant"} if first else {}) | ({} if text is None else {"content": text})
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
    else:
        choices = [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]
    body = {"id": rid, "object": "chat.completion.chunk" if req.chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices}  # fmt: skip
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


DONE = "data: [DONE]\n\n"


def error_event(err: ApiError) -> str:
    """An error after a stream has begun (the status is already 200): OpenAI's error body as an event."""
    return f"data: {json.dumps(err.body())}\n\n"


class TextStream:
    """Token ids in, text deltas out, with OpenAI's `stop` strings: the text up to the first stop
    string is all that is ever sent, so a delta holds back a tail that could begin one (and a
    trailing partial UTF-8 character)."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.tokens: list[int] = []
        self.sent = 0
        self.text = ""
        self.stopped = False  # a stop string was seen: the answer ends here

    def add(self, token: int) -> str:
        """Text that can be sent now ("" if none)."""
        if self.stopped:
            return ""
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.text = True, self.text[:cut]
            return self._flush(len(self.text))
        safe = len(self.text) - self.hold
        while safe > self.sent and self.text[safe - 1] == "\ufffd":
            safe -= 1
        return self._flush(safe)

    def finish(self) -> str:
        """What is left to send once the answer has ended."""
        return self._flush(len(self.text))

    def _flush(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : upto], upto
        return out
