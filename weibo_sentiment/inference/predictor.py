"""The predictor contract both backends implement (torch + PEFT, ONNX Runtime), and the steps they share.

Texts are sorted by length and padded per batch, so a batch costs what its texts cost; results come
back in input order. A backend supplies only its forward pass over one batch (padded in its own tensor type).
A text longer than the max length is truncated, or read whole in overlapping windows (`windows.LongText`) that
share the sorted batches of all texts and are combined per text.
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

from ..errors import UserError
from .windows import LongText, WindowScores, tokenize_windows

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
    windows: int = 1  # windows the text was read in (`LongText("window")`); 1 when it fits or is truncated

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


def build_predictions(texts: Sequence[str], probs: np.ndarray, info: AdapterInfo,
                      windows: Sequence[int] | None = None) -> list[Prediction]:
    """One `Prediction` a row of `probs` (the argmax is the label), labelled with `info`'s label names;
    `windows`: how many windows each text was read in (None: one each)."""
    names = info.label_names
    out = []
    for i, (text, p) in enumerate(zip(texts, probs)):
        k = int(p.argmax())
        out.append(Prediction(text=text, label=k, label_name=names[k], confidence=float(p[k]),
                              probabilities={n: float(v) for n, v in zip(names, p)}, adapter=info.name,
                              windows=1 if windows is None else int(windows[i])))
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
    # How texts longer than an adapter's max length are read (truncated, or whole in windows), unless a call
    # says otherwise. A plain attribute too (`--long-text`, `--stride`).
    long_text: LongText = LongText()

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

    def predict_windows(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                        progress: bool = False, long_text: LongText | str | None = None) -> WindowScores:
        """The raw logits of every window `texts` are read in with `adapter` (`long_text` None: this predictor's
        setting; under truncation one window per text), to combine per text with `WindowScores.probabilities`."""
        name = adapter or self.default
        info = self._require(name)
        return self.batched_windows(texts, [name] * len(texts), info.max_length, batch_size, len(info.label_names),
                                    progress, LongText.of(long_text, self.long_text))

    def predict_logits(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                       progress: bool = False) -> np.ndarray:
        """Raw logits (before any temperature), shape (len(texts), number of labels of `adapter`), in input
        order, of each text's first max-length tokens. Windows have no one logit row per text: with
        `long_text` window, `predict_windows` gives theirs."""
        return self.predict_windows(texts, adapter, batch_size, progress, LongText()).logits

    def predict_proba(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                      progress: bool = False, calibrated: bool | None = None,
                      long_text: LongText | str | None = None) -> np.ndarray:
        """Class probabilities, shape (len(texts), number of labels of `adapter`), in input order:
        softmax(logits / T), T the adapter's temperature when calibrated (`calibrated` None: this predictor's
        setting), else 1; a text read in several windows (`long_text`) gets their combination."""
        return self.predict_scored(texts, adapter, batch_size, progress, calibrated, long_text)[0]

    def predict(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                progress: bool = False, calibrated: bool | None = None,
                long_text: LongText | str | None = None) -> list[Prediction]:
        name = adapter or self.default
        probs, windows = self.predict_scored(texts, name, batch_size, progress, calibrated, long_text)
        return build_predictions(texts, probs, self.adapters[name], windows)

    def predict_scored(self, texts: Sequence[str], adapter: str | None, batch_size: int, progress: bool,
                       calibrated: bool | None, long_text: LongText | str | None) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities as `predict_proba` gives them, the number of windows each text was read in)."""
        temperature = self.temperature(adapter, calibrated)
        scores = self.predict_windows(texts, adapter, batch_size, progress, long_text)
        return scores.probabilities(temperature).astype(np.float32), scores.windows

    def batched_windows(self, texts: Sequence[str], adapter_names: list[str], max_length: int, batch_size: int,
                        num_labels: int, progress: bool = False,
                        long_text: LongText | None = None) -> WindowScores:
        """Raw logits (float32) of the windows of `texts`, each through its adapter in `adapter_names`: the
        windows of all texts are sorted by length and padded per batch together, one forward pass a batch."""
        check_texts(texts)
        long_text = long_text or self.long_text
        ids, owner = tokenize_windows(self.tokenizer, texts, max_length, long_text)
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(ids), num_labels), dtype=np.float32)
        with self.routing(adapter_names) as single:
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="predict", unit="batch", disable=not progress, leave=False):
                rows = order[start:start + batch_size]
                out[rows] = self.forward([ids[i] for i in rows],
                                         None if single else [adapter_names[owner[i]] for i in rows])
        return WindowScores(out, owner, len(texts), long_text.combine)
