"""Continuing an adapter's training (`train --init-adapter`): the parent's weights as the start, its base and label
names required, new data mixed with a seeded replay sample of the data it learned from, and the parent recorded
in the new adapter's run.json (and so its model card).

Replay keeps what the parent knew: trained on a few hundred corrections alone, an adapter drifts towards them and
forgets the rest (catastrophic forgetting); `replay_ratio` old rows per new row hold it in place.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .adapter_io import WEIGHTS_FILE, base_fingerprint, read_run
from .data import LabelledData, load_labelled
from .errors import UserError
from .modeling import resolve_base_model

logger = logging.getLogger(__name__)

# What `--resume` must find unchanged in a continued run, by the name a refusal gives it; absent in a plain run.
RESUME_NAMES = {"parent_weights_sha256": "--init-adapter (weights sha256)", "replay_sha256": "--replay data (sha256)",
                "replay_ratio": "--replay-ratio"}
RESUME_DEFAULTS = dict.fromkeys(RESUME_NAMES)


@dataclass(kw_only=True)
class Options:
    """The training settings of a continued run (TrainConfig has them)."""

    init_adapter: str | None = None  # the adapter to continue: its weights, base, label names and LoRA shape
    replay: str | None = None  # labelled data the parent learned from, sampled into the new training data
    replay_ratio: float = 1.0  # replay rows per new row
    # With init_adapter, base_model None means the parent's own base.


def weights_sha256(adapter_dir: str | Path) -> str:
    """The identity of an adapter's weights (its revision): the sha256 of its weights file."""
    digest = hashlib.sha256()
    with (Path(adapter_dir) / WEIGHTS_FILE).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parent_base(run: dict) -> str:
    """The base model a parent adapter was trained on: its recorded directory while it exists, else its name."""
    recorded = run.get("base_model_dir")
    return recorded if recorded and Path(recorded, "config.json").is_file() else run["base_model"]


def inherit(config):
    """`config` (a TrainConfig) with what a continued adapter takes from its parent: the label names, the LoRA
    shape, the max length and, unless given, the base; refused (one line) when the base or the label names given
    are not the parent's. A config without init_adapter is returned as it is."""
    if not config.init_adapter:
        if config.replay:
            raise UserError("--replay mixes the data an adapter learned from into its continued training: give the "
                            "adapter with --init-adapter DIR")
        return config
    if not config.replay_ratio >= 0:
        raise UserError(f"--replay-ratio {config.replay_ratio:g}: must be 0 or more (replay rows per new row)")
    path = config.init_adapter
    run = read_run(path)
    names = list(run["label_names"])
    if config.label_names is not None and list(config.label_names) != names:
        raise UserError(f"--init-adapter {path}: it has the labels {', '.join(names)}, not "
                        f"{', '.join(config.label_names)}; a continued adapter keeps its parent's labels")
    base_model = config.base_model if config.base_model is not None else parent_base(run)
    fingerprint = base_fingerprint(resolve_base_model(base_model, config.model_dir))
    if fingerprint != run.get("base_fingerprint"):
        raise UserError(f"--init-adapter {path}: it was trained on base model {run.get('base_model')!r} (fingerprint "
                        f"{run.get('base_fingerprint')}), not on {base_model!r} ({fingerprint}); continue it on its "
                        f"own base")
    lora = run["lora"]
    return replace(config, base_model=base_model, label_names=names, lora_r=lora["r"], lora_alpha=lora["alpha"],
                   lora_dropout=lora["dropout"], target_modules=list(lora["target_modules"]),
                   max_length=int(run.get("max_length", config.max_length)))


def with_replay(config, data: LabelledData) -> tuple[LabelledData, dict]:
    """The new data followed by `config.replay_ratio` x its rows drawn (seeded) from `config.replay`, leaving out
    the texts the new data labels anew; and the files' summaries for run.json (`train`, and `replay` when mixed)."""
    files = {"train": data.summary()}
    if not config.replay:
        return data, files
    options = dict(text_column=config.text_column, label_column=config.label_column, encoding=config.encoding)
    old = load_labelled(config.replay, label_names=data.label_names,
                        text_labels=bool(read_run(config.init_adapter).get("text_labels")), min_classes=1, **options)
    new_texts = set(data.texts)
    pool = [i for i, text in enumerate(old.texts) if text not in new_texts]
    wanted = round(config.replay_ratio * len(data.texts))
    if wanted > len(pool):
        logger.warning("--replay %s: %d rows wanted (%g per new row), %d available: all are used", config.replay,
                       wanted, config.replay_ratio, len(pool))
    drawn = np.sort(np.random.default_rng(config.seed).choice(pool, size=min(wanted, len(pool)), replace=False))
    mixed = replace(data, texts=data.texts + [old.texts[i] for i in drawn],
                    labels=data.labels + [old.labels[i] for i in drawn],
                    lines=data.lines + [old.lines[i] for i in drawn])
    files["replay"] = {**old.summary(), "rows_kept": len(drawn), "ratio": config.replay_ratio, "seed": config.seed}
    logger.info("training data: %d new rows + %d replay rows from %s", len(data.texts), len(drawn), config.replay)
    return mixed, files


def resume_identity(config, files: dict) -> dict:
    """What `--resume` checks of a continued run besides the plain run's settings (RESUME_NAMES); {} for a plain run."""
    if not config.init_adapter:
        return {}
    return {"parent_weights_sha256": weights_sha256(config.init_adapter),
            "replay_sha256": files.get("replay", {}).get("sha256"), "replay_ratio": config.replay_ratio}


def start_model(model, config):
    """The parent adapter loaded onto `model` (the base classifier) with its LoRA weights and head trainable."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(config.init_adapter), is_trainable=True)


def parent_record(config) -> dict:
    """run.json's `parent` of a continued adapter: where it came from and which weights (their sha256: the parent's
    revision), its base fingerprint, its generation; {} for an adapter trained from scratch."""
    if not config.init_adapter:
        return {}
    run = read_run(config.init_adapter)
    return {"parent": {"path": str(Path(config.init_adapter).resolve()), "weights_sha256": weights_sha256(
                config.init_adapter), "base_fingerprint": run.get("base_fingerprint"),
                "label_names": run["label_names"], "best": run.get("best"),
                "generation": (run.get("parent") or {}).get("generation", -1) + 1}}  # 0: trained from scratch
