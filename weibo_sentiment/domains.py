"""Named domains: what an adapter needs to know about one kind of posts to correct shares counted on them.

A domain is a labelled sample of an analyst's own posts (say 1,000 posts about one topic, labelled by hand),
scored once by the adapter: the temperature fitted on it (calibration.fit_validation) and the sample's raw
logits and true labels, from which the quantification methods learn the adapter's error rates on such posts
(quantification.py). Posteriors for quantification are softmax(logits / the domain's temperature).

Records live in the adapter directory as `domains/NAME.json`, written atomically and never over a file that is
not a domain record of ours. Each carries the fingerprint of the adapter weights it was fitted with: a record
from other weights (an adapter retrained in place, a copied folder) is refused rather than silently applied.
`train` stores the domain `validation` from its validation split: the default when no domain is named, and
honest only for posts like the training data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .adapter_io import WEIGHTS_FILE, read_run
from .calibration import fit_validation, softmax
from .errors import UserError
from .output import RUN_FILE, atomic_open
from .quantification import check_domain_sample

logger = logging.getLogger(__name__)

DOMAINS_DIR = "domains"
DEFAULT_DOMAIN = "validation"  # written by train from its validation split
RECORD_VERSION = 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9\u4e00-\u9fff][A-Za-z0-9_.\-\u4e00-\u9fff]{0,63}")
DEFAULT_DOMAIN_NOTE = ("shares are corrected with the domain 'validation', the adapter's own validation split: "
                       "on posts unlike the training data the correction needs a labelled sample of their own "
                       "(weibo-sentiment calibrate --domain NAME)")


@dataclass
class Domain:
    """One domain record: the sample's raw logits and labels, its fitted temperature, and where it came from."""

    name: str
    label_names: list[str]
    logits: np.ndarray
    labels: np.ndarray
    temperature: float
    adapter_fingerprint: str
    source: str
    created: str = ""
    calibration: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(len(self.labels))

    @property
    def counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts)}

    def posteriors(self) -> np.ndarray:
        """The sample's calibrated probabilities, softmax(logits / temperature), in float64."""
        return softmax(self.logits, self.temperature)

    def as_record(self) -> dict:
        return {"domain": self.name, "version": RECORD_VERSION, "created": self.created, "source": self.source,
                "label_names": list(self.label_names), "rows": self.rows, "counts": self.counts,
                "temperature": self.temperature, "calibration": self.calibration,
                "adapter_fingerprint": self.adapter_fingerprint,
                "labels": self.labels.tolist(), "logits": np.round(self.logits.astype(np.float64), 6).tolist()}


def adapter_fingerprint(adapter_dir: str | Path) -> str:
    """The identity of an adapter's weights: the start of the sha256 of its weights file."""
    digest = hashlib.sha256()
    with Path(adapter_dir, WEIGHTS_FILE).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UserError(f"--domain {name!r}: a domain name is 1 to 64 letters, digits, Chinese characters, "
                        "'_', '-' or '.', not starting with '_', '-' or '.'")
    return name


def fit_domain(name: str, logits, labels, label_names: list[str], fingerprint: str, source: str) -> Domain:
    """A domain from a labelled sample's raw logits and true labels: its temperature fitted on them. Every class
    must occur in the sample (a correction needs the error rates of each)."""
    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[1] != len(label_names):
        raise ValueError(f"expected (n, {len(label_names)}) logits, got shape {logits.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise UserError(f"domain {name!r}: labels must lie in 0..{len(label_names) - 1}")
    try:
        check_domain_sample(logits, labels)
    except UserError as e:
        raise UserError(f"domain {name!r}: {e}") from None
    temperature, calibration = fit_validation(logits, labels)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Domain(check_name(name), list(label_names), logits, labels, temperature, fingerprint, source, created,
                  {k: v for k, v in calibration.items() if k != "fitted_on"})


# ---- files ------------------------------------------------------------------------------------------------
def domain_path(adapter_dir: str | Path, name: str) -> Path:
    return Path(adapter_dir) / DOMAINS_DIR / f"{check_name(name)}.json"


def save_domain(adapter_dir: str | Path, domain: Domain) -> Path:
    """Write `domain` as `domains/NAME.json` in the adapter directory, atomically; an existing file is replaced
    only when it is a domain record (see output.check_output_file)."""
    adapter_dir = Path(adapter_dir)
    read_run(adapter_dir)  # an adapter directory of ours, complete
    path = domain_path(adapter_dir, domain.name)
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"{path.parent}: exists and is not a folder; domains cannot be stored")
    path.parent.mkdir(exist_ok=True)
    with atomic_open(path, kind="domain") as f:
        json.dump(domain.as_record(), f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    return path


def read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable domain record ({e})") from None
    if not isinstance(record, dict) or not {"domain", "temperature", "logits", "labels"} <= set(record):
        raise UserError(f"{path}: not a domain record written by weibo-sentiment")
    return record


def domain_names(adapter_dir: str | Path) -> list[str]:
    folder = Path(adapter_dir) / DOMAINS_DIR
    return sorted(p.stem for p in folder.glob("*.json") if NAME_PATTERN.fullmatch(p.stem)) if folder.is_dir() else []


def list_domains(adapter_dir: str | Path) -> list[dict]:
    """The adapter's domains without their samples: name, rows, rows per label, temperature, source, created,
    and whether it was fitted with these weights (`current`)."""
    fingerprint = adapter_fingerprint(adapter_dir) if Path(adapter_dir, WEIGHTS_FILE).is_file() else None
    out = []
    for name in domain_names(adapter_dir):
        record = read_record(domain_path(adapter_dir, name))
        out.append({"name": name, "rows": record.get("rows"), "counts": record.get("counts"),
                    "temperature": record.get("temperature"), "source": record.get("source"),
                    "created": record.get("created"),
                    "current": record.get("adapter_fingerprint") == fingerprint})
    return out


def load_domain(adapter_dir: str | Path, name: str) -> Domain:
    """The domain `name` of the adapter in `adapter_dir`. Unknown names, records of other weights and records
    without every class are refused with one line."""
    adapter_dir = Path(adapter_dir)
    path = domain_path(adapter_dir, name)
    if not path.is_file():
        known = domain_names(adapter_dir)
        listed = f"known: {', '.join(known)}" if known else "it has none; fit one with weibo-sentiment calibrate"
        raise UserError(f"{adapter_dir}: no domain {name!r} ({listed})")
    record = read_record(path)
    run = json.loads((adapter_dir / RUN_FILE).read_text(encoding="utf-8"))
    fingerprint = adapter_fingerprint(adapter_dir)
    if record.get("adapter_fingerprint") != fingerprint:
        raise UserError(f"{path}: fitted with other weights of this adapter (fingerprint "
                        f"{record.get('adapter_fingerprint')}, now {fingerprint}): run calibrate again")
    label_names = list(record.get("label_names") or run["label_names"])
    domain = Domain(name, label_names, np.asarray(record["logits"], dtype=np.float32).reshape(-1, len(label_names)),
                    np.asarray(record["labels"], dtype=np.int64), float(record["temperature"]),
                    record["adapter_fingerprint"], str(record.get("source", "")), str(record.get("created", "")),
                    dict(record.get("calibration") or {}))
    try:
        check_domain_sample(domain.logits, domain.labels)
    except (UserError, ValueError) as e:
        raise UserError(f"{path}: {e}") from None
    return domain


# ---- where domains come from -----------------------------------------------------------------------------
def validation_domain_extras(logits, labels, then: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """For `save_adapter(extras=...)` in train: after `then(folder)`, store the domain `validation` (the
    validation split's logits and labels, the run's temperature). A failure is logged, never costs the adapter:
    `report` then asks for a domain of the user's own."""

    def extras(folder: Path) -> None:
        if then is not None:
            then(folder)
        try:
            run = json.loads((Path(folder) / RUN_FILE).read_text(encoding="utf-8"))
            domain = fit_domain(DEFAULT_DOMAIN, logits, labels, run["label_names"], adapter_fingerprint(folder),
                                "the validation split of training")
            save_domain(folder, domain)
        except (UserError, ValueError, OSError) as e:
            logger.warning("no default domain %r stored: %s", DEFAULT_DOMAIN, e)

    return extras


def calibrate(adapter: str | Path, data: str | Path, name: str, *, text_column: str = "review",
              label_column: str = "label", encoding: str = "utf-8", base_model: str | None = None,
              model_dir: str | Path = "models/gpt2-chinese", device: str | None = None, batch_size: int = 32,
              allow_other_base: bool = False, progress: bool = False) -> Domain:
    """Score the labelled file `data` with `adapter` and store it as the adapter's domain `name`."""
    from .data import load_labelled
    from .inference import Predictor

    check_name(name)
    if name == DEFAULT_DOMAIN:
        raise UserError(f"--domain {DEFAULT_DOMAIN}: that name is train's own validation split; choose another")
    run = read_run(adapter)
    labelled = load_labelled(data, text_column=text_column, label_column=label_column, encoding=encoding,
                             label_names=list(run["label_names"]), text_labels=bool(run.get("text_labels")),
                             deduplicate=False, min_classes=1)
    present = set(labelled.labels)
    if len(present) < len(run["label_names"]):  # before the model loads: a correction needs every class
        missing = [n for i, n in enumerate(run["label_names"]) if i not in present]
        raise UserError(f"{data}: no rows labelled {', '.join(missing)}: a domain's labelled sample needs rows of "
                        "every class, or the error rates of the others are unknown")
    predictor = Predictor.from_adapters([str(adapter)], base_model=base_model, model_dir=model_dir,
                                        device=device, allow_other_base=allow_other_base)
    logits = predictor.predict_logits(labelled.texts, batch_size=batch_size, progress=progress)
    domain = fit_domain(name, logits, labelled.labels, list(run["label_names"]), adapter_fingerprint(adapter),
                        f"{Path(data).name} (sha256 {labelled.sha256[:16]})")
    save_domain(adapter, domain)
    return domain


def apply_domain(predictor, name: str, adapter: str | None = None) -> Domain:
    """Make `predictor` divide `adapter`'s logits (default: its default adapter) by the temperature of the domain
    `name` instead of the training one. For an ONNX export, the domain is read from the adapter it was made from."""
    info = predictor.adapters[adapter or predictor.default]
    folder = Path(info.run.get("adapter_path") or info.path)
    domain = load_domain(folder, name)
    info.run = {**info.run, "temperature": domain.temperature, "domain": name}
    logger.info("domain %r: temperature %.4g (%d labelled rows)", name, domain.temperature, domain.rows)
    return domain
