"""Reading and validating labelled text files (CSV/TSV) and unlabelled text input.

Every problem with a file is reported as one `UserError` naming the file, the line (1-based, as an
editor shows it, header = line 1) and the problem, before any model work starts.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from .errors import UserError, file_error
from .tables import DELIMITED_FORMATS, TableReader, column_index, decode, delimiter, file_format, shown

logger = logging.getLogger(__name__)

DEFAULT_TEXT_COLUMN = "review"
DEFAULT_LABEL_COLUMN = "label"
BINARY_LABEL_NAMES = ("negative", "positive")

def clean_text(text: str) -> str:
    # A stray byte-order mark inside a field (seen in online_shopping_10_cats) is not content.
    return text.replace("\ufeff", "").strip()


@dataclass
class LabelledData:
    """Validated texts and integer labels, with what was dropped on the way."""

    path: Path
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    sha256: str
    rows_read: int
    dropped_blank: int = 0
    dropped_duplicates: int = 0
    lines: list[int] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "rows_read": self.rows_read,
            "rows_kept": len(self.texts),
            "dropped_blank_text": self.dropped_blank,
            "dropped_duplicates": self.dropped_duplicates,
        }


def _check_path(path: Path) -> None:
    if not path.exists():
        raise file_error(path, "no such file")
    if path.is_dir():
        raise file_error(path, "is a directory, expected a CSV/TSV file")


def read_table(path: str | Path, encoding: str = "utf-8") -> tuple[list[str], list[tuple[int, list[str]]], str]:
    """Read a delimited file into (header, [(line_number, fields)], sha256 of the bytes).

    Quoted fields may hold line breaks; a quote that is never closed is an error naming the line it opens on.
    """
    path = Path(path)
    _check_path(path)
    raw = path.read_bytes()
    text = decode(path, raw, encoding)
    reader = TableReader(path, io.StringIO(text, newline=""), delimiter(path))
    records = iter(reader)
    _, header = next(records)  # (an empty file is an error, never the end of the records)
    rows = list(records)
    if reader.blank:
        logger.warning("%s: skipped %d blank line(s)", path, reader.blank)
    return header, rows, hashlib.sha256(raw).hexdigest()


def _parse_label(path: Path, line: int, value: str, label_map: dict[str, int] | None) -> int:
    value = value.strip()
    if not value:
        raise file_error(path, "blank label", line)
    if label_map is not None:
        if value not in label_map:
            raise file_error(path, f"label {value!r} is not one of {shown(', '.join(label_map))}",
                             line)
        return label_map[value]
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number != int(number):  # nan, inf, 1e400
        raise file_error(
            path,
            f"label {value!r} is not an integer (labels are 0..N-1; for text labels pass --label-names auto)",
            line,
        )
    return int(number)


def load_labelled(
    path: str | Path,
    *,
    text_column: str = DEFAULT_TEXT_COLUMN,
    label_column: str = DEFAULT_LABEL_COLUMN,
    encoding: str = "utf-8",
    label_names: list[str] | None = None,
    text_labels: bool = False,
    deduplicate: bool = True,
    min_classes: int = 2,
) -> LabelledData:
    """Read and validate a labelled file.

    Labels are integers 0..N-1. N is `len(label_names)` when names are given, else the number of distinct
    labels (at least 2). With `text_labels`, the label column holds label names: those of `label_names`,
    or, when that is None, the sorted distinct values of the column.
    """
    path = Path(path)
    header, rows, sha = read_table(path, encoding)
    ti = column_index(path, header, text_column, "--text-column")
    li = column_index(path, header, label_column, "--label-column")
    if not rows:
        raise file_error(path, "has a header but no data rows", 1)

    label_map = None
    if text_labels:
        values = label_names or sorted({f[li].strip() for _, f in rows if len(f) > li and f[li].strip()})
        label_map = {v: i for i, v in enumerate(values)}

    lines, texts, labels = [], [], []
    blank = 0
    for line, fields in rows:
        if len(fields) <= max(ti, li):
            raise file_error(path, f"expected {len(header)} fields, found {len(fields)}", line)
        label = _parse_label(path, line, fields[li], label_map)
        if label < 0 or (label_names is not None and label >= len(label_names)):
            n = len(label_names) if label_names is not None else None
            allowed = f"0..{n - 1}" if n else "0..N-1"
            raise file_error(path, f"label {label} is out of range (expected {allowed})", line)
        text = clean_text(fields[ti])
        if not text:
            blank += 1
            continue
        lines.append(line)
        texts.append(text)
        labels.append(label)

    if label_map is not None:
        names = list(label_map)
    elif label_names is not None:
        names = list(label_names)
    else:
        present = sorted(set(labels))
        n = max(len(present), 2)
        for line, label in zip(lines, labels):
            if label >= n:
                found = ", ".join(map(str, present))
                raise file_error(
                    path,
                    f"label {label} is out of range: labels must be 0..{n - 1} (found {found}); "
                    "pass --label-names to declare the label set",
                    line,
                )
        names = list(BINARY_LABEL_NAMES) if n == 2 else [str(i) for i in range(n)]
    if not texts:
        raise file_error(path, f"no rows left: all {blank} texts are blank")
    if blank:
        logger.warning("%s: dropped %d row(s) with a blank text", path, blank)

    frame = pd.DataFrame({"line": lines, "text": texts, "label": labels})
    duplicates = 0
    if deduplicate:
        keep = ~frame.duplicated(subset=["text", "label"])
        duplicates = int((~keep).sum())
        frame = frame[keep]
        if duplicates:
            logger.warning("%s: dropped %d exact duplicate row(s)", path, duplicates)

    classes = frame["label"].nunique()
    if classes < min_classes:
        only = names[int(frame["label"].iloc[0])]
        raise file_error(path, f"only one class ({only!r}) is present; training needs at least two")

    return LabelledData(
        path=path,
        texts=frame["text"].tolist(),
        labels=frame["label"].astype(int).tolist(),
        label_names=names,
        sha256=sha,
        rows_read=len(rows),
        dropped_blank=blank,
        dropped_duplicates=duplicates,
        lines=frame["line"].tolist(),
    )


def stratified_split(
    data: LabelledData, fraction: float = 0.1, seed: int = 42
) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """Split into (train, validation), stratified by label."""
    if not 0 < fraction < 1:
        raise UserError(f"--validation-split must be between 0 and 1, got {fraction}")
    counts = pd.Series(data.labels).value_counts()
    stratify = data.labels if counts.min() >= 2 else None
    try:
        tt, vt, tl, vl = train_test_split(
            data.texts, data.labels, test_size=fraction, random_state=seed, stratify=stratify
        )
    except ValueError as e:
        raise file_error(data.path, f"cannot split off a validation set: {e}") from None
    return (list(tt), list(tl)), (list(vt), list(vl))


def read_texts(path: str | Path, *, text_column: str = DEFAULT_TEXT_COLUMN, encoding: str = "utf-8",
               extra_columns: tuple[str, ...] = ()) -> tuple[list[str], dict[str, list[str]]]:
    """Texts to predict: `.txt` (one per line), CSV/TSV (the text column), or `-` for stdin (lines).

    Lines end at a newline (`\n` or `\r\n`) only: a form feed or U+2028 inside a post stays in it. Blank lines
    are skipped and counted in a warning. Returns the texts and any of `extra_columns` present in a table
    (e.g. a per-row `adapter`).
    """
    if str(path) == "-":
        stdin = getattr(sys.stdin, "buffer", None)  # bytes, decoded with --encoding like a file
        text = decode(Path("<stdin>"), stdin.read(), encoding) if stdin is not None else sys.stdin.read()
        return _lines(Path("<stdin>"), text), {}
    path = Path(path)
    if file_format(path) in DELIMITED_FORMATS:
        header, rows, _ = read_table(path, encoding)
        ti = column_index(path, header, text_column, "--text-column")
        extra_idx = {c: header.index(c) for c in extra_columns if c in header}
        texts: list[str] = []
        extras: dict[str, list[str]] = {c: [] for c in extra_idx}
        for line, fields in rows:
            text = clean_text(fields[ti]) if len(fields) > ti else ""
            if not text:
                raise file_error(path, "empty text", line)
            texts.append(text)
            for c, i in extra_idx.items():
                extras[c].append(fields[i].strip() if len(fields) > i else "")
        if not texts:
            raise file_error(path, "has a header but no data rows", 1)
        return texts, extras
    _check_path(path)
    return _lines(path, decode(path, path.read_bytes(), encoding)), {}


def _lines(path: Path, text: str) -> list[str]:
    """One text per line, for `read_texts`."""
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no line of its own
        lines.pop()
    texts = [t for t in map(clean_text, lines) if t]
    if not texts:
        raise file_error(path, "contains no text")
    if len(texts) < len(lines):
        logger.warning("%s: skipped %d blank line(s)", path, len(lines) - len(texts))
    return texts
