"""weibo-sentiment: Chinese Weibo sentiment with GPT-2 + LoRA (PEFT).

The library API, in data-flow order::

    from weibo_sentiment import load_labelled, init_model, TrainConfig, train, Predictor, evaluate, report
"""

from .adaptation import AdaptConfig, adapt_base
from .data import LabelledData, load_labelled, read_texts
from .emoticons import strip_emoticons
from .errors import UserError
from .evaluation import evaluate
from .inference import Prediction, Predictor
from .modeling import init_model, load_classifier, load_tokenizer, resolve_base_model
from .shares import report
from .training import TrainConfig, train

__all__ = [
    "AdaptConfig", "adapt_base",
    "LabelledData", "Prediction", "Predictor", "TrainConfig", "UserError", "evaluate", "init_model",
    "load_classifier", "load_labelled", "load_tokenizer", "read_texts", "report", "resolve_base_model",
    "strip_emoticons", "train",
]
__version__ = "0.1.0"
