"""The progress record of a streaming run, which makes it resumable.

The rows go to a partial file beside the output (`.NAME.partial`; a folder of chunk files for Parquet) and,
after each chunk, a small progress record (`.NAME.progress.json`, fsynced, atomically replaced) says how far the
input was read, a sha256 of the bytes read, the adapters' fingerprints and the options. A run resumes only from
a record that matches it (`Progress.start`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter_io import WEIGHTS_FILE
from ..errors import UserError
from ..output import RUN_FILE, write_json_record
from .source import Source

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


def partial_paths(output: Path) -> tuple[Path, Path]:
    """(partial file or folder, progress record) of a streaming run writing `output`."""
    return output.with_name(f".{output.name}.partial"), output.with_name(f".{output.name}.progress.json")


def adapters_fingerprint(predictor) -> dict[str, str]:
    """{adapter name: sha256 of its settings (run.json / export.json) and weights}, to tell a resume that
    the model is the one of the interrupted run."""
    out = {}
    for name, info in predictor.adapters.items():
        digest = hashlib.sha256(json.dumps(info.run, sort_keys=True, default=str).encode())
        digest.update(str(getattr(predictor, "fingerprint", "")).encode())
        folders = [Path(info.path)]
        if info.run.get("adapter_path"):
            folders.append(Path(info.run["adapter_path"]))
        for folder in folders:
            for fname in (RUN_FILE, WEIGHTS_FILE):
                if (folder / fname).is_file():
                    digest.update(hashlib.sha256((folder / fname).read_bytes()).digest())
        out[name] = digest.hexdigest()
    return out


def run_fingerprint(predictor, fmt: str, columns: list[str], options: dict) -> dict:
    """What a run must share with the interrupted one it resumes: output format and columns, the adapters
    (`adapters_fingerprint`) and the options that change what it writes."""
    return {
        "version": RECORD_VERSION,
        "format": fmt,
        "columns": columns,
        "adapters": adapters_fingerprint(predictor),
        "options": {"backend": getattr(predictor, "backend", "torch"), "default_adapter": predictor.default,
                    "calibrated": bool(predictor.calibrated), **options},
    }


@dataclass
class Progress:
    """How far a run writing `output` has got (None: to stdout, which keeps no record)."""

    output: Path | None
    fingerprint: dict
    resumed_from: int = 0  # rows done by the interrupted run (0 for a fresh one)
    rows_done: int = 0
    chunks: int = 0
    partial_bytes: int = 0  # how much of the partial file (CSV/JSONL) the chunks recorded fill
    truncated: dict[int, int] = field(default_factory=dict)  # max length → texts longer than it

    @property
    def partial(self) -> Path | None:
        return partial_paths(self.output)[0] if self.output is not None else None

    @property
    def path(self) -> Path | None:
        """The progress record's path."""
        return partial_paths(self.output)[1] if self.output is not None else None

    @classmethod
    def start(cls, output: Path | None, fingerprint: dict, source: Source, resume: bool) -> Progress:
        """A fresh run's progress or, with `resume`, the interrupted run's, when its record matches this run.
        Without `resume` the leftovers of an interrupted run are an error: they are never deleted silently."""
        progress = cls(output, fingerprint)
        if output is None:
            return progress
        partial, record_path = partial_paths(output)
        record = _read_record(record_path) if record_path.exists() else None
        if not resume and (record is not None or partial.exists()):
            rows = f" ({record.get('rows_done', 0)} rows done)" if isinstance(record, dict) else ""
            raise UserError(f"{output}: an interrupted run left {partial.name}{rows} beside it; pass --resume "
                            f"to continue it, or remove {partial} and {record_path} to start afresh")
        if resume and record is None:
            if partial.exists():
                _remove(partial)  # nothing complete in it: no chunk was recorded
            logger.info("%s: no interrupted run to resume; starting from the first row", output)
        elif resume:
            _check_record(record, fingerprint, source, output, partial, record_path)
            progress.resumed_from = progress.rows_done = record["rows_done"]
            progress.chunks, progress.partial_bytes = record["chunks"], record["partial_bytes"]
            progress.truncated = {int(k): v for k, v in record.get("truncated", {}).items()}
        return progress

    def save(self, source: Source) -> None:
        """Record, after a chunk, how far the run has got (nothing for stdout)."""
        if self.path is not None:
            write_json_record(self.path, {**self.fingerprint, "rows_done": self.rows_done, "chunks": self.chunks,
                                     "partial_bytes": self.partial_bytes, "truncated": self.truncated,
                                     "input": {"size": source.size, "offset": source.offset,
                                               "sha256": source.sha256_of_read()}})

    def discard(self) -> None:
        """Remove the partial output and the record: a run that can never complete leaves nothing behind."""
        if self.output is not None:
            _remove(self.partial)
            self.path.unlink(missing_ok=True)


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{path}: the progress record of an interrupted run is unreadable; remove it and "
                        f"the partial output beside it to start afresh") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a progress record of weibo-sentiment predict; remove it to start afresh")
    return record


def _check_record(record: dict, fingerprint: dict, source: Source, output: Path, partial: Path,
                  record_path: Path) -> None:
    """Refuse (UserError naming what differs) to resume a run that is not this one."""
    afresh = f"; run without --resume after removing {partial} and {record_path} to start afresh"

    def refuse(what: str) -> UserError:
        return UserError(f"{output}: cannot resume the interrupted run: {what}{afresh}")

    if record.get("version") != RECORD_VERSION or not all(k in record for k in ("rows_done", "chunks", "input")):
        raise refuse("its progress record is of another version")
    if record.get("format") != fingerprint["format"]:
        raise refuse(f"it wrote {record.get('format')}, this run writes {fingerprint['format']}")
    old_opts, new_opts = record.get("options", {}), fingerprint["options"]
    changed = [f"{k} {old_opts.get(k)!r} → {new_opts.get(k)!r}" for k in new_opts if old_opts.get(k) != new_opts[k]]
    if changed:
        raise refuse(f"the options differ ({'; '.join(changed)})")
    old_ad, new_ad = record.get("adapters", {}), fingerprint["adapters"]
    if set(old_ad) != set(new_ad):
        raise refuse(f"the adapters differ (then: {', '.join(old_ad)}; now: {', '.join(new_ad)})")
    differ = [name for name in new_ad if old_ad[name] != new_ad[name]]
    if differ:
        raise refuse(f"adapter {', '.join(map(repr, differ))} has changed (its run.json or weights)")
    if record.get("columns") != fingerprint["columns"]:
        raise refuse("the output columns differ (the input's columns have changed)")
    meta = record["input"]
    if meta.get("size") != source.size:
        raise refuse(f"the input {source.path} has changed (size {meta.get('size')} bytes then, "
                     f"{source.size} now)")
    offset = int(meta.get("offset", 0))
    if _sha256_prefix(source.path, offset) != meta.get("sha256"):
        raise refuse(f"the input {source.path} has changed (its first {offset} bytes, read by then, differ)")
    if record["chunks"] and not partial.exists():
        raise refuse(f"its partial output {partial} is missing")
    if fingerprint["format"] != "parquet" and partial.exists() and partial.stat().st_size < record["partial_bytes"]:
        raise refuse(f"its partial output {partial} is shorter than recorded")



def _sha256_prefix(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        left = length
        while left > 0 and (block := f.read(min(left, 1 << 20))):
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
