"""The API's request and response bodies (the schema at /docs), its limits per request and its error answer."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

MAX_TEXTS = 256
MAX_CHARS = 2000
# An explanation costs tens of predictions (docs/explanations.md) and holds the model thread meanwhile.
MAX_EXPLAIN_TEXTS = 16
MAX_EXPLAIN_SPANS = 50
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # URL-safe; PEFT holds adapters under keys of its own


class ApiError(Exception):
    """An error answered as `{"error": message}` with an HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def unknown_adapter(name: str, predictor) -> str:
    """The 404 message for an adapter name that `predictor` has not loaded."""
    return f"unknown adapter {name!r} (loaded: {', '.join(predictor.adapters)})"


def _json_integer(value):
    # JSON Schema's integer: 5 and 5.0, never "5" or true (pydantic's lax mode would take both)
    if isinstance(value, (str, bool)):
        raise ValueError("must be an integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The schema states the limits the handlers enforce (with their own messages: the schema is documentation), so
# that a client, or a fuzzer, can tell valid requests from invalid ones; create_app adds the per-server maxima.
Text = Annotated[str, Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})]  # not blank


class PredictRequest(Strict):
    texts: list[Text] = Field(description="posts to classify", json_schema_extra={"minItems": 1})
    adapter: str | None = Field(None, description="adapter name (default: the server's default adapter)")
    explain: StrictBool = Field(False, description="add each text's most influential spans (at most "
                                                   f"{MAX_EXPLAIN_TEXTS} texts; torch backend)")
    explain_top: JsonInt = Field(5, description="how many spans to return per text",
                             json_schema_extra={"minimum": 1, "maximum": MAX_EXPLAIN_SPANS})
    long_text: Literal["truncate", "window"] | None = Field(
        None, description="texts longer than the adapter's max length: truncated, or read whole in overlapping "
                          "windows (default: the server's --long-text)")


class PredictionOut(BaseModel):
    label: int
    label_name: str
    confidence: float
    probabilities: dict[str, float]
    explanation: list[tuple[str, float]] | None = Field(
        None, description="with explain: [[span, weight], ...], largest |weight| first; a positive weight "
                          "supports the label (integrated gradients of its calibrated probability)")
    explanation_offsets: list[tuple[int, int]] | None = Field(
        None, description="with explain: [start, end) of each span in the text, in Unicode code points")
    completeness_error: float | None = Field(
        None, description="with explain: sum of all weights minus (probability - the [PAD] baseline's)")


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


class FeedbackRequest(Strict):
    text: Text = Field(description="the post, as it was classified")
    adapter: str | None = Field(None, description="the adapter that classified it (default: the server's default)")
    revision: int | None = Field(None, ge=1, description="the adapter revision that answered (default: the current)")
    predicted_label: str = Field(description="the label name the adapter gave")
    corrected_label: str = Field(description="the right label name, one of the adapter's labels")


class FeedbackOut(BaseModel):
    adapter: str
    revision: int
    predicted_label: str
    corrected_label: str
    time: str = Field(description="when it was stored (ISO 8601, UTC)")
