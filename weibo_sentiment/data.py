"""Reading and validating labelled text files (CSV/TSV) and unlabelled text input.

Every problem with a file is reported as one `UserError` naming the file, the line (1-based, as an
editor shows it, header = line 1) and the problem, before any model work starts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from .errors import UserError, file_error

logger = logging.getLogger(__name__)

DEFAULT_TEXT_COLUMN = "review"
DEFAULT_LABEL_COLUMN = "label"
BINARY_LABEL_NAMES = ("negative", "positive")

# What counts as an emoticon (weibo_senti_100k's labels were derived from them, so evaluation can remove them to
# measure what a model learned from the words, and training can drop them; see `strip_emoticons`).
_BRACKET = r"\[(?!\d+\])[^\[\]\s]{1,10}\]"  # [哈哈] [泪] [good] [din推撞] [?]; not [1] [2013], not 【】
# Unicode emoji, as pictographs: the supplementary pictograph blocks U+1F000-1FAFF whole (😀 🌹 🚀 🤣 🫠, the
# regional indicators of flags 🇨🇳, the skin tones 🏻-🏿), and in the Basic Multilingual Plane the characters that
# Unicode's emoji-data.txt marks Extended_Pictographic (☀ ☺ ♥ ⚡ ✌ ✨ ❤ ❌ ⭐ ...), but for the typographic ones below.
_PICTOGRAPH = ("\u231a\u231b\u2328\u23cf\u23e9-\u23f3\u23f8-\u23fa\u2600-\u2604\u260e\u2611\u2614\u2615\u2618"
               "\u261d\u2620\u2622\u2623\u2626\u262a\u262e\u262f\u2638-\u263a\u2640\u2642\u2648-\u2653\u265f"
               "\u2660\u2663\u2665\u2666\u2668\u267b\u267e\u267f\u2692-\u2697\u2699\u269b\u269c\u26a0\u26a1"
               "\u26a7\u26aa\u26ab\u26b0\u26b1\u26bd\u26be\u26c4\u26c5\u26c8\u26ce\u26cf\u26d1\u26d3\u26d4"
               "\u26e9\u26ea\u26f0-\u26f5\u26f7-\u26fa\u26fd\u2702\u2705\u2708-\u270d\u270f\u2712\u2714\u2716"
               "\u271d\u2721\u2728\u2733\u2734\u2744\u2747\u274c\u274e\u2753-\u2755\u2757\u2763\u2764"
               "\u2795-\u2797\u27a1\u27b0\u27bf\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55"
               "\U0001f000-\U0001faff")
# Extended_Pictographic too, but also ordinary typography or CJK text: emoji only with the emoji presentation
# selector U+FE0F after them (©️ ™️ ↔️ ▶️ 〽️ ㊗️); alone (© ™ ↔ ▶ 〽 ㊗) they stay.
_TYPOGRAPHIC = ("\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u24c2\u25aa\u25ab\u25b6\u25c0"
                "\u25fb-\u25fe\u3030\u303d\u3297\u3299")
# One emoji: a pictograph, a typographic symbol with U+FE0F, or a keycap (1️⃣ #️⃣); then any variation selectors
# (U+FE0E/FE0F), skin tones (U+1F3FB-1F3FF), keycap mark (U+20E3) and tag characters (U+E0020-E007F, the
# subdivision flags such as Scotland's); and any further emoji joined by ZERO WIDTH JOINER U+200D (👨‍👩‍👧 ❤️‍🔥 🏳️‍🌈).
_ELEMENT = f"(?:[{_PICTOGRAPH}]|[{_TYPOGRAPHIC}]\ufe0f|[0-9#*]\ufe0f?\u20e3)"
_MODIFIERS = "[\ufe0e\ufe0f\u20e3\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]*"
_EMOJI = f"{_ELEMENT}{_MODIFIERS}(?:\u200d{_ELEMENT}{_MODIFIERS})*"
EMOTICON_RE = re.compile(f"{_BRACKET}|{_EMOJI}")


def strip_emoticons(text: str) -> str:
    """`text` without its emoticons, and without the white space that then begins or ends it.

    What counts (each occurrence is removed whole; nothing else changes):

    - Weibo bracket emoticons: `[`, 1 to 10 characters that are neither white space nor a bracket, `]`, such as
      [哈哈] [泪] [good] [din推撞] [江南style] [?]; except digits only ([1], [2013]: reference numbers). Longer
      or spaced bracketed text ([原文地址：http://...], [高速交通广播 节目预告]) and CJK brackets 【】〔〕 stay.
    - Unicode emoji: every character of U+1F000-1FAFF (😀 🌹 🚀 🤣 🇨🇳 ...); the Extended_Pictographic symbols of
      the Basic Multilingual Plane (☀ ☺ ♥ ⚡ ✌ ✨ ❤ ❌ ⭕ ⭐ ...); © ® ™ ‼ ⁉ ℹ ↔-↙ ↩ ↪ Ⓜ ▪ ▫ ▶ ◀ ◻-◾ 〰 〽 ㊗ ㊙
      and keycaps (1⃣) only as emoji sequences (followed by U+FE0F or U+20E3); each with its variation selectors,
      skin-tone modifiers and tag characters, and whole ZWJ sequences (👨‍👩‍👧, 🏳️‍🌈).
    - Kept: all CJK text and punctuation (，。！？【】《》「」), ★ ☆ → ①, kaomoji such as (^_^) and ASCII smileys
      such as :) (not emoji characters), and white space between words.
    """
    return EMOTICON_RE.sub("", text).strip()


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


def _decode(path: Path, raw: bytes, encoding: str) -> str:
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig") else encoding
    try:
        return raw.decode(codec)
    except LookupError:
        raise UserError(f"unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        hint = "; if it is a Chinese Windows file, pass --encoding gbk" if codec.startswith("utf") else ""
        raise file_error(
            path, f"not valid {encoding}: byte 0x{raw[e.start]:02x} cannot be decoded{hint}", line
        ) from None


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def shown(value: str) -> str:
    """`value` on one line: line breaks and other unprintable characters as escapes (`\\n`, `\\u2028`)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what the csv module counts as a line (it reads universal newlines)


def _unclosed_quote(record: str, delimiter: str) -> int | None:
    """Where in `record` (the text from the start of a record to the end of the file) a quoted field opens
    that no quote closes, or None. The csv module reads such a field to the end of the file, swallowing rows."""
    i = 0
    while (start := record.find('"', i)) >= 0:
        i = start + 1
        if start > 0 and record[start - 1] not in (delimiter, "\r", "\n"):
            continue  # a quote inside an unquoted field is text, as the csv module reads it
        while True:  # a quoted field: `""` is a quote, a lone `"` closes it
            end = record.find('"', i)
            if end < 0:
                return start
            i = end + 1
            if not record.startswith('"', i):
                break
            i += 1
    return None


def read_table(path: str | Path, encoding: str = "utf-8") -> tuple[list[str], list[tuple[int, list[str]]], str]:
    """Read a delimited file into (header, [(line_number, fields)], sha256 of the bytes).

    Quoted fields may hold line breaks; a quote that is never closed is an error naming the line it opens on.
    """
    path = Path(path)
    _check_path(path)
    raw = path.read_bytes()
    text = _decode(path, raw, encoding)
    delimiter = _delimiter(path)
    offset = 0  # where in `text` the lines read so far end

    def lines():
        nonlocal offset
        for line in io.StringIO(text, newline=""):
            offset += len(line)
            yield line

    def unclosed(line: int, at: int) -> UserError | None:
        """The error for a quote left open in the record that starts on `line`, at `at` in `text`."""
        opened = _unclosed_quote(text[at:], delimiter)
        if opened is None:
            return None
        line += len(_LINE_BREAK.findall(text, at, at + opened))
        return file_error(path, "a quote opens a field here but never closes, so every later line would be "
                                "read into that field", line)

    reader = csv.reader(lines(), delimiter=delimiter)
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    start, at = 1, 0  # the line and the offset in `text` where the next record starts
    last, blank = None, 0
    try:
        for fields in reader:
            if header is None:
                header = [h.strip() for h in fields]
            elif any(f.strip() for f in fields):
                rows.append((start, fields))
            else:
                blank += 1
            last = start, at
            start, at = reader.line_num + 1, offset
    except csv.Error as e:  # e.g. a field over the size limit: an unclosed quote is the likely cause
        raise unclosed(start, at) or file_error(path, f"malformed {path.suffix.lstrip('.') or 'CSV'}: {e}",
                                                reader.line_num) from None
    if last is not None and (error := unclosed(*last)) is not None:  # only the last record can reach the end
        raise error
    if header is None:
        raise file_error(path, "the file is empty (expected a header line)")
    if blank:
        logger.warning("%s: skipped %d blank line(s)", path, blank)
    return header, rows, hashlib.sha256(raw).hexdigest()


def _column(path: Path, header: list[str], name: str, flag: str) -> int:
    if name not in header:
        raise file_error(
            path, f"no column {name!r} (columns are {shown(', '.join(header))}); pass {flag} to "
            "choose another", 1
        )
    return header.index(name)


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
    ti = _column(path, header, text_column, "--text-column")
    li = _column(path, header, label_column, "--label-column")
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
        text = _decode(Path("<stdin>"), stdin.read(), encoding) if stdin is not None else sys.stdin.read()
        return _lines(Path("<stdin>"), text), {}
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv", ".tab"):
        header, rows, _ = read_table(path, encoding)
        ti = _column(path, header, text_column, "--text-column")
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
    return _lines(path, _decode(path, path.read_bytes(), encoding)), {}


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
