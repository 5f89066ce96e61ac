"""Metrics on a labelled file: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from .data import LabelledData, strip_emoticons
from .errors import file_error
from .inference import Predictor


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


def evaluate(predictor: Predictor, data: LabelledData, adapter: str | None = None,
             strip: bool = False, batch_size: int = 64, progress: bool = False) -> dict:
    """Predict every text of `data` with `adapter` and score the predictions."""
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
    probs = predictor.predict_proba(texts, adapter, batch_size=batch_size, progress=progress)
    predicted = probs.argmax(axis=1).tolist()
    report = classification_report(data.labels, predicted, info.label_names)
    report.update(adapter=info.name, data=str(data.path), strip_emoticons=strip)
    if strip:
        report["texts_only_emoticons"] = emptied
    return report
