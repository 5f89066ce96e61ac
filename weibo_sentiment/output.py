"""Writing result files atomically: a temporary file beside the target, renamed when complete."""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import UserError


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str = "utf-8"):
    """Open a temporary file beside `path`; it replaces `path` only if the block completes."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file to write")
    if not path.parent.exists():
        raise UserError(f"{path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline="" if "b" not in mode else None) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_rows(rows: Iterable[dict], f: IO[str], fmt: str) -> None:
    rows = list(rows)
    if fmt == "jsonl":
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise UserError(f"unknown output format {fmt!r} (choose csv or jsonl)")


def write_table(rows: Iterable[dict], path: str | Path | None, fmt: str | None = None) -> None:
    """Rows to `path` (`.csv` or `.jsonl`, atomically) or, when `path` is None or `-`, to stdout."""
    if path is None or str(path) == "-":
        write_rows(rows, sys.stdout, fmt or "jsonl")
        return
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = fmt or {"csv": "csv", "jsonl": "jsonl", "json": "jsonl"}.get(suffix)
    if fmt is None:
        raise UserError(f"{path}: unknown output type (use a .csv or .jsonl file name)")
    with atomic_open(path) as f:
        write_rows(rows, f, fmt)


def write_json(obj: dict, path: str | Path) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
