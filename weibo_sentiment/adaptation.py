"""Domain adaptation: continue the base model's causal language-model training on unlabelled posts.

The texts are tokenized, each followed by `[SEP]`, concatenated and cut into blocks of exactly `block_size` tokens
(HF run_clm's `group_texts`; the remainder is dropped), so no token is padding. A share of the *texts* is held out
before packing; its perplexity is measured before and after. The Trainer runs the loop (checkpoints, resume,
bf16/fp16 on GPUs, DDP under torchrun) with the checkpoint rules of `train` (weibo_sentiment.checkpoints), and the
result is an ordinary base model directory (config, safetensors, tokenizer, pad id set) usable as `--base-model`.
`adapt_base` runs the recipe's steps in order: `setup`, `build_trainer`, `train_measured`, `report` (the source
marker's contents) and `save`.

    from weibo_sentiment.adaptation import AdaptConfig, adapt_base
    adapt_base(AdaptConfig(texts=["train.csv"], base_model="models/tiny", output="models/tiny-weibo", max_steps=1000))
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2LMHeadModel, Trainer, set_seed

from .adapter_io import base_fingerprint, package_versions
from .checkpoints import CheckpointKeeper, ResumeRules
from .corpus import Blocks, collate_blocks, encode_blocks, read_corpus, split_texts
from .distributed import Ranks
from .errors import UserError
from .modeling import (
    load_tokenizer,
    resolve_base_model,
    save_tokenizer,
    special_token_ids,
)
from .output import atomic_dir, base_inputs, check_output_dir, write_marker
from .recipe import (
    RunConfig,
    base_positions,
    claim_checkpoints,
    inspect_checkpoints,
    portable_base,
    precision_arguments,
    precision_name,
    run_loop,
    training_arguments,
    use_tensorboard_dir,
    write_once,
)
from .speedups import fast_activations, fast_dropout

logger = logging.getLogger(__name__)

METHODS = ("full", "lora")
DEFAULT_METHOD = "full"  # measured: docs/adaptation.md
DEFAULT_LR = {"full": 5e-4, "lora": 2e-3}
LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]

# What must match to resume, in the order a refusal names them (train's names where the keys mean the same).
RESUME_RULES = ResumeRules(
    names={
        "text_column": "--text-column", "encoding": "--encoding", "base_fingerprint": "base model (fingerprint)",
        "lr": "--lr", "batch_size": "--batch-size", "epochs": "--epochs", "max_steps": "--max-steps",
        "warmup_ratio": "--warmup-ratio", "weight_decay": "weight decay", "seed": "--seed",
        "validation_split": "--validation-split", "lora_r": "--lora-r", "lora_alpha": "--lora-alpha",
        "lora_dropout": "--lora-dropout", "target_modules": "--target-modules", "precision": "precision",
        "world_size": "number of processes", "texts_sha256": "text files (sha256)", "method": "--method",
        "block_size": "--block-size",
    },
    defaults={"world_size": 1},  # absent from the identity of one process
    extensible=frozenset({"epochs", "max_steps"}),  # a finished run kept with --keep-checkpoints may train longer
)


@dataclass(kw_only=True)
class AdaptConfig(RunConfig):
    output: str = "models/gpt2-chinese-adapted"
    lr: float | None = None  # None: DEFAULT_LR[method]
    batch_size: int = 32
    epochs: float = 1.0
    warmup_ratio: float = 0.05
    texts: list[str] = field(default_factory=list)
    method: str = DEFAULT_METHOD
    block_size: int = 128
    validation_split: float = 0.01
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    progress: bool = True  # the Trainer's progress bar and per-logging-step loss lines

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclass
class AdaptResult:
    output: Path
    source: dict
    # False in the other processes of a data-parallel run (torchrun, accelerate launch): only rank 0 reports.
    main_process: bool = True


def run_identity(config: AdaptConfig, files: list[dict], base_dir: Path, precision: str, world_size: int = 1) -> dict:
    """What `--resume` checks against the checkpoints' run (`RESUME_RULES`)."""
    identity = {
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
    if world_size > 1:  # absent: 1 (see RESUME_RULES.defaults)
        identity.update(world_size=world_size)
    return identity


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


@dataclass
class Prepared:
    """What `setup` prepared: the corpus packed into blocks, the base, and where this run stands."""

    inputs: list
    files: list[dict]
    held_out_texts: int
    base_dir: Path
    tokenizer: object
    train_blocks: np.ndarray
    val_blocks: np.ndarray
    precision: dict
    ranks: Ranks
    resume_from: Path | None


def check_settings(config: AdaptConfig) -> list:
    """Refuse settings and an output that cannot work, before any reading; returns the run's inputs (what the
    output may not be)."""
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
    return inputs


def setup(config: AdaptConfig, held: ExitStack) -> Prepared:
    """Check the settings, read and split the texts, pack them into blocks, and lock (the lock kept in `held`) and
    claim the checkpoint directory (under torchrun / accelerate launch: rank 0 claims it and writes the base, the
    other ranks wait)."""
    inputs = check_settings(config)
    precision = precision_arguments(config.precision)
    texts, files = read_corpus(config.texts, text_column=config.text_column, encoding=config.encoding)
    train_texts, val_texts = split_texts(texts, config.validation_split, config.seed)
    ranks = Ranks()
    marker = inspect_checkpoints(config, ranks, held)

    base_dir = resolve_base_model(config.base_model, config.model_dir)
    if Path(config.output).resolve() == base_dir.resolve():
        raise UserError(f"{config.output}: is the base model being adapted and will not be overwritten; "
                        "choose another --output")
    tokenizer = load_tokenizer(base_dir)
    n_positions = base_positions(base_dir)
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
    identity = run_identity(config, files, base_dir, precision_name(precision), ranks.world)
    resume_from = claim_checkpoints(config, ranks, marker, identity, RESUME_RULES)
    return Prepared(inputs=inputs, files=files, held_out_texts=len(val_texts), base_dir=base_dir,
                    tokenizer=tokenizer, train_blocks=train_blocks, val_blocks=val_blocks, precision=precision,
                    ranks=ranks, resume_from=resume_from)


def build_trainer(config: AdaptConfig, prepared: Prepared,
                  callbacks: list | None) -> tuple[torch.nn.Module, Trainer, _StepTimer]:
    """The language model (LoRA-wrapped for --method lora, speed patches applied) and its Trainer, timed."""
    set_seed(config.seed)
    model = _load_lm(prepared.base_dir, prepared.tokenizer)
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
    args = training_arguments(
        config, prepared.ranks, prepared.precision,
        per_device_eval_batch_size=config.eval_batch_size or config.batch_size * 2,
        eval_strategy="no",  # held-out perplexity before and after (train_measured)
        prediction_loss_only=True,
        disable_tqdm=not config.progress or not prepared.ranks.main,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(prepared.train_blocks),
                      eval_dataset=Blocks(prepared.val_blocks), data_collator=collate_blocks,
                      callbacks=[CheckpointKeeper(), timer.callback(), *(callbacks or [])])
    use_tensorboard_dir(trainer, config)
    return model, trainer, timer


def held_out_loss(trainer: Trainer, when: str) -> dict[str, float]:
    loss = trainer.evaluate()["eval_loss"]
    measured = {"loss": loss, "perplexity": _perplexity(loss)}
    logger.info("held-out perplexity %-8s%.2f (loss %.4f)", when + ":", measured["perplexity"], measured["loss"])
    return measured


def train_measured(trainer: Trainer, config: AdaptConfig, resume_from: Path | None) -> dict:
    """The loop, with the held-out perplexity before and after it and its duration."""
    before = held_out_loss(trainer, "before")  # before `train` loads a checkpoint: the parent base's, also resumed
    start = time.perf_counter()
    run_loop(trainer, config, resume_from)
    seconds = time.perf_counter() - start
    return {"before": before, "after": held_out_loss(trainer, "after"), "seconds": seconds}


def report(config: AdaptConfig, prepared: Prepared, trainer: Trainer, timer: _StepTimer, measured: dict) -> dict:
    """The adapted base's source marker: where it came from, how it was trained, what it measured."""
    args, base_dir = trainer.args, prepared.base_dir
    before, after = measured["before"], measured["after"]
    return {
        "adapted_from": portable_base(config.base_model),
        "adapted_from_dir": str(base_dir.resolve()),
        "adapted_from_fingerprint": base_fingerprint(base_dir),
        "texts": prepared.files,
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
        "precision": precision_name(prepared.precision),
        "blocks": {"train": len(prepared.train_blocks), "validation": len(prepared.val_blocks)},
        "held_out_texts": prepared.held_out_texts,
        "validation_split": config.validation_split,
        "perplexity_before": before["perplexity"],
        "perplexity_after": after["perplexity"],
        "loss_before": before["loss"],
        "loss_after": after["loss"],
        "train_loss": [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e],
        "train_seconds": round(measured["seconds"], 1),
        "seconds_per_step": round(timer.seconds / timer.steps, 4) if timer.steps else None,
        **({"lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                     "target_modules": LORA_TARGETS, "merged": True}} if config.method == "lora" else {}),
        "versions": package_versions(),
    }


def save(config: AdaptConfig, prepared: Prepared, model: torch.nn.Module, source: dict) -> Path:
    """Rank 0 writes the adapted base (LoRA merged into it) once every rank is done with the checkpoints."""
    if config.method == "lora":
        model = model.merge_and_unload()
    output = Path(config.output)
    write_once(config, prepared.ranks, lambda: save_base(model, prepared.tokenizer, source, output, prepared.inputs,
                                                         vocab_from=prepared.base_dir))
    return output


def adapt_base(config: AdaptConfig, callbacks: list | None = None) -> AdaptResult:
    """Continue the causal-LM training of `config.base_model` on `config.texts`; write the adapted base to
    `config.output`. `callbacks` are extra `transformers.TrainerCallback`s."""
    with ExitStack() as held:  # the checkpoint directory's writer lock, until the run ends
        prepared = setup(config, held)
        model, trainer, timer = build_trainer(config, prepared, callbacks)
        measured = train_measured(trainer, config, prepared.resume_from)
        source = report(config, prepared, trainer, timer, measured)
        output = save(config, prepared, model, source)
    logger.info("adapted base model written to %s", output)
    return AdaptResult(output=output, source=source, main_process=prepared.ranks.main)


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

