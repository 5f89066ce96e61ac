"""The torch backend: one base model and any number of LoRA adapters, each with its own classifier head."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors import safe_open

from ..adapter_io import WEIGHTS_FILE, base_fingerprint, read_run
from ..errors import UserError
from ..modeling import DEFAULT_MODEL_DIR, load_classifier, load_tokenizer, resolve_base_model
from .predictor import AdapterInfo, BasePredictor, Prediction, build_predictions, check_temperature, parse_adapter_specs
from .windows import LongText

logger = logging.getLogger(__name__)


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


class Predictor(BasePredictor):
    """A base model with named LoRA adapters; thread-safe, so a server may share one.

    While only one adapter is loaded, its LoRA weights are merged into the base for prediction (set
    `merge_single = False` to keep them apart): a forward pass then costs what the plain model costs.
    Loading, removing or switching adapters unmerges first, so other adapters always see the pure base.
    """

    def __init__(self, base_dir: Path, device: torch.device | str | None = None, base_model: str | None = None,
                 calibrated: bool = True):
        self.base_dir = Path(base_dir)
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

    # ---- prediction ---------------------------------------------------------------------------------
    def predict_routed(self, texts: Sequence[str], adapters: Sequence[str | None], batch_size: int = 32,
                       progress: bool = False, calibrated: bool | None = None,
                       long_text: LongText | str | None = None) -> list[Prediction]:
        """Answer each text with its own adapter (None or '' → the default one), in input order.

        Rows whose adapters have heads of one shape (and one max length) share forward passes: PEFT's
        `adapter_names` mixed batch routes every row through its own LoRA weights and head. Other rows
        are grouped apart, since one forward pass cannot return logits of different widths. Each row's
        logits are divided by its own adapter's temperature.
        """
        long_text = LongText.of(long_text, self.long_text)
        with self._lock:
            names = self.route(texts, adapters)
            groups: dict[tuple[int, int], list[int]] = {}
            for i, name in enumerate(names):
                info = self.adapters[name]
                groups.setdefault((len(info.label_names), info.max_length), []).append(i)
            out: list[Prediction | None] = [None] * len(texts)
            for (num_labels, max_length), rows in groups.items():
                scores = self.batched_windows([texts[i] for i in rows], [names[i] for i in rows], max_length,
                                              batch_size, num_labels, progress, long_text)
                temperatures = np.array([self.temperature(names[i], calibrated) for i in rows])
                probs = scores.probabilities(temperatures).astype(np.float32)
                for i, p, n in zip(rows, probs, scores.windows, strict=True):
                    out[i] = build_predictions([texts[i]], p[None], self.adapters[names[i]], [n])[0]
        return out

    @contextmanager
    def routing(self, adapter_names: Sequence[str]) -> Iterator[bool]:
        with torch.inference_mode(), self._lock:
            single = len(set(adapter_names)) == 1
            if single:
                self._select(adapter_names[0])
            yield single
            if single and self.default:
                self._select(self.default)

    def forward(self, ids: list[list[int]], adapter_names: list[str] | None) -> np.ndarray:
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if adapter_names is not None:
            batch["adapter_names"] = [self._keys[name] for name in adapter_names]
        return self.model(**batch).logits.float().cpu().numpy()
