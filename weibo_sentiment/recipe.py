"""What the two Trainer recipes, `train` (LoRA classifier) and `adapt_base` (causal-LM adaptation), share: the config
base, precision, reporters, the Trainer's arguments, and the steps around the loop (the checkpoint directory locked
and claimed by rank 0, the loop itself, the result written once)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import torch
from transformers import Trainer, TrainingArguments

from .checkpoints import ResumeRules, claim_checkpoint_dir, inspect_checkpoint_dir, release_checkpoint_dir
from .data import DEFAULT_TEXT_COLUMN
from .distributed import Ranks
from .errors import UserError
from .locks import one_writer
from .modeling import DEFAULT_BASE_MODEL, DEFAULT_MODEL_DIR

T = TypeVar("T")

REPORTERS = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}  # --report-to: importable as


@dataclass(kw_only=True)
class RunConfig:
    """The settings of a Trainer run; each recipe's config gives the first five its own defaults."""

    output: str
    lr: float | None
    batch_size: int  # per process: the effective batch is batch_size x processes x gradient_accumulation_steps
    epochs: float
    warmup_ratio: float
    base_model: str = DEFAULT_BASE_MODEL
    model_dir: str = str(DEFAULT_MODEL_DIR)
    text_column: str = DEFAULT_TEXT_COLUMN
    encoding: str = "utf-8"
    eval_batch_size: int | None = None  # None: the recipe's choice (evaluation holds no gradients)
    max_steps: int = -1
    weight_decay: float = 0.01
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    checkpoint_dir: str | None = None
    save_steps: int = 500  # a checkpoint every N steps (and after each epoch)
    resume: bool = False
    restart: bool = False  # discard the checkpoints of an earlier run of this checkpoint dir, then start afresh
    keep_checkpoints: bool = False
    logging_steps: int = 50
    report_to: str | list[str] = "none"  # none | tensorboard | mlflow (or a list): the Trainer's report_to

    def checkpoints(self) -> Path:
        out = Path(self.output.rstrip("/"))
        return Path(self.checkpoint_dir) if self.checkpoint_dir else out.with_name(out.name + ".checkpoints")

    def learning_rate(self) -> float:
        return self.lr


def precision_arguments(choice: str) -> dict:
    """Trainer arguments for `choice`. On the CPU, fp32 unless bf16 is asked for: bf16 autocast pays off only
    where oneDNN has bf16 kernels in hardware (`make bench` on a 2-core Xeon with AMX: 1.36x the fp32 samples/s) and
    would run emulated, slower than fp32, on most laptops."""
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            choice = "fp32"
    if choice not in ("fp32", "bf16", "fp16"):
        raise UserError(f"unknown precision {choice!r} (choose from auto, fp32, bf16, fp16)")
    if choice == "fp16" and not torch.cuda.is_available():
        raise UserError("--precision fp16 needs a CUDA GPU; use fp32 (or bf16 on a CPU with bf16 support) on the CPU")
    if choice == "bf16" and not torch.cuda.is_available():
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise UserError("--precision bf16: this CPU has no bf16 support (oneDNN needs AVX512 or AMX); use fp32")
        return {"bf16": True, "fp16": False, "use_cpu": True}  # the Trainer runs bf16 autocast on the CPU
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


def precision_name(arguments: dict) -> str:
    """The precision that `precision_arguments` chose, as run.json and the checkpoint identity record it."""
    return "bf16" if arguments["bf16"] else "fp16" if arguments["fp16"] else "fp32"


def report_to(config: RunConfig) -> list[str]:
    """`config.report_to` as the Trainer's `report_to` list; a reporter whose package is missing is a UserError
    naming what to install."""
    chosen = [config.report_to] if isinstance(config.report_to, str) else list(config.report_to)
    chosen = [r for r in dict.fromkeys(chosen) if r != "none"]
    for name in chosen:
        if name not in REPORTERS:
            raise UserError(f"--report-to {name}: unknown (choose from none, {', '.join(REPORTERS)})")
        if not any(importlib.util.find_spec(module) for module in REPORTERS[name]):
            raise UserError(f"--report-to {name} needs the {name} package: pip install {name}")
    return chosen


def tensorboard_dir(config: RunConfig) -> Path:
    """Where `--report-to tensorboard` writes: OUTPUT.tensorboard/ beside the output (never inside the
    checkpoint directory, which holds only checkpoints), one sub-folder per run."""
    out = Path(config.output.rstrip("/"))
    return out.with_name(out.name + ".tensorboard") / datetime.now().strftime("%Y%m%d-%H%M%S")


def portable_base(base_model: str) -> str:
    """A hub id stays a hub id; a local directory is recorded as an absolute path."""
    return str(Path(base_model).resolve()) if Path(base_model).exists() else str(base_model)


def base_positions(base_dir: Path) -> int:
    """How many token positions the base model has (GPT-2's n_positions)."""
    return json.loads((base_dir / "config.json").read_text()).get("n_positions", 1024)


def training_arguments(config: RunConfig, ranks: Ranks, precision: dict, **recipe) -> TrainingArguments:
    """The Trainer's arguments: what every run takes from `config`, then the recipe's own (evaluation, batch order,
    ...), the precision and the distributed settings."""
    return TrainingArguments(
        output_dir=str(config.checkpoints()),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate(),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="linear",
        weight_decay=config.weight_decay,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        report_to=report_to(config),
        seed=config.seed,
        data_seed=config.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        optim="adamw_torch_fused",  # one fused kernel per step for all trained tensors, on the CPU too
        **{**recipe, **precision, **ranks.training_arguments()},
    )


def use_tensorboard_dir(trainer: Trainer, config: RunConfig) -> None:
    """Point the Trainer's TensorBoard logs at `tensorboard_dir`."""
    # The Trainer would log into output_dir (our checkpoint directory) unless TENSORBOARD_LOGGING_DIR says where.
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(tensorboard_dir(config))


def inspect_checkpoints(config: RunConfig, ranks: Ranks, held: ExitStack) -> dict | None:
    """The checkpoint directory is rank 0's: it takes the directory's writer lock, kept in `held` until the run
    ends (another run on the directory is refused, naming the process that holds it), and inspects it (refusing
    one this run may not use); the other ranks wait for what it found. Returns its marker, if any."""

    def inspect() -> dict | None:
        checkpoints = config.checkpoints()
        try:
            checkpoints.parent.mkdir(parents=True, exist_ok=True)  # for the lock file beside it
        except OSError as e:
            raise UserError(f"--checkpoint-dir {checkpoints}: cannot create the folder {checkpoints.parent} "
                            f"({e.strerror})") from None
        held.enter_context(one_writer(checkpoints.resolve(), f"--checkpoint-dir {checkpoints}"))
        return inspect_checkpoint_dir(checkpoints, output=config.output, resume=config.resume,
                                      restart=config.restart)

    return ranks.once(inspect)


def claim_checkpoints(config: RunConfig, ranks: Ranks, marker: dict | None, identity: dict,
                      rules: ResumeRules) -> Path | None:
    """Rank 0 claims the checkpoint directory for the run `identity` names; every rank gets the checkpoint to resume
    from."""
    return ranks.once(lambda: claim_checkpoint_dir(config.checkpoints(), marker, identity, rules,
                                                   resume=config.resume, restart=config.restart))


def run_loop(trainer: Trainer, config: RunConfig, resume_from: Path | None) -> None:
    """The Trainer's loop, from `resume_from` if given; an interrupt says how to continue."""
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except KeyboardInterrupt:
        raise UserError(f"interrupted; checkpoints are in {config.checkpoints()}, continue with --resume") from None


def write_once(config: RunConfig, ranks: Ranks, write: Callable[[], T]) -> T:
    """`write()` on rank 0 alone, once every rank is done with the checkpoints, then the checkpoints released; every
    rank returns what it wrote, and the process group ends."""

    def work() -> T:
        written = write()
        release_checkpoint_dir(config.checkpoints(), keep=config.keep_checkpoints)
        return written

    ranks.barrier()
    written = ranks.once(work)
    ranks.close()
    return written
