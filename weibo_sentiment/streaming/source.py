"""The streaming source: one input file (CSV/TSV, JSONL, Parquet or `.txt`) read row by row.

The same validation as `data.read_table`/`read_texts` applies, row by row: an unclosed quote is an error naming
the line it opens on, blank lines are skipped and counted, an empty text is an error naming its line.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DEFAULT_TEXT_COLUMN, clean_text
from ..errors import UserError, file_error
from ..tables import (
    DELIMITED_FORMATS,
    ROUTING_COLUMN,
    TableReader,
    codec,
    column_index,
    decode_error,
    delimiter,
    file_format,
    shown,
)

DEFAULT_CHUNK_SIZE = 4096
_SURROGATE = re.compile("[\ud800-\udfff]")  # only a JSON escape or an odd codec (utf-7) yields one alone


@dataclass
class Row:
    line: int  # 1-based line (CSV/TSV/JSONL/txt: where the record starts) or data row (Parquet)
    text: str
    values: dict = field(default_factory=dict)  # the other columns wanted: id, routing, kept


class Source:
    """One input file read row by row, counting the bytes read and hashing them for `--resume`."""

    def __init__(self, path: str | Path, *, text_column: str = DEFAULT_TEXT_COLUMN, encoding: str = "utf-8",
                 id_column: str | None = None, keep_columns: bool = False, routing_column: str = ROUTING_COLUMN,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        self.path = Path(path)
        if not self.path.exists():
            raise file_error(self.path, "no such file")
        if self.path.is_dir():
            raise file_error(self.path, "is a directory, expected a file of texts")
        self.format = file_format(self.path)
        self.text_column, self.encoding = text_column, encoding
        self.id_column, self.keep_columns, self.routing_column = id_column, keep_columns, routing_column
        self.chunk_size = chunk_size
        self.size = self.path.stat().st_size
        self.offset = 0  # bytes read so far
        self.blank = 0
        self.total_rows: int | None = None  # known up front for Parquet only
        self._hash = hashlib.sha256()
        self._codec = codec(encoding)
        self.columns: list[str] = []  # the input's columns (empty for .txt)
        # column → its arrow type (Parquet), or None where the values' own types decide (CSV: text; JSONL)
        self.types: dict = {}
        if id_column is not None and self.format == "txt":
            raise UserError(f"{self.path}: a text file has no columns, so --id-column {id_column} cannot apply; "
                            "use CSV/TSV, JSONL or Parquet")
        self._rows = {"csv": self._table_rows, "tsv": self._table_rows, "jsonl": self._jsonl_rows,
                      "parquet": self._parquet_rows, "txt": self._txt_rows}[self.format]()
        self._started = False

    # Columns, known once the first row (header) is read; `open()` reads it.
    def open(self) -> Source:
        try:
            first = next(self._rows)
        except StopIteration:
            first = None
        self._first = first
        self._started = True
        return self

    @property
    def routing(self) -> bool:
        return self.routing_column in self.columns

    @property
    def kept(self) -> list[str]:
        if not self.keep_columns:
            return []
        skip = {self.text_column, self.id_column, self.routing_column}
        return [c for c in self.columns if c not in skip]

    def _wanted(self) -> list[str]:
        wanted = [c for c in (self.id_column, self.routing_column) if c is not None and c in self.columns]
        return list(dict.fromkeys(wanted + self.kept))

    def rows(self) -> Iterator[Row]:
        if not self._started:
            self.open()
        if self._first is not None:
            yield self._first
        yield from self._rows

    def sha256_of_read(self) -> str:
        return self._hash.copy().hexdigest()

    # bytes → decoded lines, each ending at `\n` (or at the end of the file)
    def _lines(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder(self._codec)()
        done = 0  # lines yielded
        pending = ""  # decoded text after the last `\n` (in UTF-16 a byte 0x0a need not end a line)
        with self.path.open("rb") as f:
            for raw in f:
                self.offset += len(raw)
                self._hash.update(raw)
                state = decoder.getstate()
                try:
                    text = pending + decoder.decode(raw)
                except UnicodeError as e:
                    raise self._decode_error(e, raw, state, done + 1) from None
                # the usual case: exactly one line (not an empty text: in UTF-16 `raw` may be a lone 0x0a byte)
                if text and text.find("\n") == len(text) - 1:
                    pending = ""
                    done += 1
                    yield text
                else:
                    *complete, pending = text.split("\n")
                    for line in complete:
                        done += 1
                        yield line + "\n"
            state = decoder.getstate()
            try:
                tail = pending + decoder.decode(b"", final=True)
            except UnicodeError as e:
                raise self._decode_error(e, b"", state, done + 1) from None
            if tail:
                yield tail

    def _decode_error(self, e: UnicodeError, raw: bytes, state: tuple, line: int) -> UserError:
        """The error for bytes of `raw` that do not decode, `raw` starting on `line` with the decoder in `state`:
        the line is counted in decoded text, so that it is the line an editor shows."""
        if not isinstance(e, UnicodeDecodeError):  # codecs that fail without saying where (idna, punycode)
            return file_error(self.path, f"not valid {self.encoding} ({shown(str(e))})", line)
        held = len(state[0])  # bytes of an earlier chunk the decoder held back: `e.object` starts with them
        before = codecs.getincrementaldecoder(self._codec)(errors="replace")
        before.setstate(state)
        line += before.decode(raw[: max(0, e.start - held)]).count("\n")
        return decode_error(self.path, self.encoding, e.object[e.start] if e.start < len(e.object) else 0, line)

    def _table_rows(self) -> Iterator[Row]:
        path = self.path
        reader = TableReader(path, self._lines(), delimiter(path))
        records = iter(reader)
        _, header = next(records)  # (an empty file is an error, never the end of the records)
        self.columns = header
        self.types = dict.fromkeys(header)
        ti = column_index(path, header, self.text_column, "--text-column")
        self._check_names(header, 1)
        if self.id_column is not None:
            column_index(path, header, self.id_column, "--id-column")
        wanted = [(c, header.index(c)) for c in self._wanted()]
        for start, fields in records:
            text = clean_text(fields[ti]) if len(fields) > ti else ""
            if not text:  # (a record left open by a quote runs to the end: say that instead)
                raise reader.unclosed_quote_error() or file_error(path, "empty text", start)
            values = {c: (fields[i] if len(fields) > i else "") for c, i in wanted}
            for c in (self.id_column, self.routing_column):
                if c in values:
                    values[c] = values[c].strip()
            self._check_characters(start, {self.text_column: text, **values})
            yield Row(start, text, values)
        self.blank = reader.blank  # (read once all rows are: `predict_file` reports it at the end)

    def _jsonl_rows(self) -> Iterator[Row]:
        path = self.path
        number = 0
        wanted: list[str] | None = None
        repeated: list[tuple[dict, str]] = []  # objects of the line read with a key given twice, and that key

        def pairs(items: list[tuple[str, object]]) -> dict:
            obj = dict(items)
            if len(obj) < len(items):  # json.loads would keep the last value without a word
                repeated.append((obj, next(k for k, n in Counter(k for k, _ in items).items() if n > 1)))
            return obj

        loads = json.JSONDecoder(object_pairs_hook=pairs).decode
        for line in self._lines():
            number += 1
            if not line.strip():
                self.blank += 1
                continue
            repeated.clear()
            try:
                obj = loads(line)
            except ValueError as e:
                raise file_error(path, f"not valid JSON ({getattr(e, 'msg', e)})", number) from None
            except RecursionError:
                raise file_error(path, "not valid JSON here (nested too deeply to read)", number) from None
            if not isinstance(obj, dict):
                raise file_error(path, f"expected a JSON object with a {self.text_column!r} key, found "
                                       f"{type(obj).__name__}", number)
            if wanted is None:  # the first object names the columns
                self.columns = list(obj)
                self.types = dict.fromkeys(obj)
                if self.id_column is not None and self.id_column not in obj:
                    raise file_error(path, f"no key {self.id_column!r} (keys are {shown(', '.join(obj))}); "
                                           "pass --id-column to choose another", number)
                wanted = self._wanted()
            if self.text_column not in obj:
                raise file_error(path, f"no key {self.text_column!r} (keys are {shown(', '.join(obj))}); pass "
                                       "--text-column to choose another", number)
            value = obj[self.text_column]
            if not isinstance(value, str):
                raise file_error(path, f"the {self.text_column!r} value is not a string", number)
            text = clean_text(value)
            if not text:
                raise file_error(path, "empty text", number)
            values = {c: obj.get(c) for c in wanted}
            if repeated:
                self._check_repeated_keys(obj, repeated, {self.text_column: value, **values}, number)
            self._check_characters(number, {self.text_column: value, **values})
            route = values.get(self.routing_column)
            if self.routing_column in values and route is not None and not isinstance(route, str):
                raise file_error(path, f"the {self.routing_column!r} value is not a string", number)
            yield Row(number, text, values)

    def _check_repeated_keys(self, obj: dict, repeated: list[tuple[dict, str]], used: dict, line: int) -> None:
        """Refuse a key given twice in a JSON object, where the value lost would be one that is read."""
        for inner, key in repeated:
            if inner is obj:
                if key in used or self.keep_columns:
                    raise file_error(self.path, f"the key {key!r} appears twice in this object, so one of its "
                                                "values would be lost; a JSON object's keys must differ", line)
                continue
            for column, value in used.items():
                if contains(value, inner):
                    raise file_error(self.path, f"column {column!r}: the key {key!r} appears twice in a nested "
                                                "object, so one of its values would be lost; a JSON object's "
                                                "keys must differ", line)

    def _txt_rows(self) -> Iterator[Row]:
        number = 0
        for line in self._lines():
            number += 1
            text = clean_text(line)
            if text:
                yield Row(number, text)
            else:
                self.blank += 1

    def _parquet_rows(self) -> Iterator[Row]:
        import pyarrow.parquet as pq

        path = self.path
        with path.open("rb") as f:  # the footer is at the end: the whole file is "read" from the start
            for block in iter(lambda: f.read(1 << 20), b""):
                self._hash.update(block)
        self.offset = self.size
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow's own error types for a file that is not Parquet
            raise file_error(path, f"not a Parquet file ({e})") from None
        schema = pf.schema_arrow
        self.columns = list(schema.names)
        self._check_names(self.columns, None)
        self.types = dict(zip(schema.names, schema.types))
        self.total_rows = pf.metadata.num_rows
        column_index(path, self.columns, self.text_column, "--text-column")
        if self.id_column is not None:
            column_index(path, self.columns, self.id_column, "--id-column")
        wanted = self._wanted()
        number = 0
        for batch in pf.iter_batches(batch_size=max(1, self.chunk_size),
                                     columns=list(dict.fromkeys([self.text_column, *wanted]))):
            data = _as_python(batch, lambda i, column, problem, done=number: UserError(
                self.where(done + 1 + i) + f"column {column!r}: {problem}"))
            texts = data[self.text_column]
            for i, value in enumerate(texts):
                number += 1
                if value is not None and not isinstance(value, str):
                    raise UserError(f"{path}: row {number}: the {self.text_column!r} value is not a string")
                text = clean_text(value or "")
                if not text:
                    raise UserError(f"{path}: row {number}: empty text")
                yield Row(number, text, {c: data[c][i] for c in wanted})

    def where(self, row: Row | int) -> str:
        line = row if isinstance(row, int) else row.line
        return f"{self.path}: {'row' if self.format == 'parquet' else 'line'} {line}: "

    def _check_names(self, names: list[str], line: int | None) -> None:
        """Refuse a column name that appears twice where its values are read: only one of them could be."""
        used = {self.text_column, self.id_column, self.routing_column}
        for name, n in Counter(names).items():
            if n > 1 and (name in used or self.keep_columns):
                what = f"{n} columns are named {name!r}" if name else f"{n} columns have no name"
                raise file_error(self.path, f"{what}; rename them so that each value has a column of its own "
                                            "(a table's column names must differ)", line)

    def _check_characters(self, line: int, values: dict) -> None:
        """Refuse a lone surrogate (half of a UTF-16 pair, e.g. JSON's `"\\ud800"`) in a value that is read:
        it is not a character, and no UTF-8 output can hold it."""
        for column, value in values.items():
            found = lone_surrogate(value)
            if found is not None:
                raise UserError(self.where(line) + f"column {column!r} holds a lone surrogate "
                                f"{shown(found)}, which is not a character (no UTF-8 output can hold it); "
                                "fix the input")


    def no_rows_error(self) -> UserError:
        """The error for a file read to the end without a row to predict."""
        if self.format == "parquet":
            return file_error(self.path, "has a header but no data rows")
        if self.format in DELIMITED_FORMATS:
            return file_error(self.path, "has a header but no data rows", 1)
        return file_error(self.path, "contains no text")


def lone_surrogate(value) -> str | None:
    """The first lone surrogate in `value` (a string, or a list or dict of them, keys included), or None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if (m := _SURROGATE.search(v)) is not None:
                return m.group()
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def contains(value, inner: dict) -> bool:
    """Whether `inner` is `value` or one of the lists and dicts nested in it (the very object, not an equal one)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if v is inner:
            return True
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _as_python(batch, error) -> dict[str, list]:
    """`batch`'s columns as Python values; a value that Python cannot hold unchanged is `error(row in batch,
    column, problem)`: a string that is not UTF-8, a time of day with nanoseconds."""
    import pyarrow as pa

    for column, arrow in zip(batch.schema.names, batch.schema.types):
        if arrow == pa.time64("ns"):  # (`datetime.time` stops at microseconds: as_py drops the rest)
            for i, ns in enumerate(batch.column(column).cast(pa.int64()).to_pylist()):
                if ns is not None and ns % 1000:
                    raise error(i, column, "a time of day with nanoseconds, which this command cannot carry "
                                           "unchanged; cast the column to time64[us] or to text")
    try:
        return batch.to_pydict()
    except UnicodeDecodeError:  # Parquet strings are meant to be UTF-8, but nothing checks it on writing
        pass
    for column in batch.schema.names:
        values = batch.column(column)
        for i in range(len(values)):
            try:
                values[i].as_py()
            except UnicodeDecodeError as e:
                raise error(i, column, f"not valid UTF-8 text (byte 0x{e.object[e.start]:02x})") from None
    return batch.to_pydict()
