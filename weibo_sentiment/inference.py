"""Prediction with one base model and any number of LoRA adapters, each with its own classifier head.

Texts are sorted by length and padded per batch, so a batch costs what its texts cost; results come
back in input order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors import safe_open
from tqdm.auto import tqdm

from .adapter_io import WEIGHTS_FILE, base_fingerprint, read_run
from .calibration import softmax
from .errors import UserError
from .modeling import DEFAULT_MODEL_DIR, load_classifier, load_tokenizer, resolve_base_model

logger = logging.getLogger(__name__)


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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _base_dir_from_run(run: dict, model_dir: str | Path) -> Path:
    recorded = run.get("base_model_dir")
    if recorded and Path(recorded, "config.json").is_file():
        return Path(recorded)
    return resolve_base_model(run["base_model"], model_dir)


def _head_rows(path: Path) -> int:
    """The number of labels of the classifier head stored in an adapter's weights."""
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        for key in f.keys():
            if key.endswith("score.weight"):
                return f.get_slice(key).get_shape()[0]
    raise UserError(f"{path}: the adapter has no classifier head (score.weight)")


class Predictor:
    """A base model with named LoRA adapters; thread-safe, so a server may share one.

    While only one adapter is loaded, its LoRA weights are merged into the base for prediction (set
    `merge_single = False` to keep them apart): a forward pass then costs what the plain model costs.
    Loading, removing or switching adapters unmerges first, so other adapters always see the pure base.
    """

    def __init__(self, base_dir: Path, device: torch.device | str | None = None, base_model: str | None = None,
                 calibrated: bool = True):
        self.base_dir = Path(base_dir)
        # Probabilities are softmax(logits / T) with each adapter's fitted temperature T; False gives the raw
        # softmax(logits). A plain attribute: set it at any time (`--no-calibration`).
        self.calibrated = calibrated
        self.base_model = base_model or str(base_dir)
        self.device = torch.device(device) if device is not None else default_device()
        self.tokenizer = load_tokenizer(self.base_dir)
        self.fingerprint = base_fingerprint(self.base_dir)
        self.adapters: dict[str, AdapterInfo] = {}
        # PEFT matches adapter names inside parameter keys by substring, and keeps them as ModuleDict keys, so
        # a user's name (`a`, `lo`, `to`, `half`, `x__incoming`) never reaches it: each adapter is held under
        # an internal key of its own (see `fresh_key`), and every PEFT call goes through `key(name)`.
        self._keys: dict[str, str] = {}
        self._next_key = 0
        self.default: str | None = None
        self.model: PeftModel | None = None
        self._lock = threading.RLock()
        self.merge_single = True
        self._merged: str | None = None

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_adapters(
        cls,
        adapters: Mapping[str, str | Path] | Sequence[str | Path],
        *,
        base_model: str | Path | None = None,
        model_dir: str | Path = DEFAULT_MODEL_DIR,
        device: torch.device | str | None = None,
        calibrated: bool = True,
        allow_other_base: bool = False,
    ) -> Predictor:
        """Load adapters (`{name: dir}` or a list of `NAME=DIR`/`DIR`) onto their base model.

        The base comes from the first adapter's `run.json` unless `base_model` is given. Every adapter's recorded
        base fingerprint must match the loaded base, also one named by `base_model` (an adapted base differs from
        its parent); `allow_other_base=True` loads a mismatching adapter anyway, with a warning.
        `calibrated=False` gives raw probabilities (temperature 1) instead of the adapters' calibrated ones.
        """
        specs = dict(adapters) if isinstance(adapters, Mapping) else parse_adapter_specs(adapters)
        if not specs:
            raise UserError("no adapter given: pass --adapter DIR")
        first = read_run(next(iter(specs.values())))
        if base_model is not None:
            base_dir, base_name = resolve_base_model(base_model, model_dir), str(base_model)
        else:
            base_dir, base_name = _base_dir_from_run(first, model_dir), first["base_model"]
        predictor = cls(base_dir, device=device, base_model=base_name, calibrated=calibrated)
        for name, path in specs.items():
            predictor.add_adapter(name, path, check_base=not allow_other_base)
        return predictor

    def key(self, name: str) -> str:
        """The internal key PEFT holds the adapter `name` under."""
        self._require(name)
        return self._keys[name]

    def fresh_key(self) -> str:
        """A PEFT adapter key that no adapter uses: `ws0_`, `ws1_`, ... (no dot, no module attribute, not part
        of `lora_` or of a GPT-2 module name, and none is a substring of another)."""
        key = f"ws{self._next_key}_"
        self._next_key += 1
        return key

    def _check(self, name: str, path: Path, check_base: bool, override_hint: str | None) -> AdapterInfo:
        if not isinstance(name, str) or not name:
            raise UserError(f"adapter name {name!r} is empty; name it with --adapter NAME={path}")
        run = read_run(path)
        if run.get("base_fingerprint") not in (None, self.fingerprint):
            if check_base:
                raise UserError(
                    f"adapter {name!r} ({path}) was trained on base model {run.get('base_model')!r}, "
                    f"not on the loaded base {self.base_model!r}; adapters on one base must share it "
                    f"(fingerprint {run.get('base_fingerprint')}, loaded {self.fingerprint}"
                    + (f"; {override_hint})" if override_hint else ")")
                )
            logger.warning("--allow-other-base: adapter %r was trained on base model %r (fingerprint %s), not on the "
                           "loaded base %r (fingerprint %s); its predictions may be wrong", name,
                           run.get("base_model"), run.get("base_fingerprint"), self.base_model, self.fingerprint)
        rows = _head_rows(path)
        if rows != len(run["label_names"]):
            raise UserError(f"{path}: run.json names {len(run['label_names'])} labels but the head has {rows}")
        check_temperature(run, path)
        return AdapterInfo(name=name, path=path, run=run)

    def add_adapter(self, name: str, path: str | Path, check_base: bool = True,
                    override_hint: str | None = "--allow-other-base loads it anyway") -> AdapterInfo:
        """Load an adapter; an existing name is replaced in place (hot swap) without touching the base.
        `override_hint` ends the refusal of an adapter of another base (None where no override exists)."""
        path = Path(path)
        info = self._check(name, path, check_base, override_hint)
        with self._lock:
            self._unmerge()
            key = self.fresh_key()  # a hot swap loads beside the old weights, then drops them
            if self.model is None:
                base = load_classifier(self.base_dir, info.label_names, self.tokenizer)
                self.model = PeftModel.from_pretrained(base, str(path), adapter_name=key)
                self.model.to(self.device).eval()
            else:
                try:
                    self._load(key, info)
                except BaseException:
                    if key in self.model.peft_config:
                        self.model.delete_adapter(key)
                    heads = self.model.base_model.model.score.modules_to_save
                    if key in heads:
                        del heads[key]
                    raise
            old = self._keys.get(name)
            self._keys[name] = key
            self.adapters[name] = info
            self.default = self.default or name
            self.model.set_adapter(self.key(self.default))
            if old is not None:  # deleted once inactive, so PEFT need not pick another active adapter
                self.model.delete_adapter(old)
        logger.info("adapter %r loaded from %s (labels: %s)", name, path, ", ".join(info.label_names))
        return info

    def _load(self, key: str, info: AdapterInfo) -> None:
        # PEFT copies the base's `score` for a new adapter; a task with another label count needs a head of
        # its own shape, which PEFT then fills from the adapter's weights instead of copying.
        wrapper = self.model.base_model.model.score
        hidden = wrapper.original_module.in_features
        if len(info.label_names) != wrapper.original_module.out_features:
            head = torch.nn.Linear(hidden, len(info.label_names), bias=False)
            wrapper.modules_to_save[key] = head.to(self.device)
        self.model.load_adapter(str(info.path), adapter_name=key, is_trainable=False)
        self.model.to(self.device)

    def remove_adapter(self, name: str) -> None:
        with self._lock:
            self._require(name)
            self._unmerge()
            if len(self.adapters) == 1:
                raise UserError(f"cannot remove {name!r}: it is the only adapter loaded")
            key = self._keys.pop(name)
            del self.adapters[name]
            if self.default == name:
                self.default = next(iter(self.adapters))
            self.model.set_adapter(self.key(self.default))
            self.model.delete_adapter(key)  # once inactive, so PEFT need not pick another active adapter

    def use(self, name: str) -> None:
        """Make `name` the adapter used when none is named."""
        with self._lock:
            self._require(name)
            self._unmerge()
            self.default = name
            self.model.set_adapter(self.key(name))

    def _unmerge(self) -> None:
        if self._merged is not None:
            self.model.unmerge_adapter()
            self._merged = None

    def _select(self, name: str) -> None:
        """Activate `name` for a forward pass, merged into the base when it is the only adapter loaded."""
        if self._merged == name:
            return  # PEFT's set_adapter would unmerge it again
        self._unmerge()
        self.model.set_adapter(self.key(name))
        if self.merge_single and len(self.adapters) == 1:
            self.model.merge_adapter([self.key(name)])
            self._merged = name

    def _require(self, name: str) -> AdapterInfo:
        if name not in self.adapters:
            raise UserError(f"unknown adapter {name!r} (loaded: {', '.join(self.adapters)})")
        return self.adapters[name]

    # ---- prediction ---------------------------------------------------------------------------------
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
        return self._run(texts, [name] * len(texts), info.max_length, batch_size, len(info.label_names), progress)

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
        return self._to_predictions(texts, probs, self.adapters[name])

    def predict_routed(self, texts: Sequence[str], adapters: Sequence[str | None], batch_size: int = 32,
                       progress: bool = False, calibrated: bool | None = None) -> list[Prediction]:
        """Answer each text with its own adapter (None or '' → the default one), in input order.

        Rows whose adapters have heads of one shape (and one max length) share forward passes: PEFT's
        `adapter_names` mixed batch routes every row through its own LoRA weights and head. Other rows
        are grouped apart, since one forward pass cannot return logits of different widths. Each row's
        logits are divided by its own adapter's temperature.
        """
        if len(adapters) != len(texts):
            raise UserError(f"{len(texts)} texts but {len(adapters)} adapter names; give one per text")
        with self._lock:
            names = [a or self.default for a in adapters]
            groups: dict[tuple[int, int], list[int]] = {}
            for i, name in enumerate(names):
                if name not in self.adapters:
                    loaded = ", ".join(self.adapters)
                    raise UserError(f"row {i + 1}: unknown adapter {name!r} (loaded: {loaded})")
                info = self.adapters[name]
                groups.setdefault((len(info.label_names), info.max_length), []).append(i)
            out: list[Prediction | None] = [None] * len(texts)
            for (num_labels, max_length), rows in groups.items():
                logits = self._run([texts[i] for i in rows], [names[i] for i in rows], max_length, batch_size,
                                   num_labels, progress)
                temperatures = np.array([self.temperature(names[i], calibrated) for i in rows])
                probs = softmax(logits, temperatures).astype(np.float32)
                for i, p in zip(rows, probs, strict=True):
                    out[i] = self._to_predictions([texts[i]], p[None], self.adapters[names[i]])[0]
        return out

    def _to_predictions(self, texts: Sequence[str], probs: np.ndarray, info: AdapterInfo) -> list[Prediction]:
        names = info.label_names
        out = []
        for text, p in zip(texts, probs):
            k = int(p.argmax())
            out.append(Prediction(text=text, label=k, label_name=names[k], confidence=float(p[k]),
                                  probabilities={n: float(v) for n, v in zip(names, p)}, adapter=info.name))
        return out

    @torch.inference_mode()
    def _run(self, texts: Sequence[str], adapter_names: list[str], max_length: int, batch_size: int,
             num_labels: int, progress: bool = False) -> np.ndarray:
        """Raw logits (float32, input order) of `texts`, each through its adapter in `adapter_names`."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"text {i + 1} is empty")
        ids = self.tokenizer(list(texts), truncation=True, max_length=max_length,
                             return_attention_mask=False)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), num_labels), dtype=np.float32)
        with self._lock:
            single = len(set(adapter_names)) == 1
            if single:
                self._select(adapter_names[0])
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="predict", unit="batch", disable=not progress, leave=False):
                rows = order[start:start + batch_size]
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                if not single:
                    batch["adapter_names"] = [self._keys[adapter_names[i]] for i in rows]
                out[rows] = self.model(**batch).logits.float().cpu().numpy()
            if single and self.default:
                self._select(self.default)
        return out
