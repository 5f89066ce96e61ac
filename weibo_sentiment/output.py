"""Every write of the package: result files, artefact directories and progress records, each made complete beside
its target and renamed into place, and each replacing only something of ours.

An existing file is replaced only when it is one of ours of the same kind (a predictions table, a metrics JSON, a
picture) and not one of the command's inputs; an existing directory only when it is empty or carries the marker
files of an artefact of the same kind (`DIR_KINDS`). A user's other files are never overwritten.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple

from .durable import fsync_dir
from .errors import UserError
from .tables import file_format

# ---- what is ours: result files ------------------------------------------------------------------------
# What an output of each kind starts with: enough to recognise our own earlier result.
PREDICTION_COLUMNS = {"label_name", "confidence"}
JSON_KINDS = {"metrics": {"accuracy", "macro_f1", "confusion_matrix"},
              "loadtest": {"requests", "latency_ms", "requests_per_s"},
              "domain": {"domain", "temperature", "logits", "labels"}}
REPORT_COLUMNS = {"n", "method", "domain"}  # every table `report` writes (CSV, Parquet; JSON: its "rows")
# CSV kinds by header columns: feedback export's training CSV, select's posts to label.
CSV_KINDS = {"feedback": {"label", "review", "corrected_at"}, "to-label": {"predicted_label", "confidence", "label"}}
KIND_NAMES = {"predictions": "a predictions file", "metrics": "a metrics file", "loadtest": "a load-test report",
              "plot": "a picture",  # plot: a PNG with our Software text chunk (is_our_png)
              "feedback": "a feedback export", "to-label": "a file of posts to label",
              "domain": "a domain record", "report": "a report table"}
SOFTWARE = "weibo-sentiment"  # the PNG `Software` text chunk of every picture we write


def is_our_png(head: bytes) -> bool:
    """True when `head` (the first bytes of a file) is a PNG with our `Software` text chunk before its image
    data: a picture this package wrote. Any other PNG is the user's."""
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    at = 8
    while at + 8 <= len(head):
        length = int.from_bytes(head[at:at + 4], "big")
        kind = head[at + 4:at + 8]
        data = head[at + 8:at + 8 + length]
        if kind in (b"IDAT", b"IEND") or len(data) < length:
            return False
        if kind in (b"tEXt", b"iTXt"):
            key, _, value = data.partition(b"\0")
            if kind == b"iTXt":  # compression flag, method, language\0, translated keyword\0, text
                value = value[2:].split(b"\0", 2)[-1] if value[:1] == b"\0" else b""
            if key == b"Software" and value.startswith(SOFTWARE.encode()):
                return True
        at += 12 + length
    return False


def _head(path: Path, size: int = 65536) -> str:
    with path.open("rb") as f:
        return f.read(size).decode("utf-8", errors="replace")


def _is_ours(path: Path, kind: str) -> bool:
    if path.stat().st_size == 0:
        return True  # nothing in it to lose
    if kind == "plot":
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
    if kind in CSV_KINDS:
        return CSV_KINDS[kind] <= set(next(csv.reader([first]), []))
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


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when `a` and `b` name one file or directory: by device and inode where both exist (so a symbolic or
    hard link, or another spelling on a case-insensitive file system, is the same file), else by their
    normalised absolute paths."""
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return os.path.normcase(Path(a).resolve()) == os.path.normcase(Path(b).resolve())


def holds(folder: str | Path, path: str | Path) -> bool:
    """True when the directory `folder` is `path` or one of its ancestors (compared as `same_file` does)."""
    path = Path(path).resolve()
    return any(same_file(folder, p) for p in (path, *path.parents))


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


# ---- what is ours: artefact directories ----------------------------------------------------------------
RUN_FILE = "run.json"  # an adapter's labels, training data, recipe and metrics
MERGE_FILE = "weibo_sentiment_merge.json"  # a merged model's provenance
EXPORT_FILE = "export.json"  # an ONNX export's label names, max length, precision and provenance
SOURCE_FILE = "weibo_sentiment_source.json"  # where a base model came from (download, init-model, adapt-base)
SCORES_FILE = "weibo_sentiment_scores.json"  # what a Ray scoring run wrote (rows, adapters, format)


class DirKind(NamedTuple):
    what: str  # how a refusal names it
    markers: tuple[str, ...]  # all present in such a directory; the first is the record `write_marker` writes


# What marks a directory as an artefact of this package, per kind of output: only such a directory is ever
# replaced (deleted) by a command that writes that kind. Anything else is the user's and is never touched.
DIR_KINDS = {
    "adapter": DirKind("an adapter directory written by weibo-sentiment", (RUN_FILE, "adapter_config.json")),
    "merged": DirKind("a merged model written by weibo-sentiment", (MERGE_FILE,)),
    "export": DirKind("an ONNX export written by weibo-sentiment", (EXPORT_FILE,)),
    "base": DirKind("a base model written by weibo-sentiment", (SOURCE_FILE,)),
    "ray-output": DirKind("scores written by weibo-sentiment predict --engine ray", (SCORES_FILE,)),
}

Inputs = Iterable[tuple[str, str | Path | None]]


def base_inputs(base_model: str | Path | None, model_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """The base model directory a command reads, as an `inputs` entry for `check_output_dir`."""
    if base_model is not None and Path(base_model).exists():
        return [("the --base-model directory", Path(base_model))]
    return [("the --model-dir base model", Path(model_dir))] if model_dir is not None else []


def check_output_dir(target: str | Path, kind: str, inputs: Inputs = (), option: str = "--output") -> None:
    """Refuse (UserError) to write a `kind` output at `target` unless that cannot destroy anything of the user's.

    Allowed: a missing path, an empty directory, or an earlier output of this package of the same `kind`
    (see DIR_KINDS) — and never the current directory, one of the command's `inputs` ((description, path)
    pairs) or a directory holding one of them. `option` names the flag to change in the message.
    """
    if kind not in DIR_KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    what, markers = DIR_KINDS[kind]
    target = Path(target)
    cwd = Path.cwd()
    keep = f"and will not be overwritten; choose another {option}"
    if same_file(target, cwd):
        raise UserError(f"{target}: is the current directory {keep}")
    if holds(target, cwd):
        raise UserError(f"{target}: holds the current directory {keep}")
    for description, path in inputs:
        if path is None:
            continue
        if same_file(target, path):
            raise UserError(f"{target}: is this command's input ({description}) {keep}")
        if holds(target, path):
            raise UserError(f"{target}: holds this command's input {path} ({description}) {keep}")
    if target.is_symlink():
        raise UserError(f"{target}: is a symbolic link and will not be replaced; choose another {option}, "
                        "or remove it yourself")
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: already exists and is not a directory; choose another {option}, "
                        "or remove it yourself")
    if not target.exists() or not any(target.iterdir()):
        return
    if not all((target / m).is_file() for m in markers):
        raise UserError(f"{target}: already exists and is not {what}; choose another {option}, "
                        "or remove it yourself")


# ---- writing in place of what is ours ------------------------------------------------------------------
def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str = "utf-8", kind: str = "predictions",
                inputs: Iterable[str | Path] = ()):
    """Open a temporary file beside `path`; it replaces `path` only if the block completes (and only if
    `check_output_file` allows it)."""
    path = check_output_file(path, kind, inputs)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # an ordinary file for the user, not mkstemp's private 0600
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline="" if "b" not in mode else None) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def place_file(complete: Path, path: Path, kind: str, inputs: Iterable[str | Path] = ()) -> Path | None:
    """Rename the finished file `complete` onto `path` if `path` is still ours to replace (`check_output_file`:
    the file may have been written for minutes, or over several runs). If another file has taken `path`
    meanwhile, the finished work is kept, not lost: it goes to a fresh sibling, `NAME.complete-TIME.EXT`, whose
    path is returned (None: it is at `path`)."""
    try:
        check_output_file(path, kind, inputs)
    except UserError:
        return keep_aside(complete, path)
    os.replace(complete, path)
    fsync_dir(path.parent)
    return None


def keep_aside(complete: Path, path: Path) -> Path:
    """Move `complete` to a sibling of `path` that no file has (`NAME.complete-TIME.EXT`); never over a file."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        aside = path.with_name(f"{path.stem}.complete-{stamp}{f'-{n}' if n else ''}{path.suffix}")
        try:
            os.link(complete, aside)  # fails if the name is taken, where a rename would replace what is there
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some network and FAT file systems)
            if os.path.lexists(aside):
                continue
            os.replace(complete, aside)
        else:
            os.unlink(complete)
        fsync_dir(path.parent)
        return aside
    raise UserError(f"{path}: no free name beside it to keep the finished result {complete} under; it stays there")


def _dir_beside(target: Path) -> Path:
    """A fresh temporary directory beside `target`, to be renamed onto it with `replace_dir`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should be an ordinary directory
    return tmp


@contextmanager
def atomic_dir(target: Path, *, kind: str, inputs: Inputs = (), option: str = "--output") -> Iterator[Path]:
    """A fresh temporary directory beside `target` to fill; when the block completes it replaces `target`, when
    it fails (or is interrupted) it is removed and `target` is left as it was.

    `target` must pass `check_output_dir(target, kind, inputs, option)`, checked before and again after the
    block: only an empty directory or an earlier output of the same kind is ever replaced."""
    inputs = list(inputs)
    check_output_dir(target, kind, inputs, option)
    tmp = _dir_beside(target)
    try:
        yield tmp
        check_output_dir(target, kind, inputs, option)  # the block may have run for minutes
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a completed directory onto `target`; an existing `target` is replaced, never half-written.

    The old `target` is deleted: callers go through `atomic_dir`, whose check allows only our own artefacts."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_marker(directory: str | Path, kind: str, record: dict) -> Path:
    """Write `record` as the JSON file that marks `directory` as an artefact of `kind` (see DIR_KINDS)."""
    path = Path(directory) / DIR_KINDS[kind].markers[0]
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# ---- tables and reports --------------------------------------------------------------------------------
def csv_cell(value):
    """A value as a CSV cell: None empty, a list (an explanation's spans) as JSON, anything else as it is."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def write_rows(rows: Iterable[dict], f: IO[str], fmt: str) -> None:
    rows = list(rows)
    if fmt == "jsonl":
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    else:
        raise UserError(f"unknown output format {fmt!r} (choose csv or jsonl)")


def write_table(rows: Iterable[dict], path: str | Path | None, fmt: str | None = None,
                inputs: Iterable[str | Path] = ()) -> None:
    """Rows to `path` (`.csv` or `.jsonl`, atomically) or, when `path` is None or `-`, to stdout."""
    if path is None or str(path) == "-":
        write_rows(rows, sys.stdout, fmt or "jsonl")
        return
    found = file_format(Path(path))
    fmt = fmt or (found if found in ("csv", "jsonl") else None)
    if fmt is None:
        raise UserError(f"{path}: unknown output type (use a .csv or .jsonl file name)")
    with atomic_open(path, kind="predictions", inputs=inputs) as f:
        write_rows(rows, f, fmt)


def write_json(obj: dict, path: str | Path, kind: str = "metrics", inputs: Iterable[str | Path] = ()) -> None:
    """A JSON report of `kind` to `path`, atomically."""
    with atomic_open(path, kind=kind, inputs=inputs) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
