"""Class shares corrected for the classifier's errors (quantification), with intervals.

Counting predicted labels (classify and count, CC) is biased whenever the classifier errs, and the bias grows with
the distance between a bucket's true share and the share the model was fitted on (Forman 2008). The adjusted
methods learn the classifier's error rates on a labelled sample of the analyst's own posts (a *domain*, see
domains.py) and undo them. The methods are QuaPy's, fitted on precomputed posteriors: our classifier is already
trained, so QuaPy sees it through `PrecomputedPosteriors`, an estimator whose "features" are the posteriors.

Intervals: a share estimated from a bucket of posts carries two kinds of noise, the bucket's own (which posts
happened to be posted) and the labelled sample's (the error rates are themselves estimates from, say, 1,000
posts; with small samples this dominates). Each bootstrap replicate therefore refits the quantifier on a
resample of the labelled sample *and* applies it to a resample of the bucket (QuaPy's model-based plus
population-based bootstrap, Moreo & Salvati 2025). QuaPy 0.2.3's `AggregativeBootstrap` does both only with
`n_train_samples > 1`, and that path fails on precomputed posteriors (it calls `sampling_from_index` on a numpy
array); its bucket resampling also draws from the unseeded global numpy generator inside joblib workers, so
intervals would change from run to run. So the two resampling loops are here, seeded; the quantifiers and the
percentile intervals (`ConfidenceIntervals`) are QuaPy's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from .errors import UserError

METHODS = ("cc", "pcc", "acc", "pacc", "emq")
DEFAULT_METHOD = "pacc"
CRISP_METHODS = ("cc", "acc")  # fed predicted labels; the others are fed posteriors
ADJUSTED_METHODS = ("acc", "pacc")  # solve for shares, and clip what falls outside [0, 1]
DEFAULT_BOOTSTRAP = 300
# Below these, the error rates the correction rests on are too noisy for its interval to mean much: the report
# flags every bucket (domain_sample_small) rather than refuse.
MIN_DOMAIN_ROWS = 200
MIN_DOMAIN_ROWS_PER_CLASS = 30


class PrecomputedPosteriors(ClassifierMixin, BaseEstimator):
    """A fitted "classifier" whose input already is the posterior matrix: QuaPy's aggregative methods call
    `predict`/`predict_proba` on it and get back the adapter's calibrated probabilities or their argmax."""

    def __init__(self, n_classes: int = 2):
        self.n_classes = n_classes
        self.classes_ = np.arange(n_classes)  # fitted: sklearn's check_is_fitted looks for a trailing underscore

    def fit(self, X, y=None) -> PrecomputedPosteriors:
        return self

    def predict_proba(self, X) -> np.ndarray:
        return np.asarray(X, dtype=np.float64)

    def predict(self, X) -> np.ndarray:
        return np.asarray(X).argmax(axis=1)


def build_quantifier(method: str, n_classes: int):
    """An unfitted QuaPy quantifier for `method` over precomputed posteriors."""
    from quapy.method.aggregative import ACC, CC, EMQ, PACC, PCC

    classifier = PrecomputedPosteriors(n_classes)
    if method == "cc":
        return CC(classifier, fit_classifier=False)
    if method == "pcc":
        return PCC(classifier, fit_classifier=False)
    if method == "acc":
        return ACC(classifier, fit_classifier=False, val_split=None, solver="exact-cc")
    if method == "pacc":
        return PACC(classifier, fit_classifier=False, val_split=None, solver="exact-cc")
    if method == "emq":
        # The EM prior is the prevalence the posteriors were fitted under, estimated as their mean on the domain
        # sample (exact_train_prev=False): the adapter's own training split is not at hand here.
        return EMQ(classifier, fit_classifier=False, exact_train_prev=False)
    raise UserError(f"unknown quantification method {method!r}: choose one of {', '.join(METHODS)}")


def method_input(method: str, posteriors: np.ndarray) -> np.ndarray:
    """What a quantifier of `method` is fed: predicted labels for the crisp methods, posteriors otherwise."""
    return posteriors.argmax(axis=1) if method in CRISP_METHODS else posteriors


def fit_quantifier(method: str, posteriors: np.ndarray, labels: np.ndarray):
    """A quantifier of `method` fitted on a labelled sample's posteriors and true labels."""
    quantifier = build_quantifier(method, posteriors.shape[1])
    quantifier.aggregation_fit(method_input(method, posteriors), labels)
    return quantifier


@dataclass
class Quantifier:
    """One domain's fitted correction: the quantifier on the whole labelled sample (point estimates) and one per
    bootstrap resample of it (the labelled sample's share of the interval)."""

    method: str
    point: object
    replicates: list
    n_classes: int
    sample_rows: int
    sample_small: bool
    seed: int

    @classmethod
    def fit(cls, method: str, posteriors, labels, n_bootstrap: int = DEFAULT_BOOTSTRAP,
            seed: int = 0) -> Quantifier:
        posteriors = np.asarray(posteriors, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        check_domain_sample(posteriors, labels)
        rng = np.random.default_rng(seed)
        replicates = []
        for _ in range(n_bootstrap):
            index = rng.integers(0, len(labels), len(labels))
            replicates.append(fit_quantifier(method, posteriors[index], labels[index]))
        counts = np.bincount(labels, minlength=posteriors.shape[1])
        small = len(labels) < MIN_DOMAIN_ROWS or counts.min() < MIN_DOMAIN_ROWS_PER_CLASS
        return cls(method, fit_quantifier(method, posteriors, labels), replicates, posteriors.shape[1],
                   len(labels), bool(small), seed)

    def estimate(self, posteriors, confidence: float = 0.95) -> ShareEstimate:
        """Corrected shares of a bucket of posts (their posteriors), the counted shares and a `confidence` interval
        per class from paired resamples of the labelled sample and of the bucket."""
        from quapy.method.confidence import ConfidenceIntervals

        posteriors = np.asarray(posteriors, dtype=np.float64)
        if not len(posteriors):
            raise ValueError("an empty bucket has no shares")
        fed = method_input(self.method, posteriors)
        point = np.asarray(self.point.aggregate(fed), dtype=np.float64)
        counted = np.bincount(posteriors.argmax(axis=1), minlength=self.n_classes) / len(posteriors)
        # A bucket's seed depends on its posts, so the same bucket gets the same interval in every run.
        rng = np.random.default_rng([self.seed, len(posteriors), int(posteriors[:, 0].sum() * 1e6) % 2**32])
        draws = []
        for quantifier in self.replicates:
            index = rng.integers(0, len(posteriors), len(posteriors))
            draws.append(np.asarray(quantifier.aggregate(fed[index]), dtype=np.float64))
        region = ConfidenceIntervals(np.array(draws), confidence_level=confidence)
        # The point estimate comes from the whole sample; a skewed bootstrap can leave it just outside the
        # percentile range, and an interval that excludes its own estimate reads as an error.
        low, high = np.minimum(region.I_low, point), np.maximum(region.I_high, point)
        clipped = self.method in ADJUSTED_METHODS and bool(((point <= 1e-9) | (point >= 1 - 1e-9)).any())
        return ShareEstimate(point, low, high, counted, clipped)


@dataclass
class ShareEstimate:
    corrected: np.ndarray
    low: np.ndarray
    high: np.ndarray
    counted: np.ndarray
    clipped: bool


def check_domain_sample(posteriors: np.ndarray, labels: np.ndarray) -> None:
    """A correction needs every class in the labelled sample: with one class the error rates of the other are
    unknown, and every method would divide by nothing."""
    if posteriors.ndim != 2 or len(posteriors) != len(labels):
        raise ValueError(f"expected (n, classes) posteriors and n labels, got {posteriors.shape} and {labels.shape}")
    missing = sorted(set(range(posteriors.shape[1])) - set(np.unique(labels).tolist()))
    if missing:
        raise UserError(f"the labelled sample has no rows of class {', '.join(map(str, missing))}: a correction "
                        "needs examples of every class")
