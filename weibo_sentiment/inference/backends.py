"""The choice of backend: torch over adapters, or ONNX Runtime over an export (kept, or made for one run)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from ..modeling import DEFAULT_MODEL_DIR
from .onnx_predictor import OnnxPredictor
from .predictor import parse_adapter_specs
from .torch_predictor import Predictor

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")


def load_predictor(
    adapters: Sequence[str | Path] | None = None,
    *,
    backend: str = "torch",
    model: str | Path | None = None,
    base_model: str | Path | None = None,
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    device: str | None = None,
    calibrated: bool = True,
    allow_other_base: bool = False,
) -> Predictor | OnnxPredictor:
    """The predictor for a backend: torch over adapters, or ONNX Runtime over an export.

    `model` is an export directory. `backend` onnx/onnx-int8 with an adapter exports it to a temporary
    directory first (seconds to a minute for the full model); `weibo-sentiment export` keeps one for reuse.
    `calibrated=False` gives raw probabilities (temperature 1) instead of calibrated ones.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if model is not None:
        if adapters:
            raise UserError("pass either --model (an exported directory) or --adapter, not both")
        predictor = OnnxPredictor(model, calibrated=calibrated)
        if backend != "torch" and backend != predictor.backend:
            raise UserError(f"{model} holds a {predictor.precision} export, not what --backend {backend} "
                            f"asks for; export it {'with' if backend == 'onnx-int8' else 'without'} --int8")
        return predictor
    adapters = list(adapters or ["best_weibo_sentiment_lora"])
    if backend == "torch":
        return Predictor.from_adapters(adapters, base_model=base_model, model_dir=model_dir, device=device,
                                       calibrated=calibrated, allow_other_base=allow_other_base)
    if len(adapters) != 1:
        raise UserError(f"--backend {backend} runs one adapter merged into its base; pass one --adapter")
    if device not in (None, "cpu"):
        raise UserError(f"--backend {backend} runs on the CPU; drop --device {device}")
    return export_for_run(adapters[0], int8=backend == "onnx-int8", calibrated=calibrated, base_model=base_model,
                          model_dir=model_dir, allow_other_base=allow_other_base)


def export_for_run(
    adapter: str | Path,
    *,
    int8: bool,
    calibrated: bool,
    base_model: str | Path | None,
    model_dir: str | Path,
    allow_other_base: bool,
) -> OnnxPredictor:
    """An ONNX Runtime predictor over `adapter` (`NAME=DIR` or `DIR`), exported to a temporary directory."""
    # Imported here so that the torch path (CLI, server, Ray scorer) never loads the exporter.
    from ..exporters.onnx import export_onnx

    (name, path), = parse_adapter_specs([adapter]).items()
    logger.info("exporting %s to ONNX for this run (keep an export with `weibo-sentiment export`)", path)
    with tempfile.TemporaryDirectory(prefix="weibo-sentiment-onnx-") as tmp:
        out = export_onnx(path, Path(tmp) / "export", int8=int8, name=name,
                          base_model=base_model, model_dir=model_dir, allow_other_base=allow_other_base)
        return OnnxPredictor(out, calibrated=calibrated)  # the session holds the model in memory; the files may go
