"""The predictor contract both backends implement (torch + PEFT, ONNX Runtime), and the steps they share.

Texts are sorted by length and padded per batch, so a batch costs what its texts cost; results come
back in input order. A backend supplies only its forward pass over one batch (padded in its own tensor type).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..calibration import softmax
from ..errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Prediction:
    text: str
    label: int
    label_name: str
    confidence: float
    probabilities: dict[str, float]
    adapter: str | None = None

    def as_row(self) -> dict:
        row = {"text": self.text, "label": self.label, "label_name": self.label_name,
               "confidence": round(self.confidence, 6)}
        row.update({f"prob_{name}": round(p, 6) for name, p in self.probabilities.items()})
        return row


@dataclass
class AdapterInfo:
    name: str
    path: Path
    run: dict = field(repr=False)

    @property
    def label_names(self) -> list[str]:
        return list(self.run["label_names"])

    @property
    def max_length(self) -> int:
        return int(self.run.get("max_length", 128))

    @property
    def temperature(self) -> float:
        """The temperature fitted on the validation split (run.json `temperature`); 1.0 for adapters written
        before calibration existed. Probabilities are softmax(logits / temperature)."""
        return float(self.run.get("temperature", 1.0))


def parse_adapter_specs(specs: Iterable[str | Path]) -> dict[str, Path]:
    """`NAME=DIR` or a bare `DIR` (named after its folder) → {name: dir}, in the given order.

    A spec that is an existing path is always a bare `DIR`, even with a `=` in it (`runs/lr=5e-4/adapter`).
    """
    adapters: dict[str, Path] = {}
    for spec in specs:
        spec = str(spec)
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).exists():
            path = spec
            name = Path(spec.rstrip("/")).name or Path(spec).resolve().name or f"adapter{len(adapters) + 1}"
        if not name:
            raise UserError(f"--adapter {spec!r}: the adapter name is empty")
        if name in adapters:
            raise UserError(f"--adapter {spec!r}: the name {name!r} is given twice")
        adapters[name] = Path(path)
    return adapters


def count_truncated(tokenizer, texts: Sequence[str], max_length: int) -> int:
    """How many of `texts` are longer than `max_length` tokens, so that prediction sees only their start.

    A WordPiece token covers at least one character and [CLS] and [SEP] take two places, so only texts of
    more than `max_length - 2` characters need tokenizing.
    """
    long = [t for t in texts if len(t) + 2 > max_length]
    if not long:
        return 0
    ids = tokenizer(long, truncation=True, max_length=max_length + 1, return_attention_mask=False)["input_ids"]
    return sum(len(x) > max_length for x in ids)


def check_temperature(run: dict, path: Path) -> None:
    """Refuse a `temperature` in run.json (or export.json) that is not a positive finite number."""
    t = run.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t <= 0:
        raise UserError(f"{path}: the temperature {t!r} in its settings is not a positive number")


def check_texts(texts: Sequence[str]) -> None:
    """Refuse a text that is not a string or holds only whitespace (row numbers count from 1)."""
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"text {i + 1} is empty")


def build_predictions(texts: Sequence[str], probs: np.ndarray, info: AdapterInfo) -> list[Prediction]:
    """One `Prediction` a row of `probs` (the argmax is the label), labelled with `info`'s label names."""
    names = info.label_names
    out = []
    for text, p in zip(texts, probs):
        k = int(p.argmax())
        out.append(Prediction(text=text, label=k, label_name=names[k], confidence=float(p[k]),
                              probabilities={n: float(v) for n, v in zip(names, p)}, adapter=info.name))
    return out


class BasePredictor(ABC):
    """Named adapters, each with its label names, max length and temperature, behind one prediction interface.

    A backend sets `tokenizer`, `adapters`, `default` and `calibrated`, and implements `forward` (the logits of
    one batch, which it pads); it may override `routing` (what a forward pass needs held or selected) and `loaded`.
    """

    tokenizer: PreTrainedTokenizerBase
    adapters: dict[str, AdapterInfo]
    default: str | None
    # Probabilities are softmax(logits / T) with each adapter's fitted temperature T; False gives the raw
    # softmax(logits). A plain attribute: set it at any time (`--no-calibration`).
    calibrated: bool

    @abstractmethod
    def forward(self, ids: list[list[int]], adapter_names: list[str] | None) -> np.ndarray:
        """Raw float32 logits of one batch of token ids (unpadded), each row through its adapter in
        `adapter_names`, or all through the selected one when None."""

    def routing(self, adapter_names: Sequence[str]) -> AbstractContextManager[bool]:
        """Held around the forward passes of one call: yields whether all rows go through one adapter (then
        `forward` gets no adapter names). A backend with one adapter needs nothing held."""
        return nullcontext(True)

    def loaded(self) -> str:
        """What the refusal of an unknown adapter name says is there."""
        return f"loaded: {', '.join(self.adapters)}"

    def _require(self, name: str) -> AdapterInfo:
        if name not in self.adapters:
            raise UserError(f"unknown adapter {name!r} ({self.loaded()})")
        return self.adapters[name]

    def route(self, texts: Sequence[str], adapters: Sequence[str | None]) -> list[str]:
        """Each text's adapter name (None or '' → the default one), refusing an unknown one by its row."""
        if len(adapters) != len(texts):
            raise UserError(f"{len(texts)} texts but {len(adapters)} adapter names; give one per text")
        names = [a or self.default for a in adapters]
        for i, name in enumerate(names):
            if name not in self.adapters:
                raise UserError(f"row {i + 1}: unknown adapter {name!r} ({self.loaded()})")
        return names

    def temperature(self, adapter: str | None = None, calibrated: bool | None = None) -> float:
        """The temperature `adapter`'s probabilities are divided by: its fitted one, or 1 when uncalibrated
        (`calibrated` None: this predictor's setting)."""
        info = self._require(adapter or self.default)
        return info.temperature if (self.calibrated if calibrated is None else calibrated) else 1.0

    def predict_logits(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                       progress: bool = False) -> np.ndarray:
        """Raw logits (before any temperature), shape (len(texts), number of labels of `adapter`), in input
        order."""
        name = adapter or self.default
        info = self._require(name)
        return self.batched_logits(texts, [name] * len(texts), info.max_length, batch_size, len(info.label_names),
                                   progress)

    def predict_proba(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                      progress: bool = False, calibrated: bool | None = None) -> np.ndarray:
        """Class probabilities, shape (len(texts), number of labels of `adapter`), in input order:
        softmax(logits / T), T the adapter's temperature when calibrated (`calibrated` None: this predictor's
        setting), else 1."""
        temperature = self.temperature(adapter, calibrated)
        logits = self.predict_logits(texts, adapter, batch_size, progress)
        return softmax(logits, temperature).astype(np.float32)

    def predict(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                progress: bool = False, calibrated: bool | None = None) -> list[Prediction]:
        name = adapter or self.default
        probs = self.predict_proba(texts, name, batch_size, progress, calibrated)
        return build_predictions(texts, probs, self.adapters[name])

    def batched_logits(self, texts: Sequence[str], adapter_names: list[str], max_length: int, batch_size: int,
                       num_labels: int, progress: bool = False) -> np.ndarray:
        """Raw logits (float32, input order) of `texts`, each through its adapter in `adapter_names`."""
        check_texts(texts)
        ids = self.tokenizer(list(texts), truncation=True, max_length=max_length,
                             return_attention_mask=False)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), num_labels), dtype=np.float32)
        with self.routing(adapter_names) as single:
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="predict", unit="batch", disable=not progress, leave=False):
                rows = order[start:start + batch_size]
                out[rows] = self.forward([ids[i] for i in rows], None if single else [adapter_names[i] for i in rows])
        return out
