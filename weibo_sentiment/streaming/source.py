"""The streaming source: one input file (CSV/TSV, JSONL, Parquet or `.txt`) read row by row.

The same validation as `data.read_table`/`read_texts` applies, row by row: an unclosed quote is an error naming
the line it opens on, blank lines are skipped and counted, an empty text is an error naming its line.
"""

from __future__ import annotations

import codecs
import hashlib
import json
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
        self.types: dict = {}  # Parquet: column → arrow type, for the kept columns of a Parquet output
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
        number = 0
        pending = ""  # decoded text after the last `\n` (in UTF-16 a byte 0x0a need not end a line)
        with self.path.open("rb") as f:
            for raw in f:
                number += 1
                self.offset += len(raw)
                self._hash.update(raw)
                try:
                    text = pending + decoder.decode(raw)
                except UnicodeDecodeError as e:
                    raise self._decode_error(raw, e, number) from None
                if text.find("\n") == len(text) - 1:  # the usual case: exactly one line
                    pending = ""
                    yield text
                else:
                    *complete, pending = text.split("\n")
                    for line in complete:
                        yield line + "\n"
            try:
                tail = pending + decoder.decode(b"", final=True)
            except UnicodeDecodeError as e:
                raise self._decode_error(b"", e, number) from None
            if tail:
                yield tail

    def _decode_error(self, raw: bytes, e: UnicodeDecodeError, line: int) -> UserError:
        byte = e.object[e.start] if e.start < len(e.object) else (raw[-1] if raw else 0)
        return decode_error(self.path, self.encoding, byte, max(line, 1))

    def _table_rows(self) -> Iterator[Row]:
        path = self.path
        reader = TableReader(path, self._lines(), delimiter(path))
        records = iter(reader)
        _, header = next(records)  # (an empty file is an error, never the end of the records)
        self.columns = header
        ti = column_index(path, header, self.text_column, "--text-column")
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
            yield Row(start, text, values)
        self.blank = reader.blank  # (read once all rows are: `predict_file` reports it at the end)

    def _jsonl_rows(self) -> Iterator[Row]:
        path = self.path
        number = 0
        wanted: list[str] | None = None
        for line in self._lines():
            number += 1
            if not line.strip():
                self.blank += 1
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise file_error(path, f"not valid JSON ({getattr(e, 'msg', e)})", number) from None
            if not isinstance(obj, dict):
                raise file_error(path, f"expected a JSON object with a {self.text_column!r} key, found "
                                       f"{type(obj).__name__}", number)
            if wanted is None:  # the first object names the columns
                self.columns = list(obj)
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
            route = values.get(self.routing_column)
            if self.routing_column in values and route is not None and not isinstance(route, str):
                raise file_error(path, f"the {self.routing_column!r} value is not a string", number)
            yield Row(number, text, values)

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
        self.types = {name: schema.field(name).type for name in schema.names}
        self.total_rows = pf.metadata.num_rows
        column_index(path, self.columns, self.text_column, "--text-column")
        if self.id_column is not None:
            column_index(path, self.columns, self.id_column, "--id-column")
        wanted = self._wanted()
        number = 0
        for batch in pf.iter_batches(batch_size=max(1, self.chunk_size),
                                     columns=list(dict.fromkeys([self.text_column, *wanted]))):
            data = batch.to_pydict()
            texts = data[self.text_column]
            for i, value in enumerate(texts):
                number += 1
                if value is not None and not isinstance(value, str):
                    raise UserError(f"{path}: row {number}: the {self.text_column!r} value is not a string")
                text = clean_text(value or "")
                if not text:
                    raise UserError(f"{path}: row {number}: empty text")
                yield Row(number, text, {c: data[c][i] for c in wanted})

    def where(self, row: Row) -> str:
        return f"{self.path}: {'row' if self.format == 'parquet' else 'line'} {row.line}: "


    def no_rows_error(self) -> UserError:
        """The error for a file read to the end without a row to predict."""
        if self.format == "parquet":
            return file_error(self.path, "has a header but no data rows")
        if self.format in DELIMITED_FORMATS:
            return file_error(self.path, "has a header but no data rows", 1)
        return file_error(self.path, "contains no text")
