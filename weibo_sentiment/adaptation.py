"""Domain adaptation: continue the base model's causal language-model training on unlabelled posts.

The texts are tokenized, each followed by `[SEP]`, concatenated and cut into blocks of exactly `block_size` tokens
(HF run_clm's `group_texts`; the remainder is dropped), so no token is padding. A share of the *texts* is held out
before packing; its perplexity is measured before and after. The Trainer runs the loop (checkpoints, resume,
bf16/fp16 on GPUs, DDP under torchrun) with the checkpoint rules of `train` (weibo_sentiment.checkpoints), and the
result is an ordinary base model directory (config, safetensors, tokenizer, pad id set) usable as `--base-model`.

    from weibo_sentiment.adaptation import AdaptConfig, adapt_base
    adapt_base(AdaptConfig(texts=["train.csv"], base_model="models/tiny", output="models/tiny-weibo", max_steps=1000))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

from .adapter_io import base_fingerprint, package_versions
from .checkpoints import CheckpointKeeper, claim_checkpoint_dir, inspect_checkpoint_dir, release_checkpoint_dir
from .data import DEFAULT_TEXT_COLUMN, read_texts
from .errors import UserError
from .modeling import (
    DEFAULT_BASE_MODEL,
    DEFAULT_MODEL_DIR,
    load_tokenizer,
    resolve_base_model,
    save_tokenizer,
    special_token_ids,
)
from .output import atomic_dir, base_inputs, check_output_dir, write_marker

logger = logging.getLogger(__name__)

METHODS = ("full", "lora")
DEFAULT_METHOD = "full"  # measured: docs/adaptation.md
DEFAULT_LR = {"full": 5e-4, "lora": 2e-3}
LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]


@dataclass
class AdaptConfig:
    texts: list[str] = field(default_factory=list)
    output: str = "models/gpt2-chinese-adapted"
    base_model: str = DEFAULT_BASE_MODEL
    model_dir: str = str(DEFAULT_MODEL_DIR)
    text_column: str = DEFAULT_TEXT_COLUMN
    encoding: str = "utf-8"
    method: str = DEFAULT_METHOD
    block_size: int = 128
    lr: float | None = None  # None: DEFAULT_LR[method]
    batch_size: int = 32
    epochs: float = 1.0
    max_steps: int = -1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    validation_split: float = 0.01
    seed: int = 42
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    precision: str = "auto"
    checkpoint_dir: str | None = None
    save_steps: int = 500
    resume: bool = False
    restart: bool = False
    keep_checkpoints: bool = False
    logging_steps: int = 50
    eval_batch_size: int | None = None
    progress: bool = True  # the Trainer's progress bar and per-logging-step loss lines

    def checkpoints(self) -> Path:
        out = Path(self.output.rstrip("/"))
        return Path(self.checkpoint_dir) if self.checkpoint_dir else out.with_name(out.name + ".checkpoints")

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclass
class AdaptResult:
    output: Path
    source: dict
    # False in the other processes of a data-parallel run (torchrun, accelerate launch): only rank 0 reports.
    main_process: bool = True


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


def _collate(features: list[dict]) -> dict:
    ids = torch.stack([f["input_ids"] for f in features])
    return {"input_ids": ids, "labels": ids}  # every block is full: no padding, no attention mask


def _file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_corpus(config: AdaptConfig) -> tuple[list[str], list[dict]]:
    """Every text of every file (labels, if any, ignored), and per file its path, sha256 and text count."""
    if not config.texts:
        raise UserError("adapt-base needs texts: pass --texts FILE [FILE ...]")
    texts: list[str] = []
    files = []
    for path in config.texts:
        found, _ = read_texts(path, text_column=config.text_column, encoding=config.encoding)
        texts.extend(found)
        files.append({"path": str(Path(path).resolve()), "sha256": _file_sha256(path), "texts": len(found)})
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


def _identity(config: AdaptConfig, files: list[dict], base_dir: Path, precision: str) -> dict:
    # The keys `train` uses where they mean the same; the others are named in checkpoints._IDENTITY_NAMES.
    return {
        "texts_sha256": hashlib.sha256(" ".join(f["sha256"] for f in files).encode()).hexdigest(),
        "text_column": config.text_column, "encoding": config.encoding,
        "base_fingerprint": base_fingerprint(base_dir), "method": config.method, "block_size": config.block_size,
        "lr": config.learning_rate(), "batch_size": config.batch_size, "epochs": config.epochs,
        "max_steps": config.max_steps, "warmup_ratio": config.warmup_ratio, "weight_decay": config.weight_decay,
        "seed": config.seed, "validation_split": config.validation_split, "precision": precision,
        "lora_r": config.lora_r if config.method == "lora" else None,
        "lora_alpha": config.lora_alpha if config.method == "lora" else None,
        "lora_dropout": config.lora_dropout if config.method == "lora" else None,
        "target_modules": LORA_TARGETS if config.method == "lora" else None,
    }


def _load_lm(base_dir: Path, tokenizer) -> GPT2LMHeadModel:
    from transformers import GPT2Config

    config_dict, _ = GPT2Config.get_config_dict(str(base_dir))
    config_dict.update(special_token_ids(tokenizer))
    config = GPT2Config.from_dict(config_dict)
    # A merged classifier used as a base has no lm_head: GPT-2 ties it to the word embeddings anyway.
    return GPT2LMHeadModel.from_pretrained(str(base_dir), config=config, attn_implementation="sdpa")


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


class _StepTimer:
    """Seconds of the training steps of this process (for the benchmark's s/step)."""

    def __init__(self):
        self.seconds, self.steps, self._t = 0.0, 0, None

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if timer._t is not None:
                    timer.seconds += time.perf_counter() - timer._t
                    timer.steps += 1

        return _Timer()


def adapt_base(config: AdaptConfig, callbacks: list | None = None) -> AdaptResult:
    """Continue the causal-LM training of `config.base_model` on `config.texts`; write the adapted base to
    `config.output`. `callbacks` are extra `transformers.TrainerCallback`s."""
    from .training import Ranks, _precision, fast_activations, fast_dropout

    if config.method not in METHODS:
        raise UserError(f"--method {config.method!r}: choose from {', '.join(METHODS)}")
    for name, value in (("--block-size", config.block_size), ("--batch-size", config.batch_size),
                        ("--save-steps", config.save_steps)):
        if value < 1:
            raise UserError(f"{name} {value}: must be at least 1")
    if config.max_steps < 1 and not config.epochs > 0:
        raise UserError(f"--epochs {config.epochs:g}: must be above 0 (or pass --max-steps)")
    inputs = [*(("the --texts file", p) for p in config.texts),
              ("the --checkpoint-dir directory", config.checkpoint_dir),
              *base_inputs(config.base_model, config.model_dir)]
    check_output_dir(config.output, "base", inputs)  # before minutes of training, and again when writing
    precision = _precision(config.precision)
    precision_name = "bf16" if precision["bf16"] else "fp16" if precision["fp16"] else "fp32"
    texts, files = read_corpus(config)
    train_texts, val_texts = split_texts(texts, config.validation_split, config.seed)
    checkpoints = config.checkpoints()
    ranks = Ranks()  # under torchrun / accelerate launch: rank 0 claims the checkpoints and writes the base
    marker = ranks.once(lambda: inspect_checkpoint_dir(checkpoints, config))

    base_dir = resolve_base_model(config.base_model, config.model_dir)
    if Path(config.output).resolve() == base_dir.resolve():
        raise UserError(f"{config.output}: is the base model being adapted and will not be overwritten; "
                        "choose another --output")
    tokenizer = load_tokenizer(base_dir)
    n_positions = json.loads((base_dir / "config.json").read_text()).get("n_positions", 1024)
    if config.block_size > n_positions:
        raise UserError(f"--block-size {config.block_size} exceeds the base model's {n_positions} positions")
    train_blocks = encode_blocks(tokenizer, train_texts, config.block_size)
    val_blocks = encode_blocks(tokenizer, val_texts, config.block_size)
    if len(train_blocks) == 0:
        raise UserError(f"the texts hold fewer tokens than one --block-size {config.block_size} block; "
                        "pass more texts or a smaller --block-size")
    if len(val_blocks) == 0:
        raise UserError(f"the held-out texts ({len(val_texts)}) hold fewer tokens than one --block-size "
                        f"{config.block_size} block; raise --validation-split or lower --block-size")
    logger.info("%d texts: %d training blocks and %d held-out blocks of %d tokens (held out: %d texts)",
                len(texts), len(train_blocks), len(val_blocks), config.block_size, len(val_texts))
    identity = _identity(config, files, base_dir, precision_name)
    if ranks.world > 1:  # absent: 1 (see checkpoints._IDENTITY_DEFAULTS)
        identity.update(world_size=ranks.world)
    resume_from = ranks.once(lambda: claim_checkpoint_dir(checkpoints, marker, identity, config))

    set_seed(config.seed)
    model = _load_lm(base_dir, tokenizer)
    fast_activations(model)
    if config.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout, target_modules=list(LORA_TARGETS), fan_in_fan_out=True))
    if not torch.cuda.is_available():
        fast_dropout(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("%s: %.2fM trainable parameters", config.method, trainable / 1e6)

    timer = _StepTimer()
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size or config.batch_size * 2,
        learning_rate=config.learning_rate(),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="linear",
        weight_decay=config.weight_decay,
        eval_strategy="no",  # held-out perplexity before and after (below)
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        report_to=[],
        seed=config.seed,
        data_seed=config.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        optim="adamw_torch_fused",
        prediction_loss_only=True,
        disable_tqdm=not config.progress or not ranks.main,
        **precision,
        **ranks.training_arguments(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(train_blocks), eval_dataset=Blocks(val_blocks),
                      data_collator=_collate,
                      callbacks=[CheckpointKeeper(), timer.callback(), *(callbacks or [])])
    # Before `train` loads a checkpoint: the parent base's figure, also in a resumed run.
    loss = trainer.evaluate()["eval_loss"]
    before = {"loss": loss, "perplexity": _perplexity(loss)}
    logger.info("held-out perplexity before: %.2f (loss %.4f)", before["perplexity"], before["loss"])
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except KeyboardInterrupt:
        raise UserError(f"interrupted; checkpoints are in {checkpoints}, continue with --resume") from None
    train_seconds = time.perf_counter() - start
    loss = trainer.evaluate()["eval_loss"]
    after = {"loss": loss, "perplexity": _perplexity(loss)}
    logger.info("held-out perplexity after:  %.2f (loss %.4f)", after["perplexity"], after["loss"])

    if config.method == "lora":
        model = model.merge_and_unload()
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    source = {
        "adapted_from": _portable_base(config.base_model, base_dir),
        "adapted_from_dir": str(base_dir.resolve()),
        "adapted_from_fingerprint": base_fingerprint(base_dir),
        "texts": files,
        "text_column": config.text_column,
        "method": config.method,
        "block_size": config.block_size,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "batch_size": config.batch_size,
        "world_size": args.world_size,
        "effective_batch_size": args.train_batch_size * args.world_size * args.gradient_accumulation_steps,
        "lr": config.learning_rate(),
        "seed": config.seed,
        "precision": precision_name,
        "blocks": {"train": len(train_blocks), "validation": len(val_blocks)},
        "held_out_texts": len(val_texts),
        "validation_split": config.validation_split,
        "perplexity_before": before["perplexity"],
        "perplexity_after": after["perplexity"],
        "loss_before": before["loss"],
        "loss_after": after["loss"],
        "train_loss": losses,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(timer.seconds / timer.steps, 4) if timer.steps else None,
        **({"lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                     "target_modules": LORA_TARGETS, "merged": True}} if config.method == "lora" else {}),
        "versions": package_versions(),
    }
    output = Path(config.output)

    def write() -> None:  # rank 0 alone, once every rank is done with the checkpoints
        save_base(model, tokenizer, source, output, inputs, vocab_from=base_dir)
        release_checkpoint_dir(checkpoints, keep=config.keep_checkpoints)

    ranks.barrier()
    ranks.once(write)
    ranks.close()
    logger.info("adapted base model written to %s", output)
    return AdaptResult(output=output, source=source, main_process=ranks.main)


def save_base(model: GPT2LMHeadModel, tokenizer, source: dict, output: Path, inputs=(),
              vocab_from: Path | None = None) -> None:
    """An ordinary base model directory: config (pad/bos/eos ids set), safetensors, tokenizer, source marker."""
    with atomic_dir(output, kind="base", inputs=inputs) as tmp:
        model = model.to("cpu").float()
        for cfg in (model.config, model.generation_config):
            for key, value in special_token_ids(tokenizer).items():
                setattr(cfg, key, value)
        model.config.architectures = ["GPT2LMHeadModel"]
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        if vocab_from is not None and (vocab_from / "vocab.txt").is_file() and not (tmp / "vocab.txt").exists():
            shutil.copyfile(vocab_from / "vocab.txt", tmp / "vocab.txt")  # as init-model and the download keep it
        # The mark of a base written by this package; "adapted_from", never "base_model" (that means a hub download).
        write_marker(tmp, "base", source)


def _portable_base(base_model: str, base_dir: Path) -> str:
    return str(Path(base_model).resolve()) if Path(base_model).exists() else str(base_model)
