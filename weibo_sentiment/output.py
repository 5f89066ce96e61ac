"""Writing result files atomically: a temporary file beside the target, renamed when complete.

An existing file is replaced only when it is one of ours of the same kind (a predictions table, a metrics
JSON) and not one of the command's inputs: a user's other files are never overwritten.
"""

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

# What an output of each kind starts with: enough to recognise our own earlier result.
PREDICTION_COLUMNS = {"label_name", "confidence"}
JSON_KINDS = {"metrics": {"accuracy", "macro_f1", "confusion_matrix"},
              "loadtest": {"requests", "latency_ms", "requests_per_s"},
              "domain": {"domain", "temperature", "logits", "labels"}}
REPORT_COLUMNS = {"n", "method", "domain"}  # every table `report` writes (CSV, Parquet; JSON: its "rows")
KIND_NAMES = {"predictions": "a predictions file", "metrics": "a metrics file", "loadtest": "a load-test report",
              "plot": "a picture", "domain": "a domain record", "report": "a report table"}
# plot: a PNG with our Software text chunk (plots.is_our_png)


def _head(path: Path, size: int = 65536) -> str:
    with path.open("rb") as f:
        return f.read(size).decode("utf-8", errors="replace")


def _is_ours(path: Path, kind: str) -> bool:
    if path.stat().st_size == 0:
        return True  # nothing in it to lose
    if kind == "plot":
        from .plots import is_our_png

        with path.open("rb") as f:
            return is_our_png(f.read(65536))
    head = _head(path)
    if kind == "report":
        return _is_our_report(path, head)
    first = head.lstrip("\ufeff").split("\n", 1)[0].strip()
    if kind == "predictions" and head.startswith("PAR1"):  # a Parquet table (predict --output X.parquet)
        try:
            import pyarrow.parquet as pq

            return PREDICTION_COLUMNS <= set(pq.read_schema(path).names)
        except Exception:  # pyarrow's own errors for a damaged or foreign file
            return False
    if kind == "predictions":
        if first.startswith("{"):
            try:
                return PREDICTION_COLUMNS <= set(json.loads(first))
            except ValueError:
                return False
        return PREDICTION_COLUMNS <= set(next(csv.reader([first]), []))
    if kind in JSON_KINDS:
        try:
            return JSON_KINDS[kind] <= set(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, UnicodeDecodeError):
            return False
    raise ValueError(f"unknown output kind {kind!r}")


def _is_our_report(path: Path, head: str) -> bool:
    """A table `report` wrote: Parquet or CSV with its columns, or JSON with its `report` and `rows`."""
    try:
        if head.startswith("PAR1"):
            import pyarrow.parquet as pq

            return REPORT_COLUMNS <= set(pq.read_schema(path).names)
        if head.lstrip().startswith("{"):
            return {"report", "rows"} <= set(json.loads(path.read_text(encoding="utf-8")))
    except Exception:  # pyarrow's or json's errors for a damaged or foreign file
        return False
    first = head.lstrip("\ufeff").split("\n", 1)[0].strip()
    return REPORT_COLUMNS <= set(next(csv.reader([first]), []))


def check_output_file(path: str | Path, kind: str, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse (UserError) to write `path` when it would replace something that is not our own output of
    `kind` (one of KIND_NAMES), or one of the command's `inputs`. Call it before long work."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file to write")
    if not path.parent.exists():
        raise UserError(f"{path}: the folder {path.parent} does not exist")
    if not path.exists():
        return path
    for source in inputs:
        if str(source) != "-" and Path(source).exists() and os.path.samefile(source, path):
            raise UserError(f"{path}: is this command's input and will not be overwritten; choose another --output")
    if not path.is_file() or not _is_ours(path, kind):
        raise UserError(f"{path}: already exists and is not {KIND_NAMES[kind]} written by weibo-sentiment; "
                        "choose another output file, or remove it yourself")
    return path


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str = "utf-8", kind: str = "predictions",
                inputs: Iterable[str | Path] = ()):
    """Open a temporary file beside `path`; it replaces `path` only if the block completes (and only if
    `check_output_file` allows it)."""
    path = check_output_file(path, kind, inputs)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # an ordinary file for the user, not mkstemp's private 0600
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


def write_table(rows: Iterable[dict], path: str | Path | None, fmt: str | None = None,
                inputs: Iterable[str | Path] = ()) -> None:
    """Rows to `path` (`.csv` or `.jsonl`, atomically) or, when `path` is None or `-`, to stdout."""
    if path is None or str(path) == "-":
        write_rows(rows, sys.stdout, fmt or "jsonl")
        return
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = fmt or {"csv": "csv", "jsonl": "jsonl", "json": "jsonl"}.get(suffix)
    if fmt is None:
        raise UserError(f"{path}: unknown output type (use a .csv or .jsonl file name)")
    with atomic_open(path, kind="predictions", inputs=inputs) as f:
        write_rows(rows, f, fmt)


def write_json(obj: dict, path: str | Path, kind: str = "metrics", inputs: Iterable[str | Path] = ()) -> None:
    """A JSON report of `kind` to `path`, atomically."""
    with atomic_open(path, kind=kind, inputs=inputs) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
