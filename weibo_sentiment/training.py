"""LoRA fine-tuning with the Hugging Face Trainer: per-batch padding, length-grouped batches, best-by-F1."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, TaskType, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from .adapter_io import SAVE_DTYPES, base_fingerprint, cast_weights, package_versions, write_run
from .data import DEFAULT_LABEL_COLUMN, DEFAULT_TEXT_COLUMN, LabelledData, load_labelled, stratified_split
from .errors import UserError
from .modeling import (
    DEFAULT_BASE_MODEL,
    DEFAULT_MODEL_DIR,
    Inputs,
    atomic_dir,
    base_inputs,
    check_output_dir,
    load_classifier,
    load_tokenizer,
    resolve_base_model,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the original recipe's."""

    data: str = "dataset/weibo_senti_100k.csv"
    output: str = "best_weibo_sentiment_lora"
    base_model: str = DEFAULT_BASE_MODEL
    model_dir: str = str(DEFAULT_MODEL_DIR)
    validation_data: str | None = None
    validation_split: float = 0.1
    text_column: str = DEFAULT_TEXT_COLUMN
    label_column: str = DEFAULT_LABEL_COLUMN
    encoding: str = "utf-8"
    label_names: list[str] | None = None
    text_labels: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj"])
    lr: float = 5e-4
    batch_size: int = 16
    eval_batch_size: int | None = None  # None: 64 on the CPU, 256 on a GPU (evaluation holds no gradients)
    epochs: float = 3.0
    max_steps: int = -1
    max_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    save_dtype: str = "float32"
    checkpoint_dir: str | None = None
    save_steps: int = 500  # a checkpoint every N steps (and after each epoch's evaluation)
    resume: bool = False
    restart: bool = False  # discard the checkpoints of an earlier run of this checkpoint dir, then start afresh
    keep_checkpoints: bool = False
    logging_steps: int = 50

    def checkpoints(self) -> Path:
        out = Path(self.output.rstrip("/"))
        return Path(self.checkpoint_dir) if self.checkpoint_dir else out.with_name(out.name + ".checkpoints")


@dataclass
class TrainResult:
    output: Path
    run: dict
    # (real, padded) tokens of every collated batch in order: training steps, then evaluation batches.
    batches: list[tuple[int, int]] = field(default_factory=list, repr=False)


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


def encode(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> list[dict]:
    """Token ids without padding (padding happens per batch), truncated to `max_length`."""
    ids = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False)["input_ids"]
    if labels is None:
        return [{"input_ids": x} for x in ids]
    return [{"input_ids": x, "labels": y} for x, y in zip(ids, labels)]


def classification_metrics(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    predicted = np.argmax(logits, axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro")),
    }


def lora_config(config: TrainConfig) -> LoraConfig:
    # SEQ_CLS makes PEFT train and save the `score` head with the adapter (modules_to_save).
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        fan_in_fan_out=True,  # GPT-2 uses Conv1D, whose weight is (in, out)
    )


def _precision(choice: str) -> dict:
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


def load_training_data(config: TrainConfig) -> tuple[LabelledData, tuple, tuple, dict]:
    """Validate every input file, then split; nothing here touches a model."""
    options = dict(text_column=config.text_column, label_column=config.label_column, encoding=config.encoding)
    data = load_labelled(config.data, label_names=config.label_names, text_labels=config.text_labels, **options)
    if config.validation_data:
        val = load_labelled(config.validation_data, label_names=data.label_names, text_labels=config.text_labels,
                            min_classes=1, **options)
        train_split, val_split = (data.texts, data.labels), (val.texts, val.labels)
        files = {"train": data.summary(), "validation": val.summary()}
    else:
        train_split, val_split = stratified_split(data, config.validation_split, config.seed)
        files = {"train": data.summary()}
    return data, train_split, val_split, files


def _replace_modules(model: torch.nn.Module, kind: type, make) -> int:
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is kind:
                setattr(module, name, make(child))
                swapped += 1
    return swapped


def fast_activations(model: torch.nn.Module) -> int:
    """Swap GPT-2's Python tanh-GELU (eight elementwise kernels forward, more backward) for PyTorch's fused
    kernel of the same formula; the values agree to float rounding. Returns the number of modules swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    return _replace_modules(model, NewGELUActivation, lambda _: GELUTanh())


class IntegerDropout(torch.nn.Dropout):
    """`nn.Dropout` whose keep-mask is cut from 64-bit random integers, four 16-bit lanes each.

    On the CPU torch's float `bernoulli_` costs about six times as much per element as this and runs on one
    core: it was a fifth of a LoRA training step of the uer model. The drop probability is p to 1/65536
    (0.1 → 0.100006), survivors are scaled so the expectation is exact, masks follow torch's seed, and
    outside training it is the identity, as nn.Dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = round(self.p * 65536)
        if not self.training or not 0 < drop < 65536 or self.inplace:
            return super().forward(x)
        # One draw per four elements: a full-range int64 read as four uniform int16 in [-32768, 32767].
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, 2**63 - 1)
        keep = words.view(torch.int16)[:x.numel()].view(x.shape) >= drop - 32768
        return x * keep.to(x.dtype).mul_(65536 / (65536 - drop))


def fast_dropout(model: torch.nn.Module) -> int:
    """Swap every `nn.Dropout` (GPT-2's and LoRA's) for `IntegerDropout`; for CPU training only, CUDA's fused
    dropout is fast. Attention-probability dropout happens inside SDPA and stays as it is."""
    return _replace_modules(model, torch.nn.Dropout, lambda d: IntegerDropout(d.p))


# ---- checkpoints: a directory owned by one run, complete checkpoints only, resume only the same run --------------
MARKER_FILE = "weibo_sentiment_checkpoints.json"  # in the checkpoint dir: whose checkpoints these are
COMPLETE_FILE = "weibo_sentiment_complete.json"  # in a checkpoint-N: written last, lists every file and its size
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# What must match to resume, in the order a refusal names them.
_IDENTITY_NAMES = {
    "data_sha256": "training data (sha256)", "validation_data_sha256": "validation data (sha256)",
    "text_column": "--text-column", "label_column": "--label-column", "encoding": "--encoding",
    "label_names": "label names", "base_fingerprint": "base model (fingerprint)", "lr": "--lr",
    "batch_size": "--batch-size", "epochs": "--epochs", "max_steps": "--max-steps", "warmup_ratio": "--warmup-ratio",
    "weight_decay": "weight decay", "seed": "--seed", "validation_split": "--validation-split",
    "max_length": "--max-length", "lora_r": "--lora-r", "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout",
    "target_modules": "--target-modules", "precision": "precision",
}
_EXTENSIBLE = {"epochs", "max_steps"}  # a finished run kept with --keep-checkpoints may be resumed to train longer


def _checkpoint_folders(root: Path) -> list[Path]:
    """`checkpoint-N` folders in `root`, by N."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoint_complete(folder: Path) -> bool:
    """True when `folder` was written to the end: its completion record exists (the Trainer writes a checkpoint in
    place, file by file, so a process killed mid-save leaves a partial folder) and every file it lists is there with
    the recorded size."""
    try:
        files = json.loads((folder / COMPLETE_FILE).read_text(encoding="utf-8"))["files"]
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def last_complete_checkpoint(root: Path) -> Path | None:
    complete = [p for p in _checkpoint_folders(root) if checkpoint_complete(p)]
    return complete[-1] if complete else None


def _write_json_atomic(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_checkpoint(folder: Path) -> None:
    (folder / COMPLETE_FILE).unlink(missing_ok=True)  # first: a half-removed folder must not look complete
    shutil.rmtree(folder, ignore_errors=True)


def _inspect_checkpoint_dir(checkpoints: Path, config: TrainConfig) -> dict | None:
    """Refuse a checkpoint dir this run may not use, before any model work; return its marker, if any."""
    if config.resume and config.restart:
        raise UserError("--resume continues the checkpoints' run and --restart discards them: pass one of them")
    if checkpoints.exists() and not checkpoints.is_dir():
        raise UserError(f"--checkpoint-dir {checkpoints} is a file, not a directory")
    ours = {MARKER_FILE, MARKER_FILE + ".tmp"}
    entries = list(checkpoints.iterdir()) if checkpoints.is_dir() else []
    foreign = sorted(p.name for p in entries
                     if p.name not in ours and not (p.is_dir() and _CHECKPOINT.fullmatch(p.name)))
    marker_path = checkpoints / MARKER_FILE
    if not foreign and _checkpoint_folders(checkpoints) and not marker_path.is_file():
        foreign = [p.name for p in _checkpoint_folders(checkpoints)]  # checkpoints, but not of a weibo-sentiment run
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"--checkpoint-dir {checkpoints} holds files that are not this run's checkpoints ({shown}); "
                        f"checkpoints need a directory of their own: choose a new or empty one")
    if checkpoints.resolve() in Path(config.output).resolve().parents:
        raise UserError(f"--output {config.output} is inside --checkpoint-dir {checkpoints}, which must hold "
                        f"checkpoints only: choose another --checkpoint-dir")
    if not entries:
        if config.resume:
            raise UserError(f"--resume: no checkpoint in {checkpoints} to resume from")
        return None
    marker = None
    if marker_path.is_file():
        try:
            marker = json.loads(marker_path.read_text(encoding="utf-8"))
            marker["identity"]  # noqa: B018 (a marker without an identity is not ours)
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{marker_path}: not a valid weibo-sentiment checkpoint record; "
                            f"remove the directory {checkpoints} or choose another --checkpoint-dir") from None
    folders = _checkpoint_folders(checkpoints)
    last = last_complete_checkpoint(checkpoints)
    if config.resume and last is None:
        raise UserError(f"--resume: no checkpoint in {checkpoints} to resume from")
    if folders and not config.resume and not config.restart:
        earlier = "a finished run (kept with --keep-checkpoints)" if marker.get("completed") else "an interrupted run"
        if last is None:
            raise UserError(f"--checkpoint-dir {checkpoints} holds only incomplete checkpoints of {earlier}; "
                            f"pass --restart to discard them and start afresh")
        raise UserError(f"--checkpoint-dir {checkpoints} holds checkpoints of {earlier} (up to {last.name}); "
                        f"pass --resume to continue it or --restart to discard them and start afresh")
    return marker


def _run_identity(config: TrainConfig, files: dict, label_names: list[str], base_dir: Path, precision: str) -> dict:
    validation = files.get("validation")
    return {
        "data_sha256": files["train"]["sha256"],
        "validation_data_sha256": validation["sha256"] if validation else None,
        "text_column": config.text_column, "label_column": config.label_column, "encoding": config.encoding,
        "label_names": list(label_names), "base_fingerprint": base_fingerprint(base_dir),
        "lr": config.lr, "batch_size": config.batch_size, "epochs": config.epochs, "max_steps": config.max_steps,
        "warmup_ratio": config.warmup_ratio, "weight_decay": config.weight_decay, "seed": config.seed,
        "validation_split": None if validation else config.validation_split, "max_length": config.max_length,
        "lora_r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
        "target_modules": list(config.target_modules), "precision": precision,
    }


def _shown(key: str, value) -> str:
    if value is None:
        return "none" if key != "validation_data_sha256" else "none (split off --data)"
    if key.endswith("sha256"):
        return value[:12]
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def _claim_checkpoint_dir(checkpoints: Path, marker: dict | None, identity: dict, config: TrainConfig) -> Path | None:
    """Check that `--resume` continues the same run, discard what `--restart` asks to, and record this run in the
    marker. Returns the checkpoint to resume from."""
    resume_from = None
    if config.resume:
        old = marker["identity"]
        differ = [k for k in _IDENTITY_NAMES if old.get(k) != identity.get(k)]
        if marker.get("completed") and set(differ) <= _EXTENSIBLE:
            differ = []  # training a finished run further: the schedule is the new length's
        if differ:
            what = "; ".join(f"{_IDENTITY_NAMES[k]} was {_shown(k, old.get(k))}, now {_shown(k, identity.get(k))}"
                             for k in differ)
            raise UserError(f"--resume: the checkpoints in {checkpoints} are of a different run ({what}); "
                            f"resume with the same data and settings, or pass --restart to discard them")
        resume_from = last_complete_checkpoint(checkpoints)
        for folder in _checkpoint_folders(checkpoints):
            if int(folder.name.split("-")[1]) > int(resume_from.name.split("-")[1]):
                logger.warning("%s is incomplete (the run was stopped while writing it); removing it", folder)
                _remove_checkpoint(folder)
        logger.info("resuming from %s", resume_from)
    elif marker is not None:
        if config.restart:
            logger.warning("--restart: discarding the checkpoints in %s", checkpoints)
        for folder in _checkpoint_folders(checkpoints):
            _remove_checkpoint(folder)
    created = marker.get("created_dir", False) if marker is not None else not checkpoints.exists()
    checkpoints.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(checkpoints / MARKER_FILE, {"tool": "weibo-sentiment", "created_dir": created,
                                                   "completed": False, "identity": identity})
    return resume_from


def _release_checkpoint_dir(checkpoints: Path, keep: bool) -> None:
    """After a successful run: keep the checkpoints (marked finished) or remove exactly what this run wrote."""
    marker_path = checkpoints / MARKER_FILE
    marker = json.loads(marker_path.read_text(encoding="utf-8"))
    if keep:
        _write_json_atomic(marker_path, {**marker, "completed": True})
        return
    for folder in _checkpoint_folders(checkpoints):
        _remove_checkpoint(folder)
    marker_path.unlink()
    marker_path.with_name(MARKER_FILE + ".tmp").unlink(missing_ok=True)
    if marker.get("created_dir") and not any(checkpoints.iterdir()):
        checkpoints.rmdir()


class EpochSeededLengthSampler(LengthGroupedSampler):
    """`LengthGroupedSampler` whose order comes from `seed + epoch` rather than the global torch RNG: a run resumed
    in the middle of an epoch sees the same batches as one that was never stopped (the global RNG also drives
    dropout, and its state at the start of the epoch is not in the checkpoint)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class _SentimentTrainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpochSeededLengthSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        [len(x["input_ids"]) for x in dataset], self.args.data_seed)


class CheckpointKeeper(TrainerCallback):
    """Step checkpoints every `save_steps`, and one after each epoch's evaluation; a completion record in each; only
    the latest checkpoint and the best epoch's are kept.

    The Trainer would save at an epoch's last step before evaluating it: a run resumed from that checkpoint would
    start the next epoch and never evaluate this one. So that save is moved after the evaluation.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and (float(state.epoch).is_integer() or state.global_step >= state.max_steps):
            control.should_save = False  # the end of an epoch (or of training): saved after its evaluation
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        root = Path(args.output_dir)
        folder = root / f"checkpoint-{state.global_step}"
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_FILE):
            with path.open("rb") as f:
                os.fsync(f.fileno())
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
        _write_json_atomic(folder / COMPLETE_FILE, {"global_step": state.global_step, "files": files})
        evals = [e for e in state.log_history if "eval_macro_f1" in e]
        keep = {folder.name}
        if evals:
            keep.add(f"checkpoint-{max(evals, key=lambda e: e['eval_macro_f1'])['step']}")
        for old in _checkpoint_folders(root):
            if old.name not in keep and int(old.name.split("-")[1]) < state.global_step:
                _remove_checkpoint(old)
        return control


def train(config: TrainConfig, callbacks: list | None = None) -> TrainResult:
    """Fine-tune a LoRA adapter and write the best one (by validation macro-F1) to `config.output`.

    `callbacks` are extra `transformers.TrainerCallback`s (the benchmark times steps with one).
    """
    if config.save_dtype not in SAVE_DTYPES:
        raise UserError(f"unknown --save-dtype {config.save_dtype!r} (choose from {', '.join(SAVE_DTYPES)})")
    check_output_dir(config.output, "adapter", [  # before training for minutes, and again when writing
        ("the --data file", config.data), ("the --validation-data file", config.validation_data),
        ("the --checkpoint-dir directory", config.checkpoint_dir), *base_inputs(config.base_model, config.model_dir)])
    precision = _precision(config.precision)
    data, (train_texts, train_labels), (val_texts, val_labels), files = load_training_data(config)
    checkpoints = config.checkpoints()
    if config.save_steps < 1:
        raise UserError(f"--save-steps {config.save_steps}: must be at least 1")
    marker = _inspect_checkpoint_dir(checkpoints, config)

    base_dir = resolve_base_model(config.base_model, config.model_dir)
    tokenizer = load_tokenizer(base_dir)
    n_positions = _n_positions(base_dir)
    if config.max_length > n_positions:
        raise UserError(f"--max-length {config.max_length} exceeds the base model's {n_positions} positions")
    train_set = encode(tokenizer, train_texts, train_labels, config.max_length)
    val_set = encode(tokenizer, val_texts, val_labels, config.max_length)
    precision_name = "bf16" if precision["bf16"] else "fp16" if precision["fp16"] else "fp32"
    identity = _run_identity(config, files, data.label_names, base_dir, precision_name)
    resume_from = _claim_checkpoint_dir(checkpoints, marker, identity, config)

    set_seed(config.seed)
    model = load_classifier(base_dir, data.label_names, tokenizer, attn_implementation="sdpa")
    fast_activations(model)
    model = get_peft_model(model, lora_config(config))
    if not torch.cuda.is_available():
        fast_dropout(model)
    model.print_trainable_parameters()
    trainable, total = model.get_nb_trainable_parameters()

    collator = PaddedBatches(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size or (256 if torch.cuda.is_available() else 64),
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="linear",
        weight_decay=config.weight_decay,
        train_sampling_strategy="group_by_length",  # with a seeded order: see EpochSeededLengthSampler
        # Evaluation per epoch, checkpoints every save_steps steps and after each evaluation (CheckpointKeeper,
        # which also keeps the best epoch's checkpoint); the Trainer's load_best_model_at_end would need equal
        # strategies, so the best epoch's weights are loaded below instead.
        eval_strategy="epoch",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,
        load_best_model_at_end=False,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        optim="adamw_torch_fused",  # one fused kernel per step for all LoRA tensors, on the CPU too
        **precision,
    )
    trainer = _SentimentTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=classification_metrics,
        callbacks=[CheckpointKeeper(), *(callbacks or [])],
    )
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except KeyboardInterrupt:
        raise UserError(f"interrupted; checkpoints are in {checkpoints}, continue with --resume") from None

    evals = [e for e in trainer.state.log_history if "eval_macro_f1" in e]
    epochs = [
        {"epoch": e["epoch"], "loss": e.get("eval_loss"), "accuracy": e["eval_accuracy"],
         "macro_f1": e["eval_macro_f1"]}
        for e in evals
    ]
    if epochs:  # the first epoch with the highest macro-F1, as the Trainer's best model
        best_step = max(evals, key=lambda e: e["eval_macro_f1"])["step"]
        _load_checkpoint_weights(model, checkpoints / f"checkpoint-{best_step}")
    else:  # max_steps ended training before the first epoch's evaluation
        final = trainer.evaluate()
        epochs = [{"epoch": final["epoch"], "loss": final["eval_loss"], "accuracy": final["eval_accuracy"],
                   "macro_f1": final["eval_macro_f1"]}]
    best = max(epochs, key=lambda e: e["macro_f1"])

    run = {
        "base_model": _portable_base(config.base_model, base_dir),
        "base_model_dir": str(base_dir.resolve()),
        "base_fingerprint": base_fingerprint(base_dir),
        "label_names": data.label_names,
        "text_labels": config.text_labels,
        "max_length": config.max_length,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": list(config.target_modules)},
        "trainable_parameters": trainable,
        "total_parameters": total,
        "training": {k: v for k, v in asdict(config).items()
                     if k in ("lr", "batch_size", "epochs", "max_steps", "warmup_ratio", "weight_decay", "seed",
                              "validation_split", "save_dtype")},
        "precision": "bf16" if precision["bf16"] else "fp16" if precision["fp16"] else "fp32",
        "data": files,
        "rows": {"train": len(train_texts), "validation": len(val_texts)},
        "epochs": epochs,
        "best": best,
        "tokens": {"real": collator.real_tokens, "processed": collator.padded_tokens,
                   "padding_share": round(collator.padding_share(), 4)},
        "versions": package_versions(),
    }
    output = save_adapter(model, tokenizer, run, config.output, config.save_dtype)
    _release_checkpoint_dir(checkpoints, keep=config.keep_checkpoints)
    logger.info("best validation macro-F1 %.4f (epoch %s); adapter written to %s",
                best["macro_f1"], best["epoch"], output)
    return TrainResult(output=output, run=run, batches=collator.batches)


def save_adapter(model, tokenizer, run: dict, output: str | Path, save_dtype: str = "float32",
                 adapter_name: str = "default", inputs: Inputs = ()) -> Path:
    """Write adapter + tokenizer + run.json to a temporary directory, then rename it onto `output`.

    `output` may only be new, empty or an earlier adapter, and none of `inputs` (see `check_output_dir`)."""
    output = Path(output)
    with atomic_dir(output, kind="adapter", inputs=inputs) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=[adapter_name])
        if adapter_name != "default":  # PEFT writes non-default adapters into a sub-folder
            for f in (tmp / adapter_name).iterdir():
                f.rename(tmp / f.name)
            (tmp / adapter_name).rmdir()
        cast_weights(tmp, save_dtype)
        tokenizer.save_pretrained(str(tmp))
        write_run(tmp, {**run, "save_dtype": save_dtype})
    return output


def _load_checkpoint_weights(model, folder: Path) -> None:
    """Put the adapter weights of the checkpoint `folder` into `model`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    if result.unexpected_keys:
        raise RuntimeError(f"{folder}: unexpected adapter weights {result.unexpected_keys[:3]}")


def _n_positions(base_dir: Path) -> int:
    import json

    return json.loads((base_dir / "config.json").read_text()).get("n_positions", 1024)


def _portable_base(base_model: str, base_dir: Path) -> str:
    """A hub id stays a hub id; a local directory is recorded as an absolute path."""
    return str(Path(base_model).resolve()) if Path(base_model).exists() else str(base_model)
