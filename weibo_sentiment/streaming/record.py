"""The progress record of a streaming run, which makes it resumable.

The rows go to a partial file beside the output (`.NAME.partial`; a folder of chunk files for Parquet) and,
after each chunk, a small progress record (`.NAME.progress.json`, fsynced, atomically replaced) says how far the
input was read, a sha256 of the bytes read, the adapters' fingerprints and the options. A run resumes only from
a record that matches it and a partial output that holds what it says (`Progress.start`).

Before the complete output is put in place the record gets its size and sha256 (`final`): a run killed between
that rename and the record's removal has finished, and the next run finds its output in place and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..adapter_io import WEIGHTS_FILE
from ..durable import fsync_dir, write_json_record
from ..errors import UserError
from ..output import RUN_FILE
from .source import Source

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


def partial_paths(output: Path) -> tuple[Path, Path]:
    """(partial file or folder, progress record) of a streaming run writing `output`."""
    return output.with_name(f".{output.name}.partial"), output.with_name(f".{output.name}.progress.json")


def chunk_file(partial: Path, chunk: int) -> Path:
    """Chunk number `chunk` (from 1) of a Parquet run's partial folder."""
    return partial / f"{chunk:08d}.parquet"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
    final: dict | None = None  # size and sha256 of the complete output, once it is about to be put in place
    finished: bool = False  # resumed a run whose complete output was already in place: nothing left to do

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
        Without `resume` the leftovers of an interrupted run are an error: they are never deleted silently.

        A run that was killed after its complete output was put in place (its record's `final` matches the
        output) had finished: with `resume` that is the result (`finished`), without it the run starts afresh as
        asked; either way its leftovers go, the output stays (until a fresh run replaces it, complete)."""
        progress = cls(output, fingerprint)
        if output is None:
            return progress
        partial, record_path = partial_paths(output)
        record = _read_record(record_path) if record_path.exists() else None
        if record is not None and _placed(record, output):
            return progress._finished_before(record, source, resume)
        if not resume and (record is not None or partial.exists()):
            rows = f" ({record.get('rows_done', 0)} rows done)" if isinstance(record, dict) else ""
            raise UserError(f"{output}: an interrupted run left {partial.name}{rows} beside it; pass --resume "
                            f"to continue it, or remove {partial} and {record_path} to start afresh")
        if resume and record is None:
            if partial.exists():
                _remove(partial)  # nothing complete in it: no chunk was recorded
            logger.info("%s: no interrupted run to resume; starting from the first row", output)
        elif resume:
            _check_same_run(record, fingerprint, source, output, partial, record_path)
            _check_partial(record, fingerprint["format"], output, partial, record_path)
            progress.resumed_from = progress.rows_done = record["rows_done"]
            progress.chunks, progress.partial_bytes = record["chunks"], record["partial_bytes"]
            progress.truncated = {int(k): v for k, v in record.get("truncated", {}).items()}
        return progress

    def _finished_before(self, record: dict, source: Source, resume: bool) -> Progress:
        """The progress after a run killed once its complete output was in place: its leftovers go; with
        `resume` (the same run, checked) it is done, without it this run starts afresh."""
        partial, record_path = partial_paths(self.output)
        if resume:
            _check_same_run(record, self.fingerprint, source, self.output, partial, record_path)
        logger.info("%s: the interrupted run had finished (the output holds its %s predictions)%s", self.output,
                    record.get("rows_done"), "" if resume else "; starting afresh as asked (without --resume)")
        self.done()
        if resume:
            self.finished = True
            self.resumed_from = self.rows_done = record["rows_done"]
            self.truncated = {int(k): v for k, v in record.get("truncated", {}).items()}
        return self

    def save(self, source: Source) -> None:
        """Record, after a chunk, how far the run has got (nothing for stdout)."""
        if self.path is not None:
            write_json_record(self.path, {**self.fingerprint, "rows_done": self.rows_done, "chunks": self.chunks,
                                     "partial_bytes": self.partial_bytes, "truncated": self.truncated,
                                     "input": {"size": source.size, "offset": source.offset,
                                               "sha256": source.sha256_of_read()},
                                     **({"final": self.final} if self.final else {})})

    def save_final(self, source: Source, complete: Path) -> None:
        """Record the size and sha256 of `complete`, the complete output about to be put in place."""
        self.final = {"size": complete.stat().st_size, "sha256": file_sha256(complete)}
        self.save(source)

    def done(self) -> None:
        """The run's result is in place (or kept aside): its partial output and record go."""
        if self.output is not None:
            _remove(self.partial)
            self.path.unlink(missing_ok=True)
            fsync_dir(self.output.parent)

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


def _refusal(output: Path, partial: Path, record_path: Path):
    def refuse(what: str) -> UserError:
        return UserError(f"{output}: cannot resume the interrupted run: {what}; run without --resume after "
                         f"removing {partial} and {record_path} to start afresh")

    return refuse


def _check_same_run(record: dict, fingerprint: dict, source: Source, output: Path, partial: Path,
                    record_path: Path) -> None:
    """Refuse (UserError naming what differs) to resume a run that is not this one."""
    refuse = _refusal(output, partial, record_path)
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


def _check_partial(record: dict, fmt: str, output: Path, partial: Path, record_path: Path) -> None:
    """Refuse (UserError) to resume from a partial output that does not hold what the record says: every
    recorded chunk file with the recorded row total (Parquet), at least the recorded bytes (CSV, JSONL)."""
    refuse = _refusal(output, partial, record_path)
    if record["chunks"] and not partial.exists():
        raise refuse(f"its partial output {partial} is missing")
    if fmt != "parquet":
        if partial.exists() and partial.stat().st_size < record["partial_bytes"]:
            raise refuse(f"its partial output {partial} is shorter than recorded")
        return
    import pyarrow.parquet as pq

    chunks = [chunk_file(partial, i) for i in range(1, record["chunks"] + 1)]
    missing = [c.name for c in chunks if not c.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise refuse(f"its partial output {partial} lacks {len(missing)} of its {len(chunks)} chunk files ({shown})")
    rows = 0
    for c in chunks:
        try:
            rows += pq.read_metadata(c).num_rows
        except Exception:  # pyarrow's own errors for a damaged file
            raise refuse(f"the chunk file {c} is damaged") from None
    if rows != record["rows_done"]:
        raise refuse(f"its chunk files in {partial} hold {rows} rows, the record says {record['rows_done']}")


def _placed(record: dict, output: Path) -> bool:
    """True when `output` is the complete output the record's run was about to put in place."""
    final = record.get("final")
    if not isinstance(final, dict) or output.is_symlink() or not output.is_file():
        return False
    return output.stat().st_size == final.get("size") and file_sha256(output) == final.get("sha256")


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
