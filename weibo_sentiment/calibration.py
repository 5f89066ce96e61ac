"""Calibrated confidence: temperature scaling and the scores that say how well probabilities are calibrated.

Temperature scaling (Guo et al., 2017) divides every logit by one scalar T > 0 fitted on held-out data;
the argmax, and so accuracy and macro-F1, never change, only how confident the probabilities are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
# A temperature is one number, but it is set by the rows the model gets wrong: with none, the likelihood keeps
# rising as T falls and the fit runs to its bound (4 right rows gave T = 0.01, so a logit margin of 0.05 read as
# 0.993 confident). Below these counts T stays 1 and the run says why.
MIN_CALIBRATION_ROWS = 50
MIN_CALIBRATION_ERRORS = 3
T_BOUNDS = (0.01, 100.0)


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

    result = minimize_scalar(loss, bounds=(math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])), method="bounded",
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


def calibration_refusal(logits, labels) -> str | None:
    """Why a temperature fitted on these rows would mean nothing (too few rows, too few errors), or None."""
    z, y = _check(logits, labels)
    errors = int((z.argmax(axis=1) != y).sum()) if len(y) else 0
    if len(y) < MIN_CALIBRATION_ROWS:
        return (f"{len(y)} validation rows, fewer than the {MIN_CALIBRATION_ROWS} a temperature needs: "
                "temperature 1 kept")
    if errors < MIN_CALIBRATION_ERRORS:
        return (f"{errors} misclassified validation rows, fewer than the {MIN_CALIBRATION_ERRORS} a temperature "
                "needs (with none, the fit runs to its bound): temperature 1 kept")
    return None


def check_finite_logits(logits) -> None:
    """Stop with one line when the model produced NaN or infinite logits (a diverged run): any temperature or
    score computed from them would be meaningless."""
    z = np.asarray(logits, dtype=np.float64)
    bad = int((~np.isfinite(z)).any(axis=1).sum()) if z.ndim == 2 else int((~np.isfinite(z)).sum())
    if bad:
        raise UserError(f"the model's logits are NaN or infinite on {bad} of {len(z)} validation rows: training "
                        "diverged (try a lower --lr, or --precision fp32)")


def fit_validation(logits, labels) -> tuple[float, dict]:
    """Fit the temperature on a validation split's logits: (T rounded to 6 digits, the run.json `calibration`
    block with NLL and ECE before and after, and a `warning` when T was kept at 1 or stopped at a bound)."""
    check_finite_logits(logits)
    z, y = _check(logits, labels)
    warning = calibration_refusal(z, y)
    temperature = 1.0 if warning else round(fit_temperature(z, y), 6)
    if not warning and (temperature <= T_BOUNDS[0] * 1.01 or temperature >= T_BOUNDS[1] / 1.01):
        warning = (f"the fitted temperature {temperature:g} lies at the bound of the search "
                   f"({T_BOUNDS[0]:g}..{T_BOUNDS[1]:g}): confidence may be badly off; a larger validation split helps")
    before, after = softmax(z), softmax(z, temperature)
    block = {"method": "temperature scaling", "fitted_on": "validation", "rows": int(len(y)),
             "errors": int((z.argmax(axis=1) != y).sum()) if len(y) else 0,
             "nll_before": round(nll(before, y), 6), "nll_after": round(nll(after, y), 6),
             "ece_before": round(ece(before, y), 6), "ece_after": round(ece(after, y), 6)}
    if warning:
        logger.warning("calibration: %s", warning)
        block["warning"] = warning
    return temperature, block
