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
from typing import Any

from .errors import UserError

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException
except ImportError as e:  # the serve extra is optional
    raise UserError("serving needs the serve extra: pip install 'weibo-sentiment[serve]'") from e

logger = logging.getLogger(__name__)

API_KEY_ENV = "WEIBO_SENTIMENT_API_KEY"
MAX_TEXTS = 256
MAX_CHARS = 2000
BATCH_WAIT_MS = 5.0
MAX_BATCH_TEXTS = 512
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # PEFT adapter names become module keys: no dots
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

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---- request and response bodies (the schema at /docs) ---------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(Strict):
    texts: list[str] = Field(description="posts to classify")
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
    name: str = Field(description="adapter name; an existing one is replaced (hot swap)")
    path: str = Field(description="adapter directory, relative to the server's --adapter-root")


class ErrorOut(BaseModel):
    error: str


# ---- micro-batching ------------------------------------------------------------------------------------
@dataclass
class _Job:
    adapter: str
    texts: list[str]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Gathers concurrent requests for `wait_ms` into per-adapter batches run on one model thread."""

    def __init__(self, predictor, *, wait_ms: float = BATCH_WAIT_MS, max_batch_texts: int = MAX_BATCH_TEXTS,
                 batch_size: int = 32):
        self.predictor = predictor
        self.wait_s = wait_ms / 1000
        self.max_batch_texts = max_batch_texts
        self.batch_size = batch_size
        self.revisions = dict.fromkeys(predictor.adapters, 1)
        self._loaded_count = dict(self.revisions)  # never decreases, so a re-added name gets a new revision
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weibo-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0  # model calls made, for /healthz and tests

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

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

    async def predict(self, adapter: str, texts: list[str]) -> tuple[int, list]:
        """(revision of the adapter that answered, predictions in input order)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(adapter, texts, future))
        return await future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the model thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def add_adapter(self, name: str, path: Path) -> int:
        def load() -> int:
            self.predictor.add_adapter(name, path)
            self._loaded_count[name] = self._loaded_count.get(name, 0) + 1
            self.revisions[name] = self._loaded_count[name]
            return self.revisions[name]

        return await self.call(load)

    async def remove_adapter(self, name: str) -> None:
        def remove() -> None:
            self.predictor.remove_adapter(name)
            self.revisions.pop(name, None)

        await self.call(remove)

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
                groups.setdefault(job.adapter, []).append(job)
            for adapter, group in groups.items():
                await self._run_group(adapter, group)

    async def _run_group(self, adapter: str, group: list[_Job]) -> None:
        texts = [t for job in group for t in job.texts]
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
        start = 0
        for job in group:
            if not job.future.done():  # a client that went away leaves a cancelled future
                job.future.set_result((revision, preds[start:start + len(job.texts)]))
            start += len(job.texts)

    def _predict(self, adapter: str, texts: list[str]) -> tuple[int, list]:
        self.batches += 1
        preds = self.predictor.predict(texts, adapter=adapter, batch_size=self.batch_size)
        return self.revisions[adapter], preds


# ---- request guards: Host header, API key, body size --------------------------------------------------
class _Guard:
    """Pure ASGI middleware: refuses a foreign Host header, a missing API key and an oversized body.

    Starlette's own body limit answers in plain text; every error here is JSON like the rest of the API.
    """

    def __init__(self, app, api_key: str | None, allowed_hosts: Sequence[str] | None, max_body_bytes: int):
        self.app = app
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
        if self.api_key is not None and not self._authorized(headers):
            return await _send_error(send, 401, "this server needs an API key: send 'Authorization: Bearer "
                                                "KEY' or 'X-API-Key: KEY'",
                                     [(b"www-authenticate", b'Basic realm="weibo-sentiment"')])
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
    """The warning printed when `host` means every interface, else None."""
    if host.strip("[]") not in ("", "0.0.0.0", "::"):
        return None
    return (f"warning: listening on all interfaces ({host or '*'}): anyone who can reach this machine can "
            f"use the API" + ("" if api_key else "; consider --api-key"))


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
    max_body_bytes = settings.max_body_bytes
    if max_body_bytes is None:
        max_body_bytes = default_max_body_bytes(max_texts, max_chars)
    batcher = MicroBatcher(predictor, wait_ms=settings.batch_wait_ms, batch_size=settings.batch_size,
                           max_batch_texts=max(MAX_BATCH_TEXTS, max_texts))
    page = resources.files("weibo_sentiment").joinpath("static", "index.html").read_text(encoding="utf-8")

    errors = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 422)}

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="weibo-sentiment", version="1", lifespan=lifespan,
                  description="Chinese Weibo sentiment: one GPT-2 base, many LoRA adapters.")
    app.state.batcher = batcher
    app.state.predictor = predictor

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.message)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return error(422, _hide_root(str(exc), root))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                    405: f"method {request.method} is not allowed on {request.url.path}",
                    413: body_too_large(max_body_bytes)}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            problem = first.get("ctx", {}).get("error", "cannot parse")
            return error(400, f"malformed JSON: {problem} at character {first['loc'][-1]}")
        if first["loc"] == ("body",):
            if "json" not in request.headers.get("content-type", ""):
                return error(415, "send a JSON body with 'Content-Type: application/json'")
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

    @app.get("/healthz", summary="Liveness: answers while the model is busy")
    async def healthz() -> dict:
        return {"status": "ok", "adapters": len(predictor.adapters), "pending": batcher.pending,
                "model_calls": batcher.batches}

    @app.get("/v1/adapters", response_model=AdaptersResponse, responses=errors,
             summary="Loaded adapters, their label names and the base model")
    async def list_adapters():
        return AdaptersResponse(
            base_model=_base_model(predictor), default=predictor.default,
            adapters=[AdapterOut(name=name, label_names=info.label_names,
                                 revision=batcher.revisions.get(name, 1), default=name == predictor.default)
                      for name, info in list(predictor.adapters.items())])

    @app.post("/v1/predict", response_model=PredictResponse, responses=errors,
              summary="Classify texts with one adapter (default: the server's default adapter)")
    async def predict(body: PredictRequest):
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
            raise ApiError(404, f"unknown adapter {name!r} (loaded: {', '.join(predictor.adapters)})")
        try:
            revision, preds = await batcher.predict(name, texts)
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

    @app.delete("/v1/adapters/{name}", responses=errors, summary="Unload an adapter")
    async def delete_adapter(name: str) -> dict:
        require_root()
        if name not in predictor.adapters:
            raise ApiError(404, f"unknown adapter {name!r} (loaded: {', '.join(predictor.adapters)})")
        if len(predictor.adapters) == 1:
            raise ApiError(409, f"cannot remove {name!r}: it is the only adapter loaded")
        try:
            await batcher.remove_adapter(name)
        except UserError as e:  # removed by a concurrent request
            raise ApiError(404, str(e)) from e
        return {"removed": name, "default": predictor.default}

    app.add_middleware(_Guard, api_key=api_key, allowed_hosts=settings.allowed_hosts, max_body_bytes=max_body_bytes)
    return app


def _base_model(predictor) -> str:
    # An ONNX export has no base model of its own to load; its adapter's run records the one it came from.
    name = getattr(predictor, "base_model", None)
    if name is None and predictor.default in predictor.adapters:
        name = predictor.adapters[predictor.default].run.get("base_model")
    return str(name or "unknown")


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
    **options,
) -> int:
    """Load the adapters and serve them until interrupted. `options` are AppSettings fields; `allowed_hosts`
    here adds Host names to the loopback ones a loopback server accepts."""
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
        from .export import load_predictor

        predictor = load_predictor(adapters, backend=backend, model=model, base_model=base_model,
                                   model_dir=model_dir, device=device)
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
