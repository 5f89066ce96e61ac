"""HTTP serving: a FastAPI app over one Predictor (one base, many adapters), micro-batched, with a web page.

Requests wait a few milliseconds in a queue; the ones that arrive together are merged per adapter into one
`Predictor.predict` call (which sorts by length and pads per batch). All model work (prediction, loading and
removing adapters) runs on one worker thread, so the event loop stays free for `/healthz` and new requests,
and a hot swap never interleaves with a batch: every answer names the adapter revision that produced it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path, PurePath
from typing import Annotated, Any
from urllib.parse import urlsplit

from .errors import UserError

try:
    from fastapi import Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi_offline import FastAPIOffline
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException
    from starlette.routing import Match
except ImportError as e:  # the serve extra is optional
    raise UserError("serving needs the serve extra: pip install 'weibo-sentiment[serve]'") from e

logger = logging.getLogger(__name__)

API_KEY_ENV = "WEIBO_SENTIMENT_API_KEY"
MAX_TEXTS = 256
MAX_CHARS = 2000
BATCH_WAIT_MS = 5.0
MAX_BATCH_TEXTS = 512
# Texts waiting for the model, beyond which requests get 503 + Retry-After instead of waiting in an ever longer
# queue. 2,048 is 8 full requests (--max-texts 256): about 2.6 s of work for the tiny model on 2 CPU cores
# (`make loadtest`: 776 texts/s); the uer model on 2 CPU cores predicts 17 texts/s (README, Performance):
# 2 minutes of work, so lower --max-queue there (with --max-texts).
MAX_QUEUE = 2048
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # URL-safe; PEFT holds adapters under keys of its own
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Idle keep-alive connections are closed after this. It must outlast the clients' own expiry (httpx: 5 s, the
# same as uvicorn's default, so a request sent on a pooled connection could meet the server's close: a load
# test saw one such error in 2,000 requests) and a proxy's idle timeout (often 60 s).
KEEP_ALIVE_S = 65


def body_too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


def default_max_body_bytes(max_texts: int, max_chars: int) -> int:
    # Room for the largest valid request even when every character is sent as a 6-byte `\uXXXX` escape.
    return 6 * max_texts * max_chars + 64 * 1024


class ApiError(Exception):
    """An error answered as `{"error": message}` with an HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


# ---- request and response bodies (the schema at /docs) ---------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The schema states the limits the handlers enforce (with their own messages: the schema is documentation), so
# that a client, or a fuzzer, can tell valid requests from invalid ones; create_app adds the per-server maxima.
Text = Annotated[str, Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})]  # not blank


class PredictRequest(Strict):
    texts: list[Text] = Field(description="posts to classify", json_schema_extra={"minItems": 1})
    adapter: str | None = Field(None, description="adapter name (default: the server's default adapter)")


class PredictionOut(BaseModel):
    label: int
    label_name: str
    confidence: float
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    adapter: str
    revision: int = Field(description="times this name has been loaded; a hot swap adds one")
    predictions: list[PredictionOut]


class AdapterOut(BaseModel):
    name: str
    label_names: list[str]
    revision: int
    default: bool


class AdaptersResponse(BaseModel):
    base_model: str
    default: str | None
    adapters: list[AdapterOut]


class LoadRequest(Strict):
    name: str = Field(description="adapter name; an existing one is replaced (hot swap)",
                      json_schema_extra={"pattern": f"^{ADAPTER_NAME.pattern}$"})
    path: str = Field(description="adapter directory, relative to the server's --adapter-root",
                      json_schema_extra={"pattern": r"^[^\\\x00]+$"})


class DefaultRequest(Strict):
    adapter: str = Field(description="the adapter to use when a request names none")


class ErrorOut(BaseModel):
    error: str


class RemovedOut(BaseModel):
    removed: str
    default: str = Field(description="the default adapter afterwards")


class HealthOut(BaseModel):
    status: str
    adapters: int
    pending: int = Field(description="requests waiting for the model")
    pending_texts: int = Field(description="their texts; beyond max_queue new requests get 503")
    max_queue: int
    dropped_requests: int = Field(description="requests dropped unanswered because their client went away")
    dropped_texts: int
    model_calls: int


# ---- micro-batching ------------------------------------------------------------------------------------
@dataclass
class _Job:
    adapter: str
    texts: list[str]
    future: asyncio.Future = field(repr=False)
    queued: bool = True  # still counted in the queue (not yet taken by the loop, nor dropped)
    dropped: bool = False  # counted as abandoned
    started: bool = False  # handed to the model (a cancel from then on saves nothing)


class MicroBatcher:
    """Gathers concurrent requests for `wait_ms` into per-adapter batches run on one model thread.

    At most `max_queue` texts wait; beyond that `submit` refuses with a 503. A job whose future is cancelled
    (its client went away) is dropped before it reaches the model.
    """

    def __init__(self, predictor, *, wait_ms: float = BATCH_WAIT_MS, max_batch_texts: int = MAX_BATCH_TEXTS,
                 batch_size: int = 32, max_queue: int = MAX_QUEUE):
        self.predictor = predictor
        self.wait_s = wait_ms / 1000
        self.max_batch_texts = max_batch_texts
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.revisions = dict.fromkeys(predictor.adapters, 1)
        self._loaded_count = dict(self.revisions)  # never decreases, so a re-added name gets a new revision
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weibo-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0  # model calls made, for /healthz and tests
        self.pending = 0  # requests waiting in the queue
        self.pending_texts = 0  # their texts
        self.dropped_requests = self.dropped_texts = 0  # abandoned by their clients before the model saw them
        self._texts_per_s: float | None = None  # recent model throughput, for Retry-After

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, adapter: str, texts: list[str]) -> asyncio.Future:
        """Queue a request; its future gives (revision, predictions). Cancel the future to drop the work."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if self.pending_texts + len(texts) > self.max_queue:
            retry = self.retry_after(len(texts))
            raise ApiError(503, f"the server is busy: {self.pending_texts} texts are waiting (the limit is "
                                f"{self.max_queue}); retry in {retry} s", {"Retry-After": str(retry)})
        job = _Job(adapter, texts, asyncio.get_running_loop().create_future())
        self.pending += 1
        self.pending_texts += len(texts)
        job.future.add_done_callback(lambda f: self._dequeue(job, dropped=f.cancelled()))
        self._queue.put_nowait(job)
        return job.future

    def retry_after(self, extra: int = 0) -> int:
        """Seconds until the queue has room again, from the recent throughput (1 to 60)."""
        if not self._texts_per_s:
            return 1
        return max(1, min(60, math.ceil((self.pending_texts + extra - self.max_queue / 2) / self._texts_per_s)))

    def _dequeue(self, job: _Job, dropped: bool) -> None:
        if job.queued:
            job.queued = False
            self.pending -= 1
            self.pending_texts -= len(job.texts)
        if dropped and not job.dropped and not job.started:
            job.dropped = True
            self.dropped_requests += 1
            self.dropped_texts += len(job.texts)

    async def predict(self, adapter: str, texts: list[str]) -> tuple[int, list]:
        """(revision of the adapter that answered, predictions in input order)."""
        future = self.submit(adapter, texts)
        try:
            return await future
        finally:
            future.cancel()  # a no-op when answered; else (this caller was cancelled) the job is dropped

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the model thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def add_adapter(self, name: str, path: Path) -> int:
        def load() -> int:
            # Over HTTP there is no --allow-other-base: an adapter of another base is refused, with no hint.
            self.predictor.add_adapter(name, path, override_hint=None)
            self._loaded_count[name] = self._loaded_count.get(name, 0) + 1
            self.revisions[name] = self._loaded_count[name]
            return self.revisions[name]

        return await self.call(load)

    async def remove_adapter(self, name: str, new_default: str | None = None) -> str:
        """Unload `name`, making `new_default` the default first; the default itself needs one. Returns the
        default afterwards."""
        def remove() -> str:
            predictor = self.predictor
            if name not in predictor.adapters:  # removed by a concurrent request
                raise ApiError(404, _unknown(name, predictor))
            if new_default is not None:
                if new_default == name:
                    raise ApiError(409, f"cannot remove {name!r} and keep it the default: name another adapter")
                if new_default not in predictor.adapters:
                    raise ApiError(404, _unknown(new_default, predictor))
            if len(predictor.adapters) == 1:
                raise ApiError(409, f"cannot remove {name!r}: it is the only adapter loaded")
            if new_default is None and predictor.default == name:
                others = ", ".join(a for a in predictor.adapters if a != name)
                raise ApiError(409, f"cannot remove {name!r}: it is the default adapter; name the next default "
                                    f"with ?default=NAME (one of: {others})")
            if new_default is not None:
                predictor.use(new_default)
            predictor.remove_adapter(name)
            self.revisions.pop(name, None)
            return predictor.default

        return await self.call(remove)

    async def _loop(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            if queue.empty() and self.wait_s > 0:
                # An idle server: give concurrent requests a moment to join. Under load the queue already
                # holds what arrived during the previous batch.
                await asyncio.sleep(self.wait_s)
            jobs, count = [first], len(first.texts)
            while count < self.max_batch_texts and not queue.empty():
                job = queue.get_nowait()
                jobs.append(job)
                count += len(job.texts)
            groups: dict[str, list[_Job]] = {}
            for job in jobs:
                self._dequeue(job, dropped=job.future.cancelled())
                if not job.future.done():
                    groups.setdefault(job.adapter, []).append(job)
            for adapter, group in groups.items():
                await self._run_group(adapter, group)

    async def _run_group(self, adapter: str, group: list[_Job]) -> None:
        live = [job for job in group if not job.future.done()]  # clients may have gone while others ran
        for job in group:
            if job.future.cancelled():
                self._dequeue(job, dropped=True)
        if not live:
            return
        group = live
        for job in group:
            job.started = True
        texts = [t for job in group for t in job.texts]
        started = time.perf_counter()
        try:
            revision, preds = await self.call(self._predict, adapter, texts)
        except asyncio.CancelledError:
            raise
        except UserError as e:  # the adapter went away: the same answer for every request
            for job in group:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        except Exception as e:
            if len(group) > 1:  # one request's failure must not fail the others that shared its batch
                for job in group:
                    await self._run_group(adapter, [job])
            elif not group[0].future.done():
                group[0].future.set_exception(e)  # the handler logs it and answers a bare 500
            return
        rate = len(texts) / max(time.perf_counter() - started, 1e-6)
        self._texts_per_s = rate if self._texts_per_s is None else 0.7 * self._texts_per_s + 0.3 * rate
        start = 0
        for job in group:
            if not job.future.done():  # a client that went away meanwhile leaves a cancelled future
                job.future.set_result((revision, preds[start:start + len(job.texts)]))
            start += len(job.texts)

    def _predict(self, adapter: str, texts: list[str]) -> tuple[int, list]:
        self.batches += 1
        preds = self.predictor.predict(texts, adapter=adapter, batch_size=self.batch_size)
        return self.revisions[adapter], preds


def _unknown(name: str, predictor) -> str:
    return f"unknown adapter {name!r} (loaded: {', '.join(predictor.adapters)})"


async def _until_disconnected(receive) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def answer_unless_gone(future: asyncio.Future, receive) -> Any:
    """The future's result; if the client disconnects first (or this handler is cancelled), the future is
    cancelled, so its job is dropped before the model call, and ClientGone is raised."""
    watcher = asyncio.ensure_future(_until_disconnected(receive))
    try:
        await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        future.cancel()  # a no-op once answered
    if future.cancelled():
        raise ClientGone
    return future.result()


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


# ---- request guards: Host header, cross-site requests, API key, content type, body size ----------------
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NOT_JSON = "send a JSON body with 'Content-Type: application/json'"


class _Guard:
    """Pure ASGI middleware: refuses a foreign Host header, a state-changing request from another site, a
    missing API key, a POST that is not JSON and an oversized body, before any of it reaches FastAPI.

    Cross-site requests: a page on any site may make the visitor's browser POST to a loopback server (and with
    --adapter-root swap its adapters), with cached Basic credentials too. A form or a "simple" fetch can only
    send text/plain, form or no Content-Type, so every POST must say application/json (which a browser sends
    cross-origin only after a CORS preflight, and this server approves none): FastAPI before 0.132 parsed a
    body with no Content-Type as JSON. On top, POST/PUT/PATCH/DELETE are refused when the browser says they
    come from elsewhere: an `Origin` other than this server's own (scheme aside: a TLS proxy may sit in front),
    or `Sec-Fetch-Site` other than same-origin or none. same-site is refused too: every port of localhost is
    the same site, so any other local web app would count. Clients that are not browsers send neither header.
    DELETE carries no body, so it needs no Content-Type: browsers always preflight it cross-origin.

    Behind a reverse proxy, pass on the Host header the browser used (nginx: `proxy_set_header Host $host`),
    or the Origin check refuses the server's own page.

    Starlette's own body limit answers in plain text; every error here is JSON like the rest of the API.
    """

    def __init__(self, app, api_key: str | None, allowed_hosts: Sequence[str] | None, max_body_bytes: int,
                 routes: Sequence = ()):
        self.app = app
        self.routes = routes  # to tell a request some route takes from a wrong method or path (405, 404)
        self.api_key = api_key.encode() if api_key else None
        self.allowed_hosts = {h.lower().strip("[]") for h in allowed_hosts} if allowed_hosts else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        if self.allowed_hosts is not None and _host_name(headers.get("host", b"")) not in self.allowed_hosts:
            # A loopback server answers only to its own names: a web page cannot reach it by DNS rebinding.
            return await _send_error(send, 400, "the Host header names another server")
        method = scope["method"]
        if method in STATE_CHANGING:
            problem = _cross_site(headers)
            if problem:
                return await _send_error(send, 403, problem)
        if self.api_key is not None and not self._authorized(headers):
            return await _send_error(send, 401, "this server needs an API key: send 'Authorization: Bearer "
                                                "KEY' or 'X-API-Key: KEY'",
                                     [(b"www-authenticate", b'Basic realm="weibo-sentiment"')])
        if (method in ("POST", "PUT", "PATCH") and not _is_json(headers.get("content-type", b""))
                and any(route.matches(scope)[0] == Match.FULL for route in self.routes)):
            # Only where a route takes the request: a wrong method or path still gets its 405 or 404.
            return await _send_error(send, 415, NOT_JSON)
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return await _send_error(send, 413, body_too_large(self.max_body_bytes))
        received = 0

        async def limited_receive():
            # A chunked body has no length up front: count it as it arrives.
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise HTTPException(413)
            return message

        await self.app(scope, limited_receive, send)

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        offered = headers.get("x-api-key")
        auth = headers.get("authorization", b"")
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() == b"bearer":
            offered = value.strip()
        elif scheme.lower() == b"basic":
            # Browsers ask for a user name and password on a 401; the key goes in as the password.
            try:
                offered = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        return offered is not None and hmac.compare_digest(offered, self.api_key)


def _cross_site(headers: dict[str, bytes]) -> str | None:
    """Why a state-changing request looks like it came from a page on another site, or None."""
    site = headers.get("sec-fetch-site", b"").decode("latin-1").lower()
    if site and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site[:40]}): use this server's own page or a client"
    if "origin" not in headers:
        return None
    origin = headers["origin"].decode("latin-1")
    try:
        parts = urlsplit(origin)
        default = {"http": 80, "https": 443}.get(parts.scheme)
        own = urlsplit(f"{parts.scheme}://{headers.get('host', b'').decode('latin-1')}")
        same = (parts.hostname is not None and parts.hostname == own.hostname
                and (parts.port or default) == (own.port or default))
    except ValueError:  # a malformed port
        same = False
    if not same:
        return f"cross-origin request refused (Origin: {origin[:100]}): use this server's own page or a client"
    return None


def _is_json(content_type: bytes) -> bool:
    return content_type.partition(b";")[0].strip().lower() == b"application/json"


def _host_name(host: bytes) -> str:
    host = host.decode("latin-1").lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def _send_error(send, status: int, message: str, extra_headers: list | None = None) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning printed when `host` is not a loopback address (all interfaces, a LAN address, a name that
    is not localhost), else None."""
    if is_loopback(host):
        return None
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        where, who = f"all interfaces ({host or '*'})", "this machine"
    else:
        where, who = f"{host}, not a loopback address", "that address"
    return (f"warning: listening on {where}: anyone who can reach {who} can use the API"
            + ("" if api_key else "; consider --api-key"))


# ---- adapter paths from requests --------------------------------------------------------------------------
def resolve_adapter_path(root: Path, requested: str) -> Path:
    """An adapter directory named relative to `root`; anything that would lead outside it is refused."""
    if not requested or "\x00" in requested or "\\" in requested:
        raise ApiError(422, "path must be a relative path to an adapter directory inside the adapter root")
    rel = PurePath(requested)
    if rel.is_absolute() or ".." in rel.parts:
        raise ApiError(403, f"path {requested!r} must be relative to the adapter root, without '..'")
    full = (root / rel).resolve()
    if not full.is_relative_to(root):
        raise ApiError(403, f"path {requested!r} leads outside the adapter root")
    if not full.is_dir():
        raise ApiError(404, f"no adapter directory {requested!r} in the adapter root")
    for child in full.iterdir():  # a link inside the folder must not pull files in from elsewhere either
        if not child.resolve().is_relative_to(root):
            raise ApiError(403, f"path {requested!r} holds a link that leads outside the adapter root")
    if not (full / "adapter_config.json").is_file():  # e.g. "." (the root itself): a folder, but no adapter
        raise ApiError(404, f"no adapter directory {requested!r} in the adapter root")
    return full


# ---- the app ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AppSettings:
    """What the app enforces and how it batches; `create_app` and `serve` take these as keyword arguments."""

    api_key: str | None = None  # required as a bearer token (or X-API-Key) on /v1 when set
    adapter_root: str | Path | None = None  # enables loading/unloading adapters at runtime from this folder
    max_texts: int = MAX_TEXTS  # per request
    max_chars: int = MAX_CHARS  # per text
    max_body_bytes: int | None = None  # default: enough for max_texts x max_chars
    batch_wait_ms: float = BATCH_WAIT_MS  # how long the micro-batcher waits for more requests
    batch_size: int = 32  # texts per model call
    max_queue: int = MAX_QUEUE  # texts waiting for the model; beyond it requests get 503 + Retry-After
    allowed_hosts: Sequence[str] | None = None  # Host header values accepted (None: any)


def create_app(predictor, settings: AppSettings | None = None, **options):
    """The FastAPI app serving `predictor` (anything with Predictor's interface); `options` override fields of
    `settings` (see AppSettings)."""
    settings = replace(settings or AppSettings(), **options)
    api_key, adapter_root, max_texts, max_chars = (settings.api_key, settings.adapter_root, settings.max_texts,
                                                   settings.max_chars)
    root = None
    if adapter_root is not None:
        if not hasattr(predictor, "add_adapter"):
            raise UserError("--adapter-root needs --backend torch: an ONNX export holds one merged adapter")
        root = Path(adapter_root).resolve()
        if not root.is_dir():
            raise UserError(f"--adapter-root {adapter_root}: no such directory")
    if settings.max_queue < max_texts:
        raise UserError(f"--max-queue ({settings.max_queue}) must be at least --max-texts ({max_texts}): "
                        f"a full request must fit in the queue")
    max_body_bytes = settings.max_body_bytes
    if max_body_bytes is None:
        max_body_bytes = default_max_body_bytes(max_texts, max_chars)
    batcher = MicroBatcher(predictor, wait_ms=settings.batch_wait_ms, batch_size=settings.batch_size,
                           max_batch_texts=max(MAX_BATCH_TEXTS, max_texts), max_queue=settings.max_queue)
    page = resources.files("weibo_sentiment").joinpath("static", "index.html").read_text(encoding="utf-8")

    errors = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 422)}
    busy = {**errors, 503: {"model": ErrorOut, "description": "Too many texts waiting; see Retry-After"}}

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    # /docs and /redoc from assets shipped in fastapi-offline, not a CDN: they work offline.
    app = FastAPIOffline(title="weibo-sentiment", version="1", lifespan=lifespan,
                         description="Chinese Weibo sentiment: one GPT-2 base, many LoRA adapters.")
    app.state.batcher = batcher
    app.state.predictor = predictor

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone):
        return error(499, "the client closed the connection")  # nginx's code; nobody reads it

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return error(422, _hide_root(str(exc), root))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                    405: f"method {request.method} is not allowed on {request.url.path}",
                    413: body_too_large(max_body_bytes)}
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names the methods of the first route on the path; all of them
            allowed = {m for route in app.router.routes if route.matches(request.scope)[0] != Match.NONE
                       for m in getattr(route, "methods", None) or ()}
            headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            problem = first.get("ctx", {}).get("error", "cannot parse")
            return error(400, f"malformed JSON: {problem} at character {first['loc'][-1]}")
        if first["loc"] == ("body",):
            if not _is_json(request.headers.get("content-type", "").encode("latin-1")):
                return error(415, NOT_JSON)
            return error(422, "the request body must be a JSON object")
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"][1:]).lstrip(".")
        return error(422, f"{where}: {first['msg']}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("error while answering %s %s", request.method, request.url.path)
        return error(500, "internal server error")

    # ---- routes ------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/healthz", response_model=HealthOut, responses=errors,
             summary="Liveness and queue depth: answers while the model is busy")
    async def healthz():
        return HealthOut(status="ok", adapters=len(predictor.adapters), pending=batcher.pending,
                         pending_texts=batcher.pending_texts, max_queue=batcher.max_queue,
                         dropped_requests=batcher.dropped_requests, dropped_texts=batcher.dropped_texts,
                         model_calls=batcher.batches)

    @app.get("/v1/adapters", response_model=AdaptersResponse, responses=errors,
             summary="Loaded adapters, their label names and the base model")
    async def list_adapters():
        return AdaptersResponse(
            base_model=_base_model(predictor), default=predictor.default,
            adapters=[AdapterOut(name=name, label_names=info.label_names,
                                 revision=batcher.revisions.get(name, 1), default=name == predictor.default)
                      for name, info in list(predictor.adapters.items())])

    @app.post("/v1/predict", response_model=PredictResponse, responses=busy,
              summary="Classify texts with one adapter (default: the server's default adapter)")
    async def predict(body: PredictRequest, request: Request):
        texts = body.texts
        if not texts:
            raise ApiError(422, "texts is empty: send at least one text")
        if len(texts) > max_texts:
            raise ApiError(413, f"{len(texts)} texts in one request; the limit is {max_texts}")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ApiError(422, f"texts[{i}] is empty")
            if len(text) > max_chars:
                raise ApiError(413, f"texts[{i}] has {len(text)} characters; the limit is {max_chars}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate, from a JSON "\ud800" escape
                raise ApiError(422, f"texts[{i}] is not valid Unicode text") from None
        name = body.adapter or predictor.default
        if name not in predictor.adapters:
            raise ApiError(404, _unknown(name, predictor))
        try:
            # Under uvicorn a handler is not cancelled when its client goes: watch for it, and drop the job.
            revision, preds = await answer_unless_gone(batcher.submit(name, texts), request.receive)
        except UserError as e:  # the adapter was removed while the request waited
            raise ApiError(404, str(e)) from e
        return PredictResponse(adapter=name, revision=revision, predictions=[
            PredictionOut(label=p.label, label_name=p.label_name, confidence=round(p.confidence, 6),
                          probabilities={k: round(v, 6) for k, v in p.probabilities.items()})
            for p in preds])

    def require_root() -> Path:
        if root is None:
            raise ApiError(403, "loading adapters over HTTP is off: start the server with --adapter-root DIR")
        return root

    def check_name(name: str) -> str:
        if not ADAPTER_NAME.fullmatch(name):
            raise ApiError(422, "name must be 1 to 64 letters, digits, '-' or '_'")
        return name

    @app.post("/v1/adapters", response_model=AdapterOut, responses=errors,
              summary="Load an adapter from the adapter root; an existing name is replaced (hot swap)")
    async def load_adapter(body: LoadRequest):
        base = require_root()
        name = check_name(body.name)
        path = resolve_adapter_path(base, body.path)
        try:
            revision = await batcher.add_adapter(name, path)
        except UserError as e:
            raise ApiError(422, _hide_root(str(e), base)) from e
        except Exception as e:  # a broken adapter folder: say so, keep serving the others
            logger.exception("loading adapter %r from %s failed", name, path)
            raise ApiError(422, f"could not load an adapter from {body.path!r} ({type(e).__name__})") from e
        logger.info("adapter %r revision %d loaded from %s", name, revision, path)
        info = predictor.adapters[name]
        return AdapterOut(name=name, label_names=info.label_names, revision=revision,
                          default=name == predictor.default)

    @app.delete("/v1/adapters/{name}", response_model=RemovedOut, responses=errors,
                summary="Unload an adapter; unloading the default one needs ?default=NEXT")
    async def delete_adapter(name: str, default: str | None = Query(
            None, description="the adapter to make the default (required when unloading the default)")):
        require_root()
        if name not in predictor.adapters:
            raise ApiError(404, _unknown(name, predictor))
        try:
            new_default = await batcher.remove_adapter(name, default)
        except UserError as e:  # removed by a concurrent request
            raise ApiError(404, str(e)) from e
        logger.info("adapter %r removed; default: %r", name, new_default)
        return RemovedOut(removed=name, default=new_default)

    @app.put("/v1/default", response_model=AdapterOut, responses=errors,
             summary="Make an adapter the default (used when a request names none)")
    async def set_default(body: DefaultRequest):
        require_root()
        name = body.adapter

        def use() -> None:
            if name not in predictor.adapters:
                raise ApiError(404, _unknown(name, predictor))
            predictor.use(name)

        await batcher.call(use)
        logger.info("default adapter: %r", name)
        info = predictor.adapters[name]
        return AdapterOut(name=name, label_names=info.label_names, revision=batcher.revisions.get(name, 1),
                          default=name == predictor.default)

    app.add_middleware(_Guard, api_key=api_key, allowed_hosts=settings.allowed_hosts, max_body_bytes=max_body_bytes,
                       routes=app.router.routes)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = type(app).openapi(app)  # FastAPI's own, which caches it in app.openapi_schema
            texts = schema["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
            texts["maxItems"] = max_texts
            texts["items"]["maxLength"] = max_chars
        return app.openapi_schema

    app.openapi = openapi
    return app


def _base_model(predictor) -> str:
    # An ONNX export has no base model of its own to load; its adapter's run records the one it came from.
    name = getattr(predictor, "base_model", None)
    if name is None and predictor.default in predictor.adapters:
        name = predictor.adapters[predictor.default].run.get("base_model")
    return public_model_name(str(name or "unknown"))


def public_model_name(name: str) -> str:
    """A hub id as it is; a local directory by its folder name only: where files lie is nobody's business."""
    hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) and ".." not in name
    if hub_id and not Path(name).exists():
        return name
    return PurePath(name.replace("\\", "/").rstrip("/")).name or "unknown"


def _hide_root(message: str, root: Path | None) -> str:
    # Clients name adapters relative to the root; where the root lies on disk is none of their business.
    return message.replace(str(root), "<adapter-root>") if root is not None else message


# ---- the runner -------------------------------------------------------------------------------------------
def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def serve(
    adapters: Sequence[str] | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "torch",
    model: str | Path | None = None,
    use: str | None = None,
    base_model: str | None = None,
    model_dir: str | Path = "models/gpt2-chinese",
    device: str | None = None,
    access_log: bool = True,
    threads: int | None = None,
    calibrated: bool = True,
    allow_other_base: bool = False,
    **options,
) -> int:
    """Load the adapters and serve them until interrupted. `options` are AppSettings fields; `allowed_hosts`
    here adds Host names to the loopback ones a loopback server accepts. `calibrated=False` serves raw
    probabilities (`--no-calibration`)."""
    import uvicorn

    settings = AppSettings(**options)
    for name, value in (("--max-texts", settings.max_texts), ("--max-chars", settings.max_chars),
                        ("--batch-size", settings.batch_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1")
    api_key = settings.api_key or os.environ.get(API_KEY_ENV) or None
    sock = _bind(host, port)  # before loading the model: a busy port fails fast
    with sock:
        _set_threads(threads)
        from .inference import load_predictor

        predictor = load_predictor(adapters, backend=backend, model=model, base_model=base_model,
                                   model_dir=model_dir, device=device, calibrated=calibrated,
                                   allow_other_base=allow_other_base)
        if use:
            predictor.use(use)
        hosts = [*LOOPBACK_HOSTS, host, *(settings.allowed_hosts or ())] if is_loopback(host) else None
        app = create_app(predictor, settings, api_key=api_key, allowed_hosts=hosts)
        warning = exposure_warning(host, api_key)
        if warning:
            logger.warning(warning)
        logger.info("Serving %d adapter(s) (%s) on %s  (web page: /, API docs: /docs)",
                    len(predictor.adapters), ", ".join(predictor.adapters), _url(sock))
        config = uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=5,
                                timeout_keep_alive=KEEP_ALIVE_S)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown: a normal stop
            pass
    logger.info("Server stopped.")
    return 0


def _set_threads(threads: int | None) -> None:
    # One core stays free for the event loop, HTTP and tokenizing. On a busy machine every extra OpenMP
    # thread also costs more than it gives: 2 threads on 2 shared cores ran a tiny model 10x slower than 1.
    import torch

    if threads is None:
        threads = max(1, (os.cpu_count() or 2) - 1)
    if threads < 1:
        raise UserError("--threads must be at least 1")
    torch.set_num_threads(threads)
    logger.info("Model threads: %d", threads)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` from a background thread for the duration of a `with` block; yields its base URL."""
    import uvicorn

    sock = _bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_keep_alive=KEEP_ALIVE_S))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield _url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
