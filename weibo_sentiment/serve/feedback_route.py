"""POST /v1/feedback: an analyst's correction of a label, appended to the feedback store.

The Guard refuses it from another site, without the API key or not as JSON, like every state-changing request.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ..feedback import FEEDBACK_FILE, MAX_STORE_BYTES, Correction, FeedbackRefused, FeedbackStore
from .batcher import MicroBatcher
from .schemas import ApiError, ErrorOut, FeedbackOut, FeedbackRequest, unknown_adapter

FEEDBACK_ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 422, 507)}


def feedback_store(feedback: str | Path | None, root: Path | None,
                   max_bytes: int = MAX_STORE_BYTES) -> FeedbackStore | None:
    """The store at `feedback` (--feedback FILE), else `feedback.jsonl` in the adapter root, else None (off);
    checked now, so that a path that cannot hold one stops the server before it starts."""
    if feedback is None and root is None:
        return None
    store = FeedbackStore(Path(feedback) if feedback is not None else root / FEEDBACK_FILE, max_bytes=max_bytes)
    store.check()
    return store


def add_feedback_route(app: FastAPI, predictor, batcher: MicroBatcher, store: FeedbackStore | None,
                       max_chars: int) -> None:
    @app.post("/v1/feedback", response_model=FeedbackOut, responses=FEEDBACK_ERRORS,
              summary="Store a correction of a predicted label (for `weibo-sentiment feedback export`)")
    async def feedback(body: FeedbackRequest):
        if store is None:
            raise ApiError(403, "feedback is off: start the server with --feedback FILE or --adapter-root DIR")
        correction = checked_correction(body, predictor, batcher, max_chars)
        try:
            stored = await run_in_threadpool(store.append, correction)  # fsync: off the event loop
        except FeedbackRefused as e:
            raise ApiError(e.status, str(e)) from e
        return FeedbackOut(adapter=stored.adapter, revision=stored.revision, predicted_label=stored.predicted_label,
                           corrected_label=stored.corrected_label, time=stored.time)


def checked_correction(body: FeedbackRequest, predictor, batcher: MicroBatcher, max_chars: int) -> Correction:
    """The request as a Correction, once its text and labels are known to fit the adapter it names."""
    if not body.text.strip():
        raise ApiError(422, "text is empty")
    if len(body.text) > max_chars:
        raise ApiError(413, f"text has {len(body.text)} characters; the limit is {max_chars}")
    name = body.adapter or predictor.default
    info = predictor.adapters.get(name)
    if info is None:
        raise ApiError(404, unknown_adapter(name, predictor))
    labels = info.label_names
    for field, value in (("predicted_label", body.predicted_label), ("corrected_label", body.corrected_label)):
        if value not in labels:
            # 409, as for an unknown adapter: the schema cannot say which labels the loaded adapters have
            raise ApiError(409, f"{field} {value[:64]!r} is not a label of adapter {name!r} ({', '.join(labels)})")
    revision = body.revision or batcher.revisions.get(name, 1)
    return Correction(text=body.text, adapter=name, predicted_label=body.predicted_label,
                      corrected_label=body.corrected_label, revision=revision, label_names=labels)
