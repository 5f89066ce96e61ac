"""Metrics on a labelled file: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, and how well
the confidence is calibrated (ECE, Brier score, NLL, accuracy by confidence threshold)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from .calibration import brier, coverage_table, ece, nll
from .data import LabelledData
from .emoticons import strip_emoticons
from .errors import file_error
from .inference import Predictor
from .inference.windows import window_width


def classification_report(labels: list[int], predicted: list[int], label_names: list[str]) -> dict:
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=ids,
                                                                     zero_division=0)
    return {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=ids, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=ids).tolist(),
        "label_names": list(label_names),
    }


@dataclass
class Scores:
    """What a predictor gave for every row of a labelled file: the true labels, the probabilities it reports
    (`probs`: calibrated with the adapter's temperature unless the predictor is uncalibrated) and the raw ones
    (`raw_probs`: temperature 1), each of shape (n, number of labels)."""

    labels: np.ndarray
    probs: np.ndarray
    raw_probs: np.ndarray
    label_names: list[str]
    temperature: float = 1.0  # what `probs` were divided by: the adapter's temperature, or 1 when uncalibrated
    adapter: str | None = None
    texts_only_emoticons: int = 0  # with strip: posts that were only emoticons, scored on a stand-in
    windows: np.ndarray | None = None  # windows each text was read in (`LongText("window")`); None: truncated


def score(predictor: Predictor, data: LabelledData, adapter: str | None = None, strip: bool = False,
          batch_size: int = 64, progress: bool = False) -> Scores:
    """Predict every text of `data` with `adapter` once (one forward pass per row, or per window with the
    predictor's `long_text` window) and return both the probabilities the predictor reports and the raw ones."""
    info = predictor.adapters[adapter or predictor.default]
    if data.num_labels > len(info.label_names):
        raise file_error(data.path, f"has labels up to {data.num_labels - 1}, but adapter {info.name!r} "
                                    f"knows {len(info.label_names)} ({', '.join(info.label_names)})")
    texts = data.texts
    emptied = 0
    if strip:
        texts = [strip_emoticons(t) for t in texts]
        # A post that was only emoticons has nothing left to read; it is scored on an empty-ish stand-in
        # rather than dropped, so `n` stays the size of the file.
        emptied = sum(1 for t in texts if not t)
        texts = [t or "。" for t in texts]
    temperature = predictor.temperature(info.name)
    windows = predictor.predict_windows(texts, info.name, batch_size=batch_size, progress=progress)
    return Scores(labels=np.asarray(data.labels, dtype=np.int64),
                  probs=windows.probabilities(temperature).astype(np.float32),
                  raw_probs=windows.probabilities().astype(np.float32),
                  label_names=list(info.label_names), temperature=temperature, adapter=info.name,
                  texts_only_emoticons=emptied, windows=windows.windows if predictor.long_text.windowed else None)


def calibration_report(scores: Scores) -> dict:
    """ECE, Brier score and NLL of the reported probabilities, the raw probabilities' ECE, and the coverage
    table (accuracy and share of rows kept at each confidence threshold)."""
    return {
        "ece": ece(scores.probs, scores.labels),
        "ece_raw": ece(scores.raw_probs, scores.labels),
        "brier": brier(scores.probs, scores.labels),
        "nll": nll(scores.probs, scores.labels),
        "coverage": coverage_table(scores.probs, scores.labels),
    }


def evaluate(predictor: Predictor, data: LabelledData, adapter: str | None = None,
             strip: bool = False, batch_size: int = 64, progress: bool = False, scores: Scores | None = None) -> dict:
    """Predict every text of `data` with `adapter` and score the predictions and their confidence (`scores`: what
    `score` already returned for these arguments, to predict only once when the caller needs them too)."""
    if scores is None:
        scores = score(predictor, data, adapter, strip=strip, batch_size=batch_size, progress=progress)
    info = predictor.adapters[scores.adapter]
    predicted = scores.probs.argmax(axis=1).tolist()
    report = classification_report(scores.labels.tolist(), predicted, scores.label_names)
    report.update(adapter=info.name, data=str(data.path), strip_emoticons=strip)
    if strip:
        report["texts_only_emoticons"] = scores.texts_only_emoticons
    if scores.windows is not None:
        long_text = predictor.long_text
        report.update(long_text=long_text.mode, stride=long_text.step(window_width(predictor.tokenizer,
                                                                                   info.max_length)),
                      combine=long_text.combine, texts_in_windows=int((scores.windows > 1).sum()),
                      windows=int(scores.windows.sum()))
    report.update(temperature=info.temperature, calibrated=bool(predictor.calibrated), **calibration_report(scores))
    return report
