"""What the Trainer is fed: token ids without padding (padding happens per batch) and a collator that pads each
batch and counts what the padding costs."""

from __future__ import annotations

from transformers import DataCollatorWithPadding


def encode(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> list[dict]:
    """Token ids without padding (padding happens per batch), truncated to `max_length`."""
    ids = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False)["input_ids"]
    if labels is None:
        return [{"input_ids": x} for x in ids]
    return [{"input_ids": x, "labels": y} for x, y in zip(ids, labels)]


class PaddedBatches:
    """`DataCollatorWithPadding` that also counts real and padded tokens, to show what padding costs."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.real_tokens = 0
        self.padded_tokens = 0
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        real, padded = int(batch["attention_mask"].sum()), int(batch["input_ids"].numel())
        self.real_tokens += real
        self.padded_tokens += padded
        self.batches.append((real, padded))
        return batch

    def padding_share(self) -> float:
        return 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0
