"""Calibrated confidence: temperature scaling and the scores that say how well probabilities are calibrated.

Temperature scaling (Guo et al., 2017) divides every logit by one scalar T > 0 fitted on held-out data;
the argmax, and so accuracy and macro-F1, never change, only how confident the probabilities are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def softmax(logits: np.ndarray, temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature` (a scalar, or one temperature per row), in float64."""
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(temperature, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    z = z / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _check(probs_or_logits, labels) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(probs_or_logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"expected an (n, classes) array and n labels, got shapes {x.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= x.shape[1]):
        raise ValueError(f"labels must lie in 0..{x.shape[1] - 1}")
    return x, y


def fit_temperature(logits, labels) -> float:
    """The temperature T > 0 that minimises the mean negative log-likelihood of softmax(logits / T).

    The NLL is convex in 1/T, so a bounded scalar search over log T (T from 0.01 to 100) finds the optimum.
    No rows, or rows that carry no information (all logits equal), give T = 1.
    """
    z, y = _check(logits, labels)
    if not len(y) or np.ptp(z, axis=1).max() == 0:
        return 1.0
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        return float(-_log_softmax(z / math.exp(log_t))[rows, y].mean())

    result = minimize_scalar(loss, bounds=(math.log(0.01), math.log(100.0)), method="bounded",
                             options={"xatol": 1e-7})
    return float(math.exp(result.x))


def nll(probs, labels, eps: float = 1e-12) -> float:
    """Mean negative natural log of the probability given to the true class (probabilities clipped at `eps`)."""
    p, y = _check(probs, labels)
    if not len(y):
        return float("nan")
    return float(-np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0)).mean())


def brier(probs, labels) -> float:
    """Multi-class Brier score (Brier, 1950): the mean over rows of the sum over classes of (p - onehot)²,
    from 0 (perfect) to 2; for two classes it is twice the binary Brier score of the positive class."""
    p, y = _check(probs, labels)
    if not len(y):
        return float("nan")
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def ece(probs, labels, bins: int = 15) -> float:
    """Expected calibration error: rows binned by their top probability into `bins` equal-width bins over
    [0, 1] (right-closed, the first bin also holds 0), and the row-weighted mean of |accuracy - mean confidence|
    over the bins."""
    p, y = _check(probs, labels)
    if not len(y):
        return float("nan")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(which):
        rows = which == b
        total += rows.sum() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total / len(y))


def coverage_table(probs, labels, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict]:
    """For each threshold: the accuracy on the rows whose top probability is at least the threshold
    (None when no row is), and `kept`, the share of rows that are."""
    p, y = _check(probs, labels)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    table = []
    for t in thresholds:
        rows = confidence >= t
        kept = int(rows.sum())
        table.append({"threshold": float(t),
                      "accuracy": float(correct[rows].mean()) if kept else None,
                      "kept": kept / len(y) if len(y) else 0.0})
    return table


def fit_validation(logits, labels) -> tuple[float, dict]:
    """Fit the temperature on a validation split's logits: (T rounded to 6 digits, the run.json `calibration`
    block with NLL and ECE before and after)."""
    z, y = _check(logits, labels)
    temperature = round(fit_temperature(z, y), 6)
    before, after = softmax(z), softmax(z, temperature)
    block = {"method": "temperature scaling", "fitted_on": "validation", "rows": int(len(y)),
             "nll_before": round(nll(before, y), 6), "nll_after": round(nll(after, y), 6),
             "ece_before": round(ece(before, y), 6), "ece_after": round(ece(after, y), 6)}
    return temperature, block
