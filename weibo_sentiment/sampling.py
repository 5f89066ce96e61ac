"""What each epoch draws, as a pure function of (seed, epoch) rather than of the global torch RNG, so that a run
resumed in the middle of an epoch draws exactly what an uninterrupted one would: the length-grouped batch order and
which training texts lose their emoticons."""

from __future__ import annotations

import logging

import numpy as np
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from .batches import encode
from .emoticons import strip_emoticons

logger = logging.getLogger(__name__)


class EpochSeededLengthSampler(LengthGroupedSampler):
    """`LengthGroupedSampler` whose order comes from `seed + epoch` rather than the global torch RNG: a run resumed
    in the middle of an epoch sees the same batches as one that was never stopped (the global RNG also drives
    dropout, and its state at the start of the epoch is not in the checkpoint)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int, dataset=None):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed, self.epoch, self.dataset = seed, 0, dataset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        # accelerate passes the epoch to the dataset too, but not in an epoch resumed in its middle (its batch-skipping
        # wrapper hides the dataset): the sampler always gets it, so it passes it on (EmoticonDropout)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class EmoticonDropout(torch.utils.data.Dataset):
    """Training examples whose emoticons (`strip_emoticons`: the definition of `evaluate --strip-emoticons`) are
    removed, each time an example is drawn, with probability `p`: a different subset every epoch.

    Both variants are tokenized once. Whether example `i` is stripped in epoch `e` is a pure function of
    (seed, e, i), the i-th number of a NumPy generator seeded with (seed, e), never of the global torch RNG: a run
    resumed in the middle of an epoch (`--resume`) draws exactly what an uninterrupted one would. The epoch comes
    from `EpochSeededLengthSampler.set_epoch`, which the Trainer calls before every epoch, resumed ones included.
    A text with no emoticon, or one that would be empty without them, is always drawn as it is. `lengths` are the
    original texts' (the length grouping of batches).
    """

    def __init__(self, original: list[dict], stripped: list[dict | None], p: float, seed: int):
        self.original, self.stripped, self.p, self.seed, self.epoch = original, stripped, p, seed, 0
        self.lengths = [len(x["input_ids"]) for x in original]
        self._mask: tuple[int, np.ndarray] | None = None

    @classmethod
    def build(cls, tokenizer, texts: list[str], labels: list[int], max_length: int, p: float,
              seed: int) -> EmoticonDropout:
        original = encode(tokenizer, texts, labels, max_length)
        without = [strip_emoticons(t) for t in texts]
        changed = [i for i, (t, s) in enumerate(zip(texts, without)) if s and s != t]
        stripped: list[dict | None] = [None] * len(texts)
        encoded = encode(tokenizer, [without[i] for i in changed], [labels[i] for i in changed], max_length)
        for i, example in zip(changed, encoded):
            stripped[i] = example
        emptied = without.count("")
        logger.info("emoticon dropout %g: %d of %d training texts have emoticons (%d are nothing else and are always "
                    "kept whole)", p, len(changed) + emptied, len(texts), emptied)
        return cls(original, stripped, p, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def strips(self, epoch: int) -> np.ndarray:
        """Which examples are drawn without their emoticons in `epoch` (boolean, one per example)."""
        if self._mask is None or self._mask[0] != epoch:
            draws = np.random.default_rng([self.seed, epoch]).random(len(self.original))
            self._mask = epoch, (draws < self.p) & np.array([s is not None for s in self.stripped], dtype=bool)
        return self._mask[1]

    def __len__(self) -> int:
        return len(self.original)

    def __getitem__(self, i: int) -> dict:
        return self.stripped[i] if self.strips(self.epoch)[i] else self.original[i]
