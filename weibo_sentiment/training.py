"""LoRA fine-tuning with the Hugging Face Trainer: per-batch padding, length-grouped batches, best-by-F1.

`train` runs the recipe's steps in order: `setup` (inputs checked, data split and encoded, checkpoint directory
locked and claimed), `build_trainer`, the loop (`recipe.run_loop`), `best_epochs`, `calibrate`, `report`, `save`."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, TaskType, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from transformers import Trainer, set_seed

from . import warm_start
from .adapter_io import SAVE_DTYPES, base_fingerprint, package_versions
from .adapter_store import save_adapter
from .batches import PaddedBatches, encode
from .calibration import fit_validation
from .checkpoints import CheckpointKeeper, ResumeRules, load_checkpoint_weights
from .data import DEFAULT_LABEL_COLUMN, LabelledData, load_labelled, stratified_split
from .distributed import Ranks
from .domains import validation_domain_extras
from .emoticons import strip_emoticons
from .errors import UserError
from .modeling import load_classifier, load_tokenizer, resolve_base_model
from .output import base_inputs, check_output_dir
from .plots import training_extras
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
from .sampling import EmoticonDropout, EpochSeededLengthSampler
from .speedups import fast_activations, fast_dropout

logger = logging.getLogger(__name__)

# What must match to resume, in the order a refusal names them.
RESUME_RULES = ResumeRules(
    names={
        "data_sha256": "training data (sha256)", "validation_data_sha256": "validation data (sha256)",
        "text_column": "--text-column", "label_column": "--label-column", "encoding": "--encoding",
        "label_names": "label names", "base_fingerprint": "base model (fingerprint)", "lr": "--lr",
        "batch_size": "--batch-size", "epochs": "--epochs", "max_steps": "--max-steps",
        "warmup_ratio": "--warmup-ratio", "weight_decay": "weight decay", "seed": "--seed",
        "validation_split": "--validation-split", "max_length": "--max-length", "lora_r": "--lora-r",
        "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout", "target_modules": "--target-modules",
        "precision": "precision", "emoticon_dropout": "--emoticon-dropout", "world_size": "number of processes",
        "gradient_accumulation_steps": "--gradient-accumulation-steps", **warm_start.RESUME_NAMES,
    },
    # What a marker written before a setting joined the identity means by its absence.
    defaults={"emoticon_dropout": 0.0, "world_size": 1, "gradient_accumulation_steps": 1, **warm_start.RESUME_DEFAULTS},
    extensible=frozenset({"epochs", "max_steps"}),  # a finished run kept with --keep-checkpoints may train longer
    unset={"validation_data_sha256": "none (split off --data)"},
)
# The settings run.json records under "training", in this order.
RECORDED_SETTINGS = ("validation_split", "lr", "batch_size", "gradient_accumulation_steps", "epochs", "max_steps",
                     "warmup_ratio", "weight_decay", "seed", "emoticon_dropout", "save_dtype")


@dataclass(kw_only=True)
class TrainConfig(RunConfig, warm_start.Options):
    """Everything a training run needs; the defaults are the original recipe's."""

    output: str = "best_weibo_sentiment_lora"
    lr: float = 5e-4
    batch_size: int = 16  # per process: the effective batch is batch_size x processes x gradient_accumulation_steps
    epochs: float = 3.0
    warmup_ratio: float = 0.1
    data: str = "dataset/weibo_senti_100k.csv"
    validation_data: str | None = None
    validation_split: float = 0.1
    label_column: str = DEFAULT_LABEL_COLUMN
    label_names: list[str] | None = None
    text_labels: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj"])
    gradient_accumulation_steps: int = 1
    max_length: int = 128
    # Each time a training text is drawn, with this probability its emoticons are removed (see EmoticonDropout).
    emoticon_dropout: float = 0.0
    save_dtype: str = "float32"


@dataclass
class TrainResult:
    output: Path
    run: dict
    # (real, padded) tokens of every collated batch in order: training steps, then evaluation batches.
    batches: list[tuple[int, int]] = field(default_factory=list, repr=False)
    # False in the other processes of a data-parallel run (torchrun, accelerate launch): only rank 0 reports.
    main_process: bool = True


@dataclass
class Prepared:
    """What `setup` prepared: the data, the base, the encoded splits and where this run stands."""

    data: LabelledData
    files: dict
    train_rows: int
    val_texts: list[str]
    val_labels: list[int]
    base_dir: Path
    tokenizer: object
    train_set: torch.utils.data.Dataset | list[dict]
    val_set: list[dict]
    precision: dict
    ranks: Ranks
    resume_from: Path | None


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


def load_training_data(config: TrainConfig) -> tuple[LabelledData, tuple, tuple, dict]:
    """Validate every input file, then split; nothing here touches a model."""
    options = dict(text_column=config.text_column, label_column=config.label_column, encoding=config.encoding)
    data = load_labelled(config.data, label_names=config.label_names, text_labels=config.text_labels, **options)
    data, files = warm_start.with_replay(config, data)
    if config.validation_data:
        val = load_labelled(config.validation_data, label_names=data.label_names, text_labels=config.text_labels,
                            min_classes=1, **options)
        train_split, val_split = (data.texts, data.labels), (val.texts, val.labels)
        files["validation"] = val.summary()
    else:
        train_split, val_split = stratified_split(data, config.validation_split, config.seed)
    return data, train_split, val_split, files


def run_identity(config: TrainConfig, files: dict, label_names: list[str], base_dir: Path, precision: str,
                 world_size: int = 1) -> dict:
    """What `--resume` checks against the checkpoints' run (`RESUME_RULES`)."""
    validation = files.get("validation")
    identity = {
        "data_sha256": files["train"]["sha256"],
        "validation_data_sha256": validation["sha256"] if validation else None,
        "text_column": config.text_column, "label_column": config.label_column, "encoding": config.encoding,
        "label_names": list(label_names), "base_fingerprint": base_fingerprint(base_dir),
        "lr": config.lr, "batch_size": config.batch_size, "epochs": config.epochs, "max_steps": config.max_steps,
        "warmup_ratio": config.warmup_ratio, "weight_decay": config.weight_decay, "seed": config.seed,
        "validation_split": None if validation else config.validation_split, "max_length": config.max_length,
        "lora_r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
        "target_modules": list(config.target_modules), "precision": precision,
        "emoticon_dropout": config.emoticon_dropout, **warm_start.resume_identity(config, files),
    }
    if world_size > 1 or config.gradient_accumulation_steps > 1:  # absent: 1 (see RESUME_RULES.defaults)
        identity.update(world_size=world_size, gradient_accumulation_steps=config.gradient_accumulation_steps)
    return identity


def classification_metrics(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    predicted = np.argmax(logits, axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro")),
    }


class _SentimentTrainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None) or [len(x["input_ids"]) for x in dataset]
        return EpochSeededLengthSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths, self.args.data_seed, dataset)

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        # With several processes accelerate deals the sampler's batches out to the ranks in turn (BatchSamplerShard:
        # rank r runs batches r, r + N, ...; all ranks the same number). That wrapper has no set_epoch, and in an
        # epoch resumed in its middle (the shard wrapped again to skip batches) neither the Trainer nor accelerate
        # would reach the sampler: it would deal out the wrong epoch's order. Give the wrapper the sampler's.
        shard = getattr(loader, "batch_sampler", None)
        sampler = getattr(getattr(shard, "batch_sampler", None), "sampler", None)
        if isinstance(sampler, EpochSeededLengthSampler) and not hasattr(shard, "set_epoch"):
            shard.set_epoch = sampler.set_epoch
        return loader


def setup(config: TrainConfig, held: ExitStack) -> Prepared:
    """Check every input before minutes of training, split and encode the data, and lock (the lock kept in
    `held`) and claim the checkpoint directory (rank 0: the other ranks wait for what it found)."""
    if not 0 <= config.emoticon_dropout <= 1:
        raise UserError(f"--emoticon-dropout {config.emoticon_dropout:g}: must be between 0 and 1")
    if config.save_dtype not in SAVE_DTYPES:
        raise UserError(f"unknown --save-dtype {config.save_dtype!r} (choose from {', '.join(SAVE_DTYPES)})")
    check_output_dir(config.output, "adapter", [  # before training for minutes, and again when writing
        ("the --data file", config.data), ("the --validation-data file", config.validation_data),
        ("the --checkpoint-dir directory", config.checkpoint_dir), *base_inputs(config.base_model, config.model_dir)])
    precision = precision_arguments(config.precision)
    data, (train_texts, train_labels), (val_texts, val_labels), files = load_training_data(config)
    if config.save_steps < 1:
        raise UserError(f"--save-steps {config.save_steps}: must be at least 1")
    if config.gradient_accumulation_steps < 1:
        raise UserError(f"--gradient-accumulation-steps {config.gradient_accumulation_steps}: must be at least 1")
    ranks = Ranks()
    marker = inspect_checkpoints(config, ranks, held)

    base_dir = resolve_base_model(config.base_model, config.model_dir)
    tokenizer = load_tokenizer(base_dir)
    n_positions = base_positions(base_dir)
    if config.max_length > n_positions:
        raise UserError(f"--max-length {config.max_length} exceeds the base model's {n_positions} positions")
    if config.emoticon_dropout > 0:
        train_set = EmoticonDropout.build(tokenizer, train_texts, train_labels, config.max_length,
                                          config.emoticon_dropout, config.seed)
    else:
        train_set = encode(tokenizer, train_texts, train_labels, config.max_length)
    val_set = encode(tokenizer, val_texts, val_labels, config.max_length)
    identity = run_identity(config, files, data.label_names, base_dir, precision_name(precision), ranks.world)
    resume_from = claim_checkpoints(config, ranks, marker, identity, RESUME_RULES)
    return Prepared(data=data, files=files, train_rows=len(train_texts), val_texts=val_texts, val_labels=val_labels,
                 base_dir=base_dir, tokenizer=tokenizer, train_set=train_set, val_set=val_set, precision=precision,
                 ranks=ranks, resume_from=resume_from)


def build_trainer(config: TrainConfig, prepared: Prepared,
                  callbacks: list | None) -> tuple[torch.nn.Module, Trainer, PaddedBatches]:
    """The LoRA model (speed patches applied) and its Trainer, whose collator counts the padding."""
    set_seed(config.seed)
    model = load_classifier(prepared.base_dir, prepared.data.label_names, prepared.tokenizer,
                            attn_implementation="sdpa")
    fast_activations(model)
    model = warm_start.start_model(model, config) if config.init_adapter else get_peft_model(model, lora_config(config))
    if not torch.cuda.is_available():
        fast_dropout(model)
    if prepared.ranks.main:
        model.print_trainable_parameters()

    collator = PaddedBatches(prepared.tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
    args = training_arguments(
        config, prepared.ranks, prepared.precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # eval_batch_size None: 64 on the CPU, 256 on a GPU (evaluation holds no gradients)
        per_device_eval_batch_size=config.eval_batch_size or (256 if torch.cuda.is_available() else 64),
        train_sampling_strategy="group_by_length",  # with a seeded order: see EpochSeededLengthSampler
        # Evaluation per epoch, checkpoints every save_steps steps and after each evaluation (CheckpointKeeper,
        # which also keeps the best epoch's checkpoint); the Trainer's load_best_model_at_end would need equal
        # strategies, so the best epoch's weights are loaded by `best_epochs` instead.
        eval_strategy="epoch",
        load_best_model_at_end=False,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
    )
    trainer = _SentimentTrainer(
        model=model,
        args=args,
        train_dataset=prepared.train_set,
        eval_dataset=prepared.val_set,
        data_collator=collator,
        processing_class=prepared.tokenizer,
        compute_metrics=classification_metrics,
        callbacks=[CheckpointKeeper(), *(callbacks or [])],
    )
    use_tensorboard_dir(trainer, config)
    return model, trainer, collator


def best_epochs(trainer: Trainer, model: torch.nn.Module, checkpoints: Path, ranks: Ranks) -> list[dict]:
    """Every epoch's validation figures, with the weights of the best epoch (the first with the highest macro-F1,
    as the Trainer's best model) loaded into `model`."""
    evals = [e for e in trainer.state.log_history if "eval_macro_f1" in e]
    epochs = [
        {"epoch": e["epoch"], "loss": e.get("eval_loss"), "accuracy": e["eval_accuracy"],
         "macro_f1": e["eval_macro_f1"]}
        for e in evals
    ]
    ranks.barrier()  # rank 0 has written (and completed) every checkpoint
    if epochs:
        best_step = max(evals, key=lambda e: e["eval_macro_f1"])["step"]
        load_checkpoint_weights(model, checkpoints / f"checkpoint-{best_step}")
    else:  # max_steps ended training before the first epoch's evaluation
        final = trainer.evaluate()
        epochs = [{"epoch": final["epoch"], "loss": final["eval_loss"], "accuracy": final["eval_accuracy"],
                   "macro_f1": final["eval_macro_f1"]}]
    return epochs


def calibrate(trainer: Trainer, collator: PaddedBatches, val_set: list[dict]) -> tuple[float, dict, object]:
    """Temperature scaling on the validation split with the best weights: every prediction path divides the
    logits by it, so the reported confidence means what it says (see calibration.py). With several processes
    predict() is collective: each rank scores its shard and all get every prediction. Also returns those
    predictions: the adapter's default domain (domains.py) is made of them."""
    counted = collator.real_tokens, collator.padded_tokens, len(collator.batches)
    validation = trainer.predict(val_set)
    collator.real_tokens, collator.padded_tokens = counted[:2]  # the padding report covers training + epochs
    del collator.batches[counted[2]:]
    return (*fit_validation(validation.predictions, validation.label_ids), validation)


def count_every_rank(trainer: Trainer, collator: PaddedBatches, ranks: Ranks) -> None:
    """The padding report covers every rank's batches: sum the token counts over the ranks."""
    if ranks.world > 1:
        counts = torch.tensor([collator.real_tokens, collator.padded_tokens], device=trainer.args.device)
        collator.real_tokens, collator.padded_tokens = map(int, trainer.accelerator.reduce(counts, "sum").tolist())


def _stripped_validation(trainer, collator: PaddedBatches, tokenizer, texts: list[str], labels: list[int],
                         max_length: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the trainer's model on the validation texts with their emoticons removed, as
    `evaluate --strip-emoticons` scores them (a text that was only emoticons is read as "。"); outside the padding
    report."""
    counted = collator.real_tokens, collator.padded_tokens, len(collator.batches)
    stripped = encode(tokenizer, [strip_emoticons(t) or "。" for t in texts], labels, max_length)
    metrics = trainer.predict(stripped, metric_key_prefix="stripped").metrics
    collator.real_tokens, collator.padded_tokens = counted[:2]
    del collator.batches[counted[2]:]
    return {"accuracy": metrics["stripped_accuracy"], "macro_f1": metrics["stripped_macro_f1"]}


def report(config: TrainConfig, prepared: Prepared, model: torch.nn.Module, trainer: Trainer,
           collator: PaddedBatches, epochs: list[dict], calibrated: tuple[float, dict]) -> dict:
    """run.json's contents, with `calibrated` (calibrate's temperature and block). The stripped validation is
    collective: every rank runs this."""
    temperature, calibration = calibrated
    count_every_rank(trainer, collator, prepared.ranks)
    trainable, total = model.get_nb_trainable_parameters()
    args = trainer.args
    return {
        "base_model": portable_base(config.base_model),
        "base_model_dir": str(prepared.base_dir.resolve()),
        "base_fingerprint": base_fingerprint(prepared.base_dir),
        "label_names": prepared.data.label_names,
        "text_labels": config.text_labels,
        "max_length": config.max_length,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": list(config.target_modules)},
        "trainable_parameters": trainable,
        "total_parameters": total,
        "training": {**{k: getattr(config, k) for k in RECORDED_SETTINGS},
                     "world_size": args.world_size,
                     "effective_batch_size": args.train_batch_size * args.world_size
                     * args.gradient_accumulation_steps},
        "precision": precision_name(prepared.precision),
        "data": prepared.files,
        "rows": {"train": prepared.train_rows, "validation": len(prepared.val_texts)},
        "validation_stripped": _stripped_validation(trainer, collator, prepared.tokenizer, prepared.val_texts,
                                                    prepared.val_labels, config.max_length),
        "epochs": epochs,
        "best": max(epochs, key=lambda e: e["macro_f1"]),
        "temperature": temperature,
        "calibration": calibration,
        "tokens": {"real": collator.real_tokens, "processed": collator.padded_tokens,
                   "padding_share": round(collator.padding_share(), 4)},
        "versions": package_versions(), **warm_start.parent_record(config),
    }


def save(config: TrainConfig, prepared: Prepared, model: torch.nn.Module, trainer: Trainer, run: dict,
         validation) -> Path:
    """Rank 0 writes the adapter (with training.png and the default domain from the `validation` predictions)
    once every rank is done with the checkpoints."""
    return write_once(config, prepared.ranks, lambda: save_adapter(
        model, prepared.tokenizer, run, config.output, config.save_dtype,
        extras=validation_domain_extras(validation.predictions, validation.label_ids,
                                        then=training_extras(trainer.state.log_history))))


def train(config: TrainConfig, callbacks: list | None = None) -> TrainResult:
    """Fine-tune a LoRA adapter and write the best one (by validation macro-F1) to `config.output`. `callbacks`:
    extra `transformers.TrainerCallback`s (the benchmark times steps with one). With `config.init_adapter` it
    continues that adapter instead of starting a new one (weibo_sentiment.warm_start)."""
    config = warm_start.inherit(config)  # a continued adapter: its parent's base, labels and LoRA shape
    with ExitStack() as held:  # the checkpoint directory's writer lock, until the run ends
        prepared = setup(config, held)
        model, trainer, collator = build_trainer(config, prepared, callbacks)
        run_loop(trainer, config, prepared.resume_from)
        epochs = best_epochs(trainer, model, config.checkpoints(), prepared.ranks)
        temperature, calibration, validation = calibrate(trainer, collator, prepared.val_set)
        run = report(config, prepared, model, trainer, collator, epochs, (temperature, calibration))
        output = save(config, prepared, model, trainer, run, validation)
    logger.info("best validation macro-F1 %.4f (epoch %s); adapter written to %s",
                run["best"]["macro_f1"], run["best"]["epoch"], output)
    return TrainResult(output=output, run=run, batches=collator.batches, main_process=prepared.ranks.main)
