"""The FastAPI app over one Predictor and its micro-batcher: the routes, JSON errors, the web page and /docs.

`create_app` checks the settings, then registers each part in turn: error handlers, read-only routes,
prediction, adapter management, the request guard and the schema's per-server limits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path, PurePath
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..errors import UserError
from ..feedback import MAX_STORE_BYTES, FeedbackStore
from ..inference.windows import LongText, window_width
from .batcher import BATCH_WAIT_MS, MAX_BATCH_TEXTS, MAX_QUEUE, ClientGone, MicroBatcher, answer_unless_gone
from .explain_route import add_explanations, check_explain, check_explain_top
from .feedback_route import add_feedback_route, feedback_store
from .guard import NOT_JSON, Guard, body_too_large, default_max_body_bytes, is_json, resolve_adapter_path
from .schemas import (
    ADAPTER_NAME,
    MAX_CHARS,
    MAX_TEXTS,
    AdapterOut,
    AdaptersResponse,
    ApiError,
    DefaultRequest,
    ErrorOut,
    HealthOut,
    LoadRequest,
    PredictionOut,
    PredictRequest,
    PredictResponse,
    RemovedOut,
    unknown_adapter,
)

logger = logging.getLogger(__name__)

ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 422)}
BUSY = {**ERRORS, 503: {"model": ErrorOut, "description": "Too many texts waiting; see Retry-After"}}


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
    feedback: str | Path | None = None  # the feedback store (default: feedback.jsonl in the adapter root)
    feedback_max_bytes: int = MAX_STORE_BYTES  # beyond it /v1/feedback answers 507
    # How texts longer than the max length are read unless a request says: `truncate` or `window` (None: as the
    # predictor reads them, which is truncation unless its `long_text` was set); `stride`: tokens between windows.
    long_text: str | None = None
    stride: int | None = None


@dataclass(frozen=True)
class Service:
    """What the handlers work with: the predictor, its batcher, the adapter root and the checked limits."""

    predictor: Any
    batcher: MicroBatcher
    root: Path | None  # resolved; None: adapters cannot be loaded or unloaded over HTTP
    max_texts: int
    max_chars: int
    max_body_bytes: int
    feedback: FeedbackStore | None = None  # the store /v1/feedback appends to; None: feedback is off
    long_text: LongText | None = None  # the server's reading of long texts (None: the predictor's); requests may differ


def create_app(predictor, settings: AppSettings | None = None, **options) -> FastAPI:
    """The FastAPI app serving `predictor` (anything with Predictor's interface); `options` override fields of
    `settings` (see AppSettings)."""
    settings = replace(settings or AppSettings(), **options)
    service = build_service(predictor, settings)
    batcher = service.batcher
    page = resources.files("weibo_sentiment").joinpath("static", "index.html").read_text(encoding="utf-8")

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
    add_error_handlers(app, service.root, service.max_body_bytes)
    add_read_routes(app, service, page)
    add_predict_route(app, service)
    add_adapter_routes(app, service)
    add_default_route(app, service)
    add_feedback_route(app, predictor, batcher, service.feedback, service.max_chars)
    app.add_middleware(Guard, api_key=settings.api_key, allowed_hosts=settings.allowed_hosts,
                       max_body_bytes=service.max_body_bytes, routes=app.router.routes)
    app.openapi = openapi_with_limits(app, service.max_texts, service.max_chars)
    return app


def build_service(predictor, settings: AppSettings) -> Service:
    """The predictor with its batcher, once the settings have been checked against it."""
    adapter_root, max_texts, max_chars = settings.adapter_root, settings.max_texts, settings.max_chars
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
    long_text = None
    if settings.long_text is not None or settings.stride is not None:
        long_text = LongText(settings.long_text or "truncate", stride=settings.stride)
        for info in predictor.adapters.values():  # a stride no loaded adapter's windows can take fails at start
            LongText("window", stride=settings.stride).step(window_width(predictor.tokenizer, info.max_length))
    batcher = MicroBatcher(predictor, wait_ms=settings.batch_wait_ms, batch_size=settings.batch_size,
                           max_batch_texts=max(MAX_BATCH_TEXTS, max_texts), max_queue=settings.max_queue)
    return Service(predictor, batcher, root, max_texts, max_chars, max_body_bytes,
                   feedback_store(settings.feedback, root, settings.feedback_max_bytes), long_text)


# ---- errors: every one answered as {"error": message} -----------------------------------------------------
def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, root: Path | None, max_body_bytes: int) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone):
        return error_response(499, "the client closed the connection")  # nginx's code; nobody reads it

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return error_response(422, _hide_root(str(exc), root))

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
        return error_response(exc.status_code, messages.get(exc.status_code, str(exc.detail)), headers)

    app.add_exception_handler(RequestValidationError, invalid_request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("error while answering %s %s", request.method, request.url.path)
        return error_response(500, "internal server error")


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """The first problem FastAPI found in a request, said in one line."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        problem = first.get("ctx", {}).get("error", "cannot parse")
        return error_response(400, f"malformed JSON: {problem} at character {first['loc'][-1]}")
    if first["loc"] == ("body",):
        if not is_json(request.headers.get("content-type", "").encode("latin-1")):
            return error_response(415, NOT_JSON)
        return error_response(422, "the request body must be a JSON object")
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"][1:]).lstrip(".")
    return error_response(422, f"{where}: {first['msg']}")


# ---- routes ---------------------------------------------------------------------------------------------
def add_read_routes(app: FastAPI, service: Service, page: str) -> None:
    """The web page, /healthz and the list of adapters."""
    predictor, batcher = service.predictor, service.batcher

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/healthz", response_model=HealthOut, responses=ERRORS,
             summary="Liveness and queue depth: answers while the model is busy")
    async def healthz():
        return HealthOut(status="ok", adapters=len(predictor.adapters), pending=batcher.pending,
                         pending_texts=batcher.pending_texts, max_queue=batcher.max_queue,
                         dropped_requests=batcher.dropped_requests, dropped_texts=batcher.dropped_texts,
                         model_calls=batcher.batches)

    @app.get("/v1/adapters", response_model=AdaptersResponse, responses=ERRORS,
             summary="Loaded adapters, their label names and the base model")
    async def list_adapters():
        return AdaptersResponse(
            base_model=_base_model(predictor), default=predictor.default,
            adapters=[AdapterOut(name=name, label_names=info.label_names,
                                 revision=batcher.revisions.get(name, 1), default=name == predictor.default)
                      for name, info in list(predictor.adapters.items())])


def add_predict_route(app: FastAPI, service: Service) -> None:
    predictor, batcher = service.predictor, service.batcher

    @app.post("/v1/predict", response_model=PredictResponse, responses=BUSY, response_model_exclude_none=True,
              summary="Classify texts with one adapter (default: the server's default adapter)")
    async def predict(body: PredictRequest, request: Request):
        texts = body.texts
        check_texts(texts, service.max_texts, service.max_chars)
        check_explain_top(body.explain_top)
        if body.explain:
            check_explain(predictor, len(texts), body.explain_top)
        name = body.adapter or predictor.default
        if name not in predictor.adapters:
            raise ApiError(404, unknown_adapter(name, predictor))
        long_text = service.long_text
        if body.long_text is not None:
            long_text = LongText.of(body.long_text, service.long_text or predictor.long_text)
        if body.explain and (long_text or predictor.long_text).windowed:
            raise ApiError(409, 'explain covers a text\'s first max-length tokens only, not windows: ask with '
                                '"long_text": "truncate"')
        try:
            # Under uvicorn a handler is not cancelled when its client goes: watch for it, and drop the job.
            revision, preds = await answer_unless_gone(batcher.submit(name, texts, long_text), request.receive)
        except UserError as e:  # the adapter was removed while the request waited
            raise ApiError(404, str(e)) from e
        out = [PredictionOut(label=p.label, label_name=p.label_name, confidence=round(p.confidence, 6),
                             probabilities={k: round(v, 6) for k, v in p.probabilities.items()}) for p in preds]
        if body.explain:
            await add_explanations(batcher, preds, out, body.explain_top)
        return PredictResponse(adapter=name, revision=revision, predictions=out)


def check_texts(texts: list[str], max_texts: int, max_chars: int) -> None:
    """Refuse a request's texts that break a limit, naming the first text at fault."""
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


def require_root(root: Path | None) -> Path:
    if root is None:
        raise ApiError(403, "loading adapters over HTTP is off: start the server with --adapter-root DIR")
    return root


def check_adapter_name(name: str) -> str:
    if not ADAPTER_NAME.fullmatch(name):
        raise ApiError(422, "name must be 1 to 64 letters, digits, '-' or '_'")
    return name


def add_adapter_routes(app: FastAPI, service: Service) -> None:
    """Loading (or hot-swapping) and unloading adapters, from the adapter root only."""
    predictor, batcher = service.predictor, service.batcher

    @app.post("/v1/adapters", response_model=AdapterOut, responses=ERRORS,
              summary="Load an adapter from the adapter root; an existing name is replaced (hot swap)")
    async def load_adapter(body: LoadRequest):
        base = require_root(service.root)
        name = check_adapter_name(body.name)
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

    @app.delete("/v1/adapters/{name}", response_model=RemovedOut, responses=ERRORS,
                summary="Unload an adapter; unloading the default one needs ?default=NEXT")
    async def delete_adapter(name: str, default: str | None = Query(
            None, description="the adapter to make the default (required when unloading the default)")):
        require_root(service.root)
        if name not in predictor.adapters:
            raise ApiError(404, unknown_adapter(name, predictor))
        try:
            new_default = await batcher.remove_adapter(name, default)
        except UserError as e:  # removed by a concurrent request
            raise ApiError(404, str(e)) from e
        logger.info("adapter %r removed; default: %r", name, new_default)
        return RemovedOut(removed=name, default=new_default)


def add_default_route(app: FastAPI, service: Service) -> None:
    predictor, batcher = service.predictor, service.batcher

    @app.put("/v1/default", response_model=AdapterOut, responses=ERRORS,
             summary="Make an adapter the default (used when a request names none)")
    async def set_default(body: DefaultRequest):
        require_root(service.root)
        name = body.adapter

        def use() -> None:
            if name not in predictor.adapters:
                raise ApiError(404, unknown_adapter(name, predictor))
            predictor.use(name)

        await batcher.call(use)
        logger.info("default adapter: %r", name)
        info = predictor.adapters[name]
        return AdapterOut(name=name, label_names=info.label_names, revision=batcher.revisions.get(name, 1),
                          default=name == predictor.default)


def openapi_with_limits(app: FastAPI, max_texts: int, max_chars: int) -> Callable[[], dict]:
    """`app.openapi` with this server's maxima added to PredictRequest.texts and FeedbackRequest.text."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = type(app).openapi(app)  # FastAPI's own, which caches it in app.openapi_schema
            texts = schema["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
            texts["maxItems"] = max_texts
            texts["items"]["maxLength"] = max_chars
            schema["components"]["schemas"]["FeedbackRequest"]["properties"]["text"]["maxLength"] = max_chars
        return app.openapi_schema

    return openapi


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
