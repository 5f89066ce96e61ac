"""The on-disk adapter directory: PEFT files + tokenizer + `run.json`, written atomically."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import UserError
from .output import RUN_FILE, write_marker

WEIGHTS_FILE = "adapter_model.safetensors"
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("weibo-sentiment", "torch", "transformers", "peft", "accelerate", "scikit-learn", "pandas"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def base_fingerprint(base_dir: str | Path) -> str:
    """A cheap identity of a base model: its config plus the head and tail of its weights file.

    Two random bases of the same shape differ in their weights, so the config alone is not enough; hashing
    400 MB on every load is too slow, so 4 MiB from each end of the file stands in for the whole.
    """
    base_dir = Path(base_dir)
    digest = hashlib.sha256((base_dir / "config.json").read_bytes())
    weights = sorted(base_dir.glob("*.safetensors"))
    for path in weights:
        size = path.stat().st_size
        with path.open("rb") as f:
            digest.update(f.read(4 << 20))
            f.seek(max(0, size - (4 << 20)))
            digest.update(f.read())
    return digest.hexdigest()[:16]


def cast_weights(adapter_dir: str | Path, dtype: str) -> None:
    """Store the adapter's floating-point tensors in `dtype` (float16 halves the file)."""
    if dtype == "float32":
        return
    if dtype not in SAVE_DTYPES:
        raise UserError(f"unknown save dtype {dtype!r} (choose from {', '.join(SAVE_DTYPES)})")
    path = Path(adapter_dir) / WEIGHTS_FILE
    tensors = load_file(str(path))
    tensors = {k: v.to(SAVE_DTYPES[dtype]) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_run(adapter_dir: str | Path, run: dict) -> None:
    write_marker(adapter_dir, "adapter", run)


def read_run(adapter_dir: str | Path) -> dict:
    """The adapter's `run.json`, after checking the directory is a complete adapter."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise UserError(f"{adapter_dir}: no such adapter directory")
    for name in ("adapter_config.json", WEIGHTS_FILE, RUN_FILE):
        if not (adapter_dir / name).is_file():
            raise UserError(f"{adapter_dir}: not a weibo-sentiment adapter ({name} is missing)")
    try:
        return json.loads((adapter_dir / RUN_FILE).read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{adapter_dir / RUN_FILE}: not valid JSON ({e})") from None
