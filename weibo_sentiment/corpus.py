"""Unlabelled texts for domain adaptation: read from files, a share held out, and packed into blocks of exactly
`block_size` tokens (HF run_clm's `group_texts`), so no token is padding."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .streaming.source import Source

logger = logging.getLogger(__name__)


def pack(token_ids: list[list[int]], sep_id: int, block_size: int) -> np.ndarray:
    """HF run_clm's `group_texts`: every text's tokens followed by `sep_id`, concatenated, cut into rows of exactly
    `block_size` tokens; the remainder (fewer than `block_size` tokens) is dropped. Returns (blocks, block_size)."""
    total = sum(len(ids) + 1 for ids in token_ids)
    flat = np.empty(total, dtype=np.int64)
    at = 0
    for ids in token_ids:
        flat[at:at + len(ids)] = ids
        flat[at + len(ids)] = sep_id
        at += len(ids) + 1
    usable = (total // block_size) * block_size
    return flat[:usable].reshape(-1, block_size)


class Blocks(torch.utils.data.Dataset):
    """Packed blocks as causal-LM examples: the labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = torch.from_numpy(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        row = self.blocks[i]
        return {"input_ids": row, "labels": row}


def collate_blocks(features: list[dict]) -> dict:
    ids = torch.stack([f["input_ids"] for f in features])
    return {"input_ids": ids, "labels": ids}  # every block is full: no padding, no attention mask


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_corpus(paths: list[str], *, text_column: str, encoding: str) -> tuple[list[str], list[dict]]:
    """Every text of every file (labels, if any, ignored), and per file its path, sha256 and text count.

    Files are read as `predict --input` reads them (`streaming.source.Source`): CSV/TSV and Parquet by their text
    column, JSON lines by their text key, any other file one text per line."""
    if not paths:
        raise UserError("adapt-base needs texts: pass --texts FILE [FILE ...]")
    texts: list[str] = []
    files = []
    for path in paths:
        source = Source(path, text_column=text_column, encoding=encoding)
        found = [row.text for row in source.rows()]
        if not found:
            raise source.no_rows_error()
        if source.blank:
            logger.warning("%s: skipped %d blank line(s)", path, source.blank)
        texts.extend(found)
        files.append({"path": str(Path(path).resolve()), "sha256": file_sha256(path), "texts": len(found)})
    return texts, files


def split_texts(texts: list[str], share: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded random `share` of the texts (at least one) held out; the rest, in their order, for training."""
    if not 0 < share < 1:
        raise UserError(f"--validation-split {share:g}: must be between 0 and 1 (exclusive)")
    if len(texts) < 2:
        raise UserError(f"adapt-base needs at least 2 texts (one is held out for perplexity), got {len(texts)}")
    n_val = min(len(texts) - 1, max(1, round(len(texts) * share)))
    held = np.zeros(len(texts), dtype=bool)
    held[np.random.default_rng(seed).permutation(len(texts))[:n_val]] = True
    return [t for t, h in zip(texts, held) if not h], [t for t, h in zip(texts, held) if h]


def encode_blocks(tokenizer, texts: list[str], block_size: int) -> np.ndarray:
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return pack(ids, tokenizer.sep_token_id, block_size)
