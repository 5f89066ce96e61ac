"""Output rows: a prediction's columns, the columns of a predictions table, and how many texts were truncated.

Shared by every way of predicting a file: in memory (`predict --input -`), streaming (`streaming.run`) and on
Ray (`cluster`), so their outputs have the same columns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..tables import ROUTING_COLUMN

logger = logging.getLogger(__name__)

EXPLANATION_COLUMNS = ["explanation", "completeness_error"]  # `predict --explain`: weibo_sentiment.explanation


def output_row(pred, min_confidence: float | None) -> dict:
    """A prediction's output columns; with `min_confidence` an `uncertain` column follows `confidence`."""
    row = pred.as_row()
    if min_confidence is None:
        return row
    items = list(row.items())
    at = list(row).index("confidence") + 1
    return dict([*items[:at], ("uncertain", pred.confidence < min_confidence), *items[at:]])


def output_columns(predictor, routing: bool, id_column: str | None, min_confidence: float | None,
                   explain: bool = False) -> list[str]:
    """The columns of `predictor`'s predictions table, fixed before the first row: with `routing` (rows name
    their adapter) one prob_<label> column for each label of every adapter, which may have other label sets;
    with `explain` the explanation's columns after them."""
    label_names: list[str] = []
    for name, info in predictor.adapters.items():
        if routing or name == predictor.default:
            label_names += [n for n in info.label_names if n not in label_names]
    columns = ([id_column] if id_column else []) + ([ROUTING_COLUMN] if routing else [])
    columns += ["text", "label", "label_name", "confidence"] + (["uncertain"] if min_confidence is not None else [])
    return columns + [f"prob_{n}" for n in label_names] + (EXPLANATION_COLUMNS if explain else [])


def count_truncated_by_length(predictor, preds: Iterable) -> dict[int, int]:
    """{max length: how many of `preds`' texts were longer than it}, for each adapter's max length that a text
    may exceed (truncation reads only the start of such texts; windows read them in more than one window)."""
    from ..inference import count_truncated  # (it imports torch: not when this module is, by cluster or the CLI)

    by_length: dict[int, list[str]] = {}
    for p in preds:
        max_length = predictor.adapters[p.adapter].max_length
        if len(p.text) + 2 > max_length:
            by_length.setdefault(max_length, []).append(p.text)
    return {max_length: count_truncated(predictor.tokenizer, long, max_length)
            for max_length, long in by_length.items()}


def add_counts(total: dict[int, int], counts: dict[int, int]) -> None:
    """Add `counts` (of `count_truncated_by_length`) into `total`."""
    for max_length, n in counts.items():
        total[max_length] = total.get(max_length, 0) + n


def warn_truncated(counts: dict[int, int], predictor) -> None:
    """Warn how many texts were longer than their adapter's max length: cut to it, or read whole in windows
    (the predictor's `long_text`)."""
    from ..inference.windows import window_width

    for max_length, n in sorted(counts.items()):
        if n:
            width = window_width(predictor.tokenizer, max_length)
            logger.warning("%s", predictor.long_text.report(n, max_length, width))
