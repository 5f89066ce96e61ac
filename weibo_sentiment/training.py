"""LoRA fine-tuning with the Hugging Face Trainer: per-batch padding, length-grouped batches, best-by-F1."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, TaskType, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from .adapter_io import SAVE_DTYPES, base_fingerprint, cast_weights, package_versions, write_run
from .calibration import fit_validation
from .checkpoints import (
    CheckpointKeeper,
    claim_checkpoint_dir,
    inspect_checkpoint_dir,
    load_checkpoint_weights,
    release_checkpoint_dir,
    run_identity,
)
from .data import (
    DEFAULT_LABEL_COLUMN,
    DEFAULT_TEXT_COLUMN,
    LabelledData,
    load_labelled,
    stratified_split,
    strip_emoticons,
)
from .domains import validation_domain_extras
from .errors import UserError
from .model_card import adapter_card, write_card
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
    save_tokenizer,
)
from .plots import training_extras

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
    batch_size: int = 16  # per process: the effective batch is batch_size x processes x gradient_accumulation_steps
    gradient_accumulation_steps: int = 1
    eval_batch_size: int | None = None  # None: 64 on the CPU, 256 on a GPU (evaluation holds no gradients)
    epochs: float = 3.0
    max_steps: int = -1
    max_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    # Each time a training text is drawn, with this probability its emoticons are removed (see EmoticonDropout).
    emoticon_dropout: float = 0.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    save_dtype: str = "float32"
    checkpoint_dir: str | None = None
    save_steps: int = 500  # a checkpoint every N steps (and after each epoch's evaluation)
    resume: bool = False
    restart: bool = False  # discard the checkpoints of an earlier run of this checkpoint dir, then start afresh
    keep_checkpoints: bool = False
    logging_steps: int = 50
    report_to: str | list[str] = "none"  # none | tensorboard | mlflow (or a list): the Trainer's report_to

    def checkpoints(self) -> Path:
        out = Path(self.output.rstrip("/"))
        return Path(self.checkpoint_dir) if self.checkpoint_dir else out.with_name(out.name + ".checkpoints")


@dataclass
class TrainResult:
    output: Path
    run: dict
    # (real, padded) tokens of every collated batch in order: training steps, then evaluation batches.
    batches: list[tuple[int, int]] = field(default_factory=list, repr=False)
    # False in the other processes of a data-parallel run (torchrun, accelerate launch): only rank 0 reports.
    main_process: bool = True


class Ranks:
    """Where this process stands in a data-parallel run started by `torchrun` or `accelerate launch` (their RANK and
    WORLD_SIZE); one process alone is rank 0 of 1 and nothing here changes what it does.

    With several processes the process group is set up at once (gloo on the CPU, NCCL on CUDA: the backends
    `TrainingArguments` would pick, which it then reuses), so that rank 0 alone can claim the checkpoint directory
    and write the adapter while the others wait for its outcome (`once`)."""

    def __init__(self):
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.main = self.rank == 0
        self.cuda = torch.cuda.is_available()
        if self.world > 1:
            from datetime import timedelta

            from accelerate import PartialState

            # The CPU needs use_cpu + gloo: without them each rank would train alone, on its own (identical) data.
            PartialState(cpu=not self.cuda, backend="nccl" if self.cuda else "gloo",
                         **({"timeout": timedelta(seconds=1800)} if self.cuda else {}))
            if not self.main:  # logs once: the other ranks say only what goes wrong
                logging.getLogger("weibo_sentiment").setLevel(logging.WARNING)

    def training_arguments(self) -> dict:
        """The Trainer's distributed settings (none for one process)."""
        if self.world == 1:
            return {}
        # PEFT models would make the Trainer search for unused parameters after every backward pass; all are used.
        # Logs and checkpoints come from rank 0 only, not from the first process of every node.
        extra = {"ddp_find_unused_parameters": False, "ddp_backend": "nccl" if self.cuda else "gloo",
                 "log_on_each_node": False, "save_on_each_node": False}
        return extra if self.cuda else {**extra, "use_cpu": True}

    def once(self, work: Callable[[], object]):
        """`work()` on rank 0 alone; every rank returns its result or raises its UserError (so that a refusal stops
        all processes instead of leaving the others waiting)."""
        if self.world == 1:
            return work()
        outcome: list = [None]
        failure = None
        if self.main:
            try:
                outcome[0] = ("ok", work())
            except UserError as e:
                outcome[0] = ("refused", str(e))
            except BaseException as e:  # noqa: BLE001 (passed on, then raised here)
                outcome[0], failure = ("failed", f"rank 0 failed: {type(e).__name__}: {e}"), e
        torch.distributed.broadcast_object_list(outcome, src=0)
        if failure is not None:
            raise failure
        kind, value = outcome[0]
        if kind != "ok":
            error = UserError(value)
            error.echo = not self.main  # rank 0 says it; the CLI keeps the other ranks' copies quiet
            raise error
        return value

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """The end of a data-parallel run: once every rank is here, tear the process group down. Left to the
        interpreter's exit, gloo's threads could still be talking to a rank that is gone, and abort the process."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


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


def train(config: TrainConfig, callbacks: list | None = None) -> TrainResult:
    """Fine-tune a LoRA adapter and write the best one (by validation macro-F1) to `config.output`.

    `callbacks` are extra `transformers.TrainerCallback`s (the benchmark times steps with one).
    """
    if not 0 <= config.emoticon_dropout <= 1:
        raise UserError(f"--emoticon-dropout {config.emoticon_dropout:g}: must be between 0 and 1")
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
    if config.gradient_accumulation_steps < 1:
        raise UserError(f"--gradient-accumulation-steps {config.gradient_accumulation_steps}: must be at least 1")
    ranks = Ranks()
    # The checkpoint directory is rank 0's: it inspects and claims it, the other ranks wait for what it found.
    marker = ranks.once(lambda: inspect_checkpoint_dir(checkpoints, config))

    base_dir = resolve_base_model(config.base_model, config.model_dir)
    tokenizer = load_tokenizer(base_dir)
    n_positions = _n_positions(base_dir)
    if config.max_length > n_positions:
        raise UserError(f"--max-length {config.max_length} exceeds the base model's {n_positions} positions")
    if config.emoticon_dropout > 0:
        train_set = EmoticonDropout.build(tokenizer, train_texts, train_labels, config.max_length,
                                          config.emoticon_dropout, config.seed)
    else:
        train_set = encode(tokenizer, train_texts, train_labels, config.max_length)
    val_set = encode(tokenizer, val_texts, val_labels, config.max_length)
    precision_name = "bf16" if precision["bf16"] else "fp16" if precision["fp16"] else "fp32"
    identity = run_identity(config, files, data.label_names, base_dir, precision_name)
    if ranks.world > 1 or config.gradient_accumulation_steps > 1:  # absent: 1 (see checkpoints._IDENTITY_DEFAULTS)
        identity.update(world_size=ranks.world, gradient_accumulation_steps=config.gradient_accumulation_steps)
    resume_from = ranks.once(lambda: claim_checkpoint_dir(checkpoints, marker, identity, config))

    set_seed(config.seed)
    model = load_classifier(base_dir, data.label_names, tokenizer, attn_implementation="sdpa")
    fast_activations(model)
    model = get_peft_model(model, lora_config(config))
    if not torch.cuda.is_available():
        fast_dropout(model)
    if ranks.main:
        model.print_trainable_parameters()
    trainable, total = model.get_nb_trainable_parameters()

    collator = PaddedBatches(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
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
        report_to=report_to(config),
        seed=config.seed,
        data_seed=config.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        optim="adamw_torch_fused",  # one fused kernel per step for all LoRA tensors, on the CPU too
        **{**precision, **ranks.training_arguments()},
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
    _tensorboard_dir(trainer, config)
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
    ranks.barrier()  # rank 0 has written (and completed) every checkpoint
    if epochs:  # the first epoch with the highest macro-F1, as the Trainer's best model
        best_step = max(evals, key=lambda e: e["eval_macro_f1"])["step"]
        load_checkpoint_weights(model, checkpoints / f"checkpoint-{best_step}")
    else:  # max_steps ended training before the first epoch's evaluation
        final = trainer.evaluate()
        epochs = [{"epoch": final["epoch"], "loss": final["eval_loss"], "accuracy": final["eval_accuracy"],
                   "macro_f1": final["eval_macro_f1"]}]
    best = max(epochs, key=lambda e: e["macro_f1"])
    # Temperature scaling on the validation split with the best weights: every prediction path divides the
    # logits by it, so the reported confidence means what it says (see calibration.py). With several processes
    # predict() is collective: each rank scores its shard and all get every prediction.
    counted = collator.real_tokens, collator.padded_tokens, len(collator.batches)
    validation = trainer.predict(val_set)
    collator.real_tokens, collator.padded_tokens = counted[:2]  # the padding report covers training + epochs
    del collator.batches[counted[2]:]
    temperature, calibration = fit_validation(validation.predictions, validation.label_ids)
    if ranks.world > 1:  # the padding report covers every rank's batches
        counts = torch.tensor([collator.real_tokens, collator.padded_tokens], device=args.device)
        collator.real_tokens, collator.padded_tokens = map(int, trainer.accelerator.reduce(counts, "sum").tolist())

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
        "training": {**{k: v for k, v in asdict(config).items()
                        if k in ("lr", "batch_size", "gradient_accumulation_steps", "epochs", "max_steps",
                                 "warmup_ratio", "weight_decay", "seed", "validation_split", "save_dtype",
                                 "emoticon_dropout")},
                     "world_size": args.world_size,
                     "effective_batch_size": args.train_batch_size * args.world_size
                     * args.gradient_accumulation_steps},
        "precision": "bf16" if precision["bf16"] else "fp16" if precision["fp16"] else "fp32",
        "data": files,
        "rows": {"train": len(train_texts), "validation": len(val_texts)},
        "validation_stripped": _stripped_validation(trainer, collator, tokenizer, val_texts, val_labels,
                                                    config.max_length),
        "epochs": epochs,
        "best": best,
        "temperature": temperature,
        "calibration": calibration,
        "tokens": {"real": collator.real_tokens, "processed": collator.padded_tokens,
                   "padding_share": round(collator.padding_share(), 4)},
        "versions": package_versions(),
    }

    def write() -> Path:  # rank 0 alone, once every rank is done with the checkpoints
        written = save_adapter(model, tokenizer, run, config.output, config.save_dtype,  # training.png, domain
                               extras=validation_domain_extras(validation.predictions, validation.label_ids,
                                                               then=training_extras(trainer.state.log_history)))
        release_checkpoint_dir(checkpoints, keep=config.keep_checkpoints)
        return written

    ranks.barrier()
    output = ranks.once(write)
    ranks.close()
    logger.info("best validation macro-F1 %.4f (epoch %s); adapter written to %s",
                best["macro_f1"], best["epoch"], output)
    return TrainResult(output=output, run=run, batches=collator.batches, main_process=ranks.main)


def save_adapter(model, tokenizer, run: dict, output: str | Path, save_dtype: str = "float32",
                 adapter_name: str = "default", inputs: Inputs = (),
                 extras: Callable[[Path], None] | None = None) -> Path:
    """Write adapter + tokenizer + run.json to a temporary directory, then rename it onto `output`.

    `output` may only be new, empty or an earlier adapter, and none of `inputs` (see `check_output_dir`).
    `extras(tmp)` may add files (pictures, reports) to the directory before it is renamed into place."""
    output = Path(output)
    with atomic_dir(output, kind="adapter", inputs=inputs) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=[adapter_name])
        if adapter_name != "default":  # PEFT writes non-default adapters into a sub-folder
            for f in (tmp / adapter_name).iterdir():
                f.rename(tmp / f.name)
            (tmp / adapter_name).rmdir()
        cast_weights(tmp, save_dtype)
        save_tokenizer(tokenizer, tmp)  # no token_type_ids from a plain AutoTokenizer either
        write_run(tmp, {**run, "save_dtype": save_dtype})
        if extras is not None:
            extras(tmp)
        # The model card replaces PEFT's empty template README.md (after extras: it shows their pictures).
        write_card(tmp, adapter_card({**run, "save_dtype": save_dtype}, output, directory=tmp))
    return output


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


def _n_positions(base_dir: Path) -> int:

    return json.loads((base_dir / "config.json").read_text()).get("n_positions", 1024)


def _portable_base(base_model: str, base_dir: Path) -> str:
    """A hub id stays a hub id; a local directory is recorded as an absolute path."""
    return str(Path(base_model).resolve()) if Path(base_model).exists() else str(base_model)


REPORTERS = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}  # --report-to: importable as


def report_to(config: TrainConfig) -> list[str]:
    """`config.report_to` as the Trainer's `report_to` list; a reporter whose package is missing is a UserError
    naming what to install."""
    import importlib.util

    chosen = [config.report_to] if isinstance(config.report_to, str) else list(config.report_to)
    chosen = [r for r in dict.fromkeys(chosen) if r != "none"]
    for name in chosen:
        if name not in REPORTERS:
            raise UserError(f"--report-to {name}: unknown (choose from none, {', '.join(REPORTERS)})")
        if not any(importlib.util.find_spec(module) for module in REPORTERS[name]):
            raise UserError(f"--report-to {name} needs the {name} package: pip install {name}")
    return chosen


def tensorboard_dir(config: TrainConfig) -> Path:
    """Where `--report-to tensorboard` writes: OUTPUT.tensorboard/ beside the adapter (never inside the
    checkpoint directory, which holds only checkpoints), one sub-folder per run."""
    from datetime import datetime

    out = Path(config.output.rstrip("/"))
    return out.with_name(out.name + ".tensorboard") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _tensorboard_dir(trainer: Trainer, config: TrainConfig) -> None:
    # The Trainer would log into output_dir (our checkpoint directory) unless TENSORBOARD_LOGGING_DIR says where.
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(tensorboard_dir(config))

