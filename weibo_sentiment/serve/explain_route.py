"""`"explain": true` on /v1/predict: the checks before any model work, and the spans added on the model thread."""

from __future__ import annotations

from ..errors import UserError
from .batcher import MicroBatcher
from .schemas import MAX_EXPLAIN_SPANS, MAX_EXPLAIN_TEXTS, ApiError, PredictionOut


def check_explain(predictor, n_texts: int, top: int) -> None:
    """Refuse an explanation request the server will not answer, before any model work."""
    from ..explanation import require_torch_model

    require_torch_model(predictor)  # a UserError (422) on the ONNX backend
    if n_texts > MAX_EXPLAIN_TEXTS:
        raise ApiError(413, f"{n_texts} texts to explain in one request; the limit is {MAX_EXPLAIN_TEXTS}")


def check_explain_top(top: int) -> None:
    """The schema's range for explain_top, held whether or not `explain` is asked for (a request the schema
    calls invalid is refused, as every other field's)."""
    if not 1 <= top <= MAX_EXPLAIN_SPANS:
        raise ApiError(422, f"explain_top: must be between 1 and {MAX_EXPLAIN_SPANS}")


async def add_explanations(batcher: MicroBatcher, preds: list, out: list[PredictionOut], top: int) -> None:
    """Explain each prediction's label on the model thread (between batches, never beside a hot swap)."""
    from ..explanation import explain

    try:
        explanations = await batcher.call(lambda: explain(batcher.predictor, [p.text for p in preds],
                                                          [p.adapter for p in preds], labels=[p.label for p in preds]))
    except UserError as e:  # the adapter was removed since it answered
        raise ApiError(404, str(e)) from e
    for o, e in zip(out, explanations, strict=True):
        o.explanation = [(span, weight) for span, weight in e.top(top)]
        o.explanation_offsets = [(start, end) for start, end, _ in e.ranked(top)]
        o.completeness_error = round(e.delta, 6) + 0.0
