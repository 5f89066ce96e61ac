"""The ONNX Runtime backend: an export directory (`weibo-sentiment export`) predicted on the CPU.

An export directory is self-contained: `model.onnx` (fp32, or int8 with dynamic quantization), the
tokenizer files and `export.json` (label names, max length, provenance). It needs neither PEFT nor the
base model directory to predict, and gives the same `Prediction`s as the torch `Predictor`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..modeling import load_tokenizer
from ..output import EXPORT_FILE
from .predictor import AdapterInfo, BasePredictor, Prediction, check_temperature
from .windows import LongText

MODEL_FILE = "model.onnx"


def read_export(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such exported model directory")
    for f in (MODEL_FILE, EXPORT_FILE):
        if not (model_dir / f).is_file():
            raise UserError(f"{model_dir}: not a weibo-sentiment export ({f} is missing); "
                            "write one with `weibo-sentiment export`")
    try:
        return json.loads((model_dir / EXPORT_FILE).read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{model_dir / EXPORT_FILE}: not valid JSON ({e})") from None


class OnnxPredictor(BasePredictor):
    """An exported model on ONNX Runtime (CPU), with `Predictor`'s prediction interface.

    One session serves any number of threads.
    """

    def __init__(self, model_dir: str | Path, threads: int | None = None, calibrated: bool = True):
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.calibrated = calibrated
        meta = read_export(self.model_dir)
        check_temperature(meta, self.model_dir / EXPORT_FILE)
        self.precision = meta.get("precision", "fp32")
        self.backend = "onnx-int8" if self.precision == "int8" else "onnx"
        self.tokenizer = load_tokenizer(self.model_dir)
        options = ort.SessionOptions()
        # One thread per physical core (torch's default count); more only contend for the same cores.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.model_dir / MODEL_FILE), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for a corrupt or foreign file
            raise UserError(f"{self.model_dir / MODEL_FILE}: ONNX Runtime cannot load it ({e})") from None
        name = meta.get("adapter") or self.model_dir.name
        self.adapters = {name: AdapterInfo(name=name, path=self.model_dir, run=meta)}
        self.default = name
        self.device = f"cpu (ONNX Runtime, {self.precision})"

    def loaded(self) -> str:
        return f"this export holds only {self.default!r}"

    # The one adapter is baked into the export; these keep `Predictor`'s surface for callers.
    def use(self, name: str) -> None:
        self._require(name or self.default)

    def predict_routed(self, texts: Sequence[str], adapters: Sequence[str | None], batch_size: int = 32,
                       progress: bool = False, calibrated: bool | None = None,
                       long_text: LongText | str | None = None) -> list[Prediction]:
        self.route(texts, adapters)
        return self.predict(texts, batch_size=batch_size, progress=progress, calibrated=calibrated,
                            long_text=long_text)

    def forward(self, ids: list[list[int]], adapter_names: list[str] | None) -> np.ndarray:
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="np")
        feed = {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        return self.session.run(None, feed)[0].astype(np.float32)
