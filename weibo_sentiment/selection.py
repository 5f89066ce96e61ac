"""Posts worth labelling: the ones an adapter is least sure of (uncertainty sampling), or a seeded random sample
to compare with; duplicates (the same text up to Unicode width, case and white space) are offered once.

The result is a CSV for an analyst to fill in: the post's id, its text (under the input's text column name, so
the labelled file trains as it is), the predicted label and its calibrated confidence, and an empty label column.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .output import atomic_open, write_rows

STRATEGIES = ("uncertainty", "random")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Candidate:
    """A selected post: its position in the input, its text and what the adapter makes of it."""

    index: int
    text: str
    label_name: str
    confidence: float


def normalise(text: str) -> str:
    """The form duplicates share: NFKC (full-width ＡＢＣ１ → ABC1), case folded, without white space."""
    return _SPACE.sub("", unicodedata.normalize("NFKC", text).casefold())


def first_occurrences(texts: Sequence[str]) -> list[int]:
    """Indices of the texts whose normalised form has not appeared before them."""
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(texts):
        key = normalise(text)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def select_posts(predictor, texts: Sequence[str], n: int, strategy: str = "uncertainty", seed: int = 0,
                 adapter: str | None = None, batch_size: int = 32, progress: bool = False) -> list[Candidate]:
    """Up to `n` distinct posts of `texts`: the least confident first (uncertainty, ties in a seeded random order)
    or a seeded random sample in input order (random). Confidence is the top class's probability, calibrated
    unless the predictor is not."""
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if n < 1:
        raise UserError(f"--n {n}: must be at least 1")
    pool = np.array(first_occurrences(texts))
    rng = np.random.default_rng(seed)
    if strategy == "random":
        chosen = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
        probs = predictor.predict_proba([texts[i] for i in chosen], adapter, batch_size, progress)
    else:
        pool = pool[rng.permutation(len(pool))]  # a seeded order among equal confidences
        probs = predictor.predict_proba([texts[i] for i in pool], adapter, batch_size, progress)
        order = np.argsort(probs.max(axis=1), kind="stable")[:n]
        chosen, probs = pool[order], probs[order]
    names = predictor.adapters[adapter or predictor.default].label_names
    return [Candidate(int(i), texts[i], names[int(p.argmax())], float(p.max())) for i, p in zip(chosen, probs)]


def check_unlabelled(path: str | Path) -> None:
    """Refuse to replace a file of posts to label in which someone has already filled in labels."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open(encoding="utf-8-sig", newline="") as f:
        filled = sum(1 for row in csv.DictReader(f) if (row.get("label") or "").strip())
    if filled:
        raise UserError(f"{path}: {filled} label(s) are already filled in there; choose another --output")


def to_label_rows(candidates: Sequence[Candidate], ids: Sequence[str] | None, text_column: str) -> list[dict]:
    """The CSV rows for an analyst: id (the input's id column, else its 1-based row), text, the adapter's label
    and confidence, and an empty `label` to fill in."""
    return [{"id": ids[c.index] if ids is not None else c.index + 1, text_column: c.text,
             "predicted_label": c.label_name, "confidence": round(c.confidence, 6), "label": ""}
            for c in candidates]


def write_to_label(candidates: Sequence[Candidate], output: str | Path, ids: Sequence[str] | None = None,
                   text_column: str = "review", inputs: Sequence[str | Path] = ()) -> None:
    """The posts to label as a CSV, atomically (see `to_label_rows`)."""
    check_unlabelled(output)
    with atomic_open(output, kind="to-label", inputs=inputs) as f:
        write_rows(to_label_rows(candidates, ids, text_column), f, "csv")
