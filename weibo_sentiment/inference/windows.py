"""Long texts read whole: a text's tokens in overlapping windows, and one score per text from its windows' scores.

With `LongText("window")` a text longer than the adapter's max length is cut into windows of max-length tokens
([CLS] and [SEP] included, as a short text has them) whose starts lie `stride` tokens apart (the tokenizer's own
overflowing-tokens split, the one transformers' question-answering pipeline uses). Every window goes through the
model like a short text, in the same sorted, padded batches, and a text's windows are combined into one score.
A text that fits in one window is read exactly as truncation reads it: the same token ids, the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..calibration import softmax
from ..errors import UserError

LONG_TEXT_MODES = ("truncate", "window")
# mean: the mean of the windows' calibrated probabilities (the default; see docs/long-text.md for the measurement
# against the others); mean-logits: softmax of the windows' mean logits; max-confidence: the probabilities of the
# window that is surest of its label.
COMBINE_RULES = ("mean", "mean-logits", "max-confidence")


@dataclass(frozen=True)
class LongText:
    """How a text longer than the max length is read: `truncate` (its first max-length tokens, as ever) or
    `window` (all of it, in windows `stride` tokens apart, combined by `combine`)."""

    mode: str = "truncate"
    # Tokens from one window's start to the next. None: half a window, so each token away from the text's ends
    # lies in two windows, and in one of them at least a quarter window from either edge: a phrase that one
    # window cuts at its edge the next reads whole, with context on both sides. That costs two forward passes per
    # window's worth of text; a smaller stride buys more context at window/stride passes, a larger one loses it.
    stride: int | None = None
    combine: str = "mean"

    def __post_init__(self) -> None:
        if self.mode not in LONG_TEXT_MODES:
            raise UserError(f"--long-text {self.mode!r}: choose one of {', '.join(LONG_TEXT_MODES)}")
        if self.combine not in COMBINE_RULES:
            raise UserError(f"unknown window combining rule {self.combine!r}: choose one of "
                            f"{', '.join(COMBINE_RULES)}")
        if self.stride is not None and (isinstance(self.stride, bool) or not isinstance(self.stride, int)
                                        or self.stride < 1):
            raise UserError(f"--stride {self.stride!r}: must be a whole number of tokens, at least 1")

    @classmethod
    def of(cls, value: LongText | str | None, default: LongText) -> LongText:
        """`value` as a LongText: None → `default`; a mode name → that mode with `default`'s stride and rule."""
        if value is None:
            return default
        if isinstance(value, LongText):
            return value
        return cls(value, stride=default.stride, combine=default.combine)

    @property
    def windowed(self) -> bool:
        return self.mode == "window"

    def step(self, width: int) -> int:
        """Tokens between window starts for windows of `width` text tokens; a stride of a window or more (no
        overlap, or text skipped) is refused."""
        stride = self.stride if self.stride is not None else width // 2
        if width < 2 or stride >= width:
            raise UserError(f"--stride {stride}: must be less than a window's {width} text tokens (the max "
                            f"length less [CLS] and [SEP]), so that windows overlap")
        return stride

    def report(self, texts: int, max_length: int, width: int) -> str:
        """The line that says what happened to `texts` texts longer than `max_length` tokens (`width`: a window's
        text tokens): truncated (the message as it always was), or read whole in windows."""
        if not self.windowed:
            return f"{texts} text(s) longer than {max_length} tokens were truncated to {max_length}"
        return (f"{texts} text(s) longer than {max_length} tokens were read whole, in overlapping windows of "
                f"{max_length} tokens {self.step(width)} apart")


def window_width(tokenizer, max_length: int) -> int:
    """Text tokens in a window of `max_length` tokens: the max length less the special tokens ([CLS], [SEP])."""
    return max_length - tokenizer.num_special_tokens_to_add(pair=False)


def tokenize_windows(tokenizer, texts: Sequence[str], max_length: int,
                     long_text: LongText) -> tuple[list[list[int]], np.ndarray]:
    """Token ids of every window (unpadded) and the index of the text each reads (ascending, a text's windows
    in reading order). Truncation gives each text one window: its first `max_length` tokens."""
    if not long_text.windowed:
        ids = tokenizer(list(texts), truncation=True, max_length=max_length, return_attention_mask=False)["input_ids"]
        return ids, np.arange(len(ids))
    width = window_width(tokenizer, max_length)
    step = long_text.step(width)
    # The tokenizer's `stride` is the overlap: the tokens a window repeats from the one before it.
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, stride=width - step,
                    return_overflowing_tokens=True, return_attention_mask=False)
    return enc["input_ids"], np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)


@dataclass
class WindowScores:
    """The raw logits of every window and the text each window reads; `probabilities` combines them per text."""

    logits: np.ndarray  # (windows, labels), float32, before any temperature
    owner: np.ndarray  # (windows,): the text each window reads, ascending
    texts: int
    combine: str = "mean"

    @property
    def windows(self) -> np.ndarray:
        """How many windows each text was read in (1 for every text under truncation)."""
        return np.bincount(self.owner, minlength=self.texts)

    def probabilities(self, temperature: float | np.ndarray = 1.0) -> np.ndarray:
        """Each text's probabilities (float64, (texts, labels)): its windows' softmax(logits / T) combined by
        `combine`; `temperature` is one for all texts or one per text. A text read in one window gets exactly
        softmax(logits / T) of that window, as truncation gives it."""
        t = np.asarray(temperature, dtype=np.float64)
        if len(self.owner) == self.texts:  # one window each: nothing to combine
            return softmax(self.logits, t)
        per_window = t[self.owner] if t.ndim == 1 else t
        counts = self.windows
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        if self.combine == "mean-logits":
            mean = np.add.reduceat(self.logits.astype(np.float64), starts) / counts[:, None]
            return softmax(mean, t)
        probs = softmax(self.logits, per_window)
        if self.combine == "mean":
            return np.add.reduceat(probs, starts) / counts[:, None]
        # max-confidence: per text, the window whose top probability is highest (the first such window on a tie)
        order = np.lexsort((-probs.max(axis=1), self.owner))
        return probs[order[starts]]
