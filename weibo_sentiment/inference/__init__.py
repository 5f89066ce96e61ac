"""Prediction with one base model and any number of adapters, on torch (`Predictor`) or ONNX Runtime
(`OnnxPredictor`), both behind one contract (`predictor.BasePredictor`); `load_predictor` picks the backend."""

from .backends import BACKENDS, load_predictor
from .onnx_predictor import OnnxPredictor
from .predictor import (
    AdapterInfo,
    BasePredictor,
    Prediction,
    check_temperature,
    count_truncated,
    parse_adapter_specs,
)
from .torch_predictor import Predictor, default_device
from .windows import COMBINE_RULES, LONG_TEXT_MODES, LongText, WindowScores

__all__ = [
    "BACKENDS", "COMBINE_RULES", "LONG_TEXT_MODES", "AdapterInfo", "BasePredictor", "LongText", "OnnxPredictor",
    "Prediction", "Predictor", "WindowScores", "check_temperature", "count_truncated", "default_device",
    "load_predictor", "parse_adapter_specs",
]
