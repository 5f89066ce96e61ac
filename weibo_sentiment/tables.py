"""Reading table files, the primitives every reader shares: file format from the suffix, encoding → codec,
decoding errors, the delimiter, column lookup and the delimited-text reader (`TableReader`).

The in-memory loader (`data`), the streaming source (`streaming.source`) and the Ray path (`cluster`) all read
through these, so a file means the same, and a problem in it is said the same way, whichever reads it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UserError, file_error

# The file formats, by suffix; any other suffix is plain text, one text per line.
SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
DELIMITED_FORMATS = ("csv", "tsv")
OUTPUT_FORMATS = ("csv", "jsonl", "parquet")  # what predictions can be written as
ROUTING_COLUMN = "adapter"  # an input column naming the adapter each row goes to (blank: the default one)

_UTF8_NAMES = ("utf-8", "utf8", "utf-8-sig")
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")  # where the csv module (universal newlines) also ends a line
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what the csv module counts as a line (it reads universal newlines)


def file_format(path: Path) -> str:
    """`path`'s format from its suffix: csv, tsv, jsonl, parquet or txt."""
    return SUFFIX_FORMATS.get(path.suffix.lower(), "txt")


def output_format(path: Path | None, fmt: str | None, *, default: str | None = None) -> str:
    """The format to write `path` in: `fmt` when given, else its suffix's (jsonl for stdout, `path` None).

    A suffix that names no output format is `default`, or without one an error.
    """
    if fmt:
        if fmt not in OUTPUT_FORMATS:
            raise UserError(f"unknown output format {fmt!r} (choose csv, jsonl or parquet)")
        return fmt
    if path is None:
        return "jsonl"
    found = file_format(path)
    if found in OUTPUT_FORMATS:
        return found
    if default is not None:
        return default
    raise UserError(f"{path}: unknown output type (use a .csv, .jsonl or .parquet file name)")


def is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("_", "-") in _UTF8_NAMES


def _codec_name(encoding: str) -> str:
    return "utf-8-sig" if is_utf8(encoding) else encoding


def codec(encoding: str) -> str:
    """The codec that reads text in `encoding` (UTF-8 with or without a byte-order mark for any UTF-8 name);
    an unknown encoding, or a codec that is not a text encoding (hex, rot13, base64, zlib...), is a UserError."""
    name = _codec_name(encoding)
    try:
        # (`codecs.lookup` finds bytes-to-bytes codecs too; `str.encode` refuses them, as `bytes.decode` does)
        "".encode(name)
    except LookupError as e:
        raise UserError(f"unknown encoding {encoding!r}"
                        + (" (not a text encoding)" if "not a text encoding" in str(e) else "")) from None
    except UnicodeError:  # the `undefined` codec, which refuses everything
        raise UserError(f"unknown encoding {encoding!r} (it decodes nothing)") from None
    return name


def decode_error(path: Path, encoding: str, byte: int, line: int) -> UserError:
    """The error for a `byte` on `line` that is not valid `encoding`."""
    hint = "; if it is a Chinese Windows file, pass --encoding gbk" if _codec_name(encoding).startswith("utf") else ""
    return file_error(path, f"not valid {encoding}: byte 0x{byte:02x} cannot be decoded{hint}", line)


def decode(path: Path, raw: bytes, encoding: str) -> str:
    """The whole of `raw` (the bytes of `path`) as text; bytes that are not `encoding` are an error naming
    their line."""
    name = codec(encoding)
    try:
        return raw.decode(name)
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, raw[e.start], _line_of(raw[: e.start], name)) from None
    except UnicodeError as e:  # codecs that fail without saying where (idna, punycode)
        raise file_error(path, f"not valid {encoding} ({shown(str(e))})") from None


def _line_of(before: bytes, name: str) -> int:
    """The line on which the bytes after `before` start, counted in decoded text: in UTF-16 a byte 0x0a is
    often half of a character (上 is 0x0a 0x4e), not a line break."""
    return before.decode(name, errors="replace").count("\n") + 1


def delimiter(path: Path) -> str:
    return "\t" if file_format(path) == "tsv" else ","


def shown(value: str) -> str:
    """`value` on one line: line breaks and other unprintable characters as escapes (`\\n`, `\\u2028`)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def column_index(path: Path, header: list[str], name: str, flag: str) -> int:
    """Where column `name` is in `header`; its absence is an error naming the command-line `flag` that
    chooses another."""
    if name not in header:
        raise file_error(
            path, f"no column {name!r} (columns are {shown(', '.join(header))}); pass {flag} to "
            "choose another", 1
        )
    return header.index(name)


def unclosed_quote(record: str, delimiter: str) -> int | None:
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


class TableReader:
    """The records of a delimited file, from its decoded lines: iterating yields (line, fields), the header
    first (its names stripped), then every row that is not blank; blank rows are counted in `blank`.

    Lines are 1-based, as an editor shows them (the header is line 1), and name where a record starts: quoted
    fields may hold line breaks. A quote that is never closed is an error naming the line it opens on; so is an
    empty file. `lines` may come whole-file or a chunk at a time: each ends at a line break or the end of file.
    """

    def __init__(self, path: Path, lines: Iterable[str], delimiter: str):
        self.path, self.delimiter = path, delimiter
        self.blank = 0
        self._pieces = self._split(iter(lines))
        self._record: list[str] = []  # the text of the record being read, as the csv module took it
        self._last: tuple[list[str], int] | None = None  # the record yielded last, and its line

    def _split(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            if "\r" in line:
                for piece in _LONE_CR.split(line):
                    if piece:
                        self._record.append(piece)
                        yield piece
            else:
                self._record.append(line)
                yield line

    def _unclosed(self, pieces: list[str], line: int) -> UserError | None:
        """The error for a quote left open in `pieces`, the text of a record that starts on `line`."""
        text = "".join(pieces)
        opened = unclosed_quote(text, self.delimiter)
        if opened is None:
            return None
        line += len(_LINE_BREAK.findall(text, 0, opened))
        return file_error(self.path, "a quote opens a field here but never closes, so every later line would be "
                                     "read into that field", line)

    def unclosed_quote_error(self) -> UserError | None:
        """The error for a quote left open in the record yielded last (it then ran to the end of the file)."""
        return self._unclosed(*self._last) if self._last is not None else None

    def _rest(self) -> list[str]:
        """The record being read and the rest of the file, after the csv module gave up on it."""
        try:
            for _ in self._pieces:
                pass
        except UserError:  # the rest does not decode: judge the record by what was read
            pass
        return self._record

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        path = self.path
        reader = csv.reader(self._pieces, delimiter=self.delimiter)
        header = False
        start = 1  # the line where the next record starts
        try:
            for fields in reader:
                self._last, self._record = (self._record, start), []
                line, start = start, reader.line_num + 1
                if not header:
                    header = True
                    yield line, [h.strip() for h in fields]
                elif any(f.strip() for f in fields):
                    yield line, fields
                else:
                    self.blank += 1
        except csv.Error as e:  # e.g. a field over the size limit: an unclosed quote is the likely cause
            raise self._unclosed(self._rest(), start) or file_error(
                path, f"malformed {path.suffix.lstrip('.') or 'CSV'}: {e}", reader.line_num) from None
        if (error := self.unclosed_quote_error()) is not None:  # only the last record can reach the end
            raise error
        if not header:
            raise file_error(path, "the file is empty (expected a header line)")
