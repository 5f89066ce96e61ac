"""The feedback store: analysts' corrections of predicted labels, one JSON line each, beside the adapter root.

Every append holds a file lock (filelock: one writer at a time, across processes), writes its whole line with
one O_APPEND write and fsyncs before it returns, so an acknowledged correction survives a crash. A writer
killed in the middle of its write can leave a torn last line: readers skip it, and the next append moves it
to `STORE.torn` (the text is kept, for a person to read) and cuts it off before writing, so every earlier line
stays whole. The store is bounded (bytes in all, and per line); a correction past either bound is refused
with a status that says which (413: this one is too large, 507: the store is full).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from .durable import fsync_dir
from .errors import UserError, file_error
from .output import atomic_open, write_rows

logger = logging.getLogger(__name__)

FEEDBACK_FILE = "feedback.jsonl"  # the store's name in an adapter root
MAX_STORE_BYTES = 64 * 1024 * 1024  # ~100,000 corrections of 200-character posts
MAX_LINE_BYTES = 64 * 1024  # a 2,000-character post is ~6 kB as UTF-8; the rest is room for label names
RECORD_KEYS = frozenset({"text", "adapter", "revision", "predicted_label", "corrected_label", "time"})
EXPORT_COLUMNS = ("label", "review", "label_name", "adapter", "corrected_at")  # train reads label, review
LOCK_TIMEOUT_S = 30.0


class FeedbackRefused(UserError):
    """A correction the store does not take; `status` is the HTTP answer for it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Correction:
    """One analyst's correction of one prediction. Labels are label names of the adapter's label set."""

    text: str
    adapter: str
    predicted_label: str
    corrected_label: str
    revision: int | None = None  # the server's revision of the adapter that made the prediction
    label_names: list[str] = field(default_factory=list)  # the adapter's labels, in order (for export)
    time: str = ""  # ISO 8601, UTC; set when appended

    def as_line(self) -> bytes:
        return (json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def parse_record(line: bytes) -> Correction | None:
    """A store line as a Correction, or None when it is not one."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not RECORD_KEYS <= set(record):
        return None
    try:
        return Correction(**{k: record[k] for k in Correction.__dataclass_fields__ if k in record})
    except TypeError:
        return None


class FeedbackStore:
    """Corrections appended to one JSONL file; safe to share between threads and processes."""

    def __init__(self, path: str | Path, max_bytes: int = MAX_STORE_BYTES, max_line_bytes: int = MAX_LINE_BYTES):
        self.path = Path(path)
        self.max_bytes, self.max_line_bytes = max_bytes, max_line_bytes
        self.torn_path = self.path.with_name(self.path.name + ".torn")
        self.lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)

    def check(self) -> None:
        """Refuse (UserError) a path that cannot hold the store: a missing folder, a directory, or a file that
        is not a feedback store (never written to: it is not ours)."""
        if not self.path.parent.is_dir():
            raise file_error(self.path, f"the folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise file_error(self.path, "is a directory, expected a feedback store (a .jsonl file)")
        if self.path.exists():
            with self.path.open("rb") as f:
                first = f.readline(self.max_line_bytes + 1)
            if first.endswith(b"\n") and parse_record(first) is None:
                raise file_error(self.path, "exists and is not a feedback store written by weibo-sentiment; "
                                            "choose another file")

    def append(self, correction: Correction) -> Correction:
        """Write `correction` (stamped with the time) as the store's last line, fsynced; returns what was stored."""
        if correction.time == "":
            correction = Correction(**{**asdict(correction), "time": now_utc()})
        try:
            line = correction.as_line()
        except UnicodeEncodeError:  # a lone surrogate
            raise FeedbackRefused(422, "the correction is not valid Unicode text") from None
        if len(line) > self.max_line_bytes:
            raise FeedbackRefused(413, f"the correction takes {len(line)} bytes; the store's limit per correction "
                                       f"is {self.max_line_bytes}")
        with self.lock:
            self.check()
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = self._repair(fd)
                if size + len(line) > self.max_bytes:
                    raise FeedbackRefused(507, f"the feedback store is full ({size} bytes; limit {self.max_bytes}): "
                                               "export it and start a new one")
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.path.parent)  # the new file's name must survive a crash too
        return correction

    def _repair(self, fd: int) -> int:
        """Cut off a torn last line (a writer killed mid-write), keeping its bytes in the .torn file; the size
        of the store afterwards."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        start = size
        while start > 0:  # back to the end of the last whole line
            chunk = os.pread(fd, min(4096, start), max(0, start - 4096))
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                start = start - len(chunk) + cut + 1
                break
            start -= len(chunk)
        torn = os.pread(fd, size - start, start)
        with open(self.torn_path, "ab") as f:
            f.write(torn + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.ftruncate(fd, start)
        os.fsync(fd)
        logger.warning("%s: a torn last line (%d bytes) was moved to %s", self.path, len(torn), self.torn_path)
        return start

    def read(self) -> list[Correction]:
        """Every whole correction, in the order appended; a torn last line is skipped."""
        if not self.path.is_file():
            raise file_error(self.path, "no such feedback store")
        with self.path.open("rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        if lines[-1]:
            logger.warning("%s: skipped a torn last line (%d bytes; the next append repairs it)",
                           self.path, len(lines[-1]))
        corrections = []
        for number, line in enumerate(lines[:-1], start=1):
            record = parse_record(line)
            if record is None:
                raise file_error(self.path, "is not a feedback record", number)
            corrections.append(record)
        return corrections


def latest_per_text(corrections: Iterable[Correction]) -> list[Correction]:
    """One correction per text: the latest one, in the order the texts were first corrected."""
    latest: dict[str, Correction] = {}
    for correction in corrections:
        latest[correction.text] = correction  # an existing key keeps its place
    return list(latest.values())


def training_rows(corrections: Iterable[Correction], adapter: str | None = None) -> list[dict]:
    """Rows of a training CSV (label index, review text, ...), the latest correction of each text winning.
    All corrections must share one label set; `adapter` keeps only those of that adapter name."""
    chosen = [c for c in corrections if adapter is None or c.adapter == adapter]
    if not chosen:
        raise UserError("no corrections to export" + (f" for adapter {adapter!r}" if adapter else ""))
    label_sets = {tuple(c.label_names) for c in chosen}
    if len(label_sets) > 1:
        raise UserError(f"the corrections hold {len(label_sets)} different label sets; export one adapter's "
                        f"with --adapter NAME")
    rows = []
    for c in latest_per_text(chosen):
        if c.corrected_label not in c.label_names:
            raise UserError(f"a correction of adapter {c.adapter!r} names label {c.corrected_label!r}, which is "
                            f"not one of its labels ({', '.join(c.label_names)})")
        rows.append({"label": c.label_names.index(c.corrected_label), "review": c.text,
                     "label_name": c.corrected_label, "adapter": c.adapter, "corrected_at": c.time})
    return rows


def export_training_csv(store: str | Path, output: str | Path, adapter: str | None = None) -> int:
    """Write the store's corrections as a training CSV (label,review,... as `train` reads it), atomically; the
    number of rows written."""
    rows = training_rows(FeedbackStore(store).read(), adapter)
    with atomic_open(output, kind="feedback", inputs=[store]) as f:
        write_rows(rows, f, "csv")
    return len(rows)
