"""Streaming prediction over files of any size: read a chunk, predict it, append it, repeat.

`predict_file(predictor, input, output)` reads CSV/TSV, JSONL, Parquet or `.txt` a chunk of rows at a time
(`chunk_size`, 4,096 by default; `Predictor.predict` sorts each chunk by length, so batches pad little), writes
the predictions in input order as it goes and keeps memory flat whatever the file's length. The same validation
as `data.read_table`/`read_texts` applies, row by row: an unclosed quote is an error naming the line it opens
on, blank lines are skipped and counted, an empty text is an error naming its line.

Resumable: the rows go to a partial file beside the output (`.NAME.partial`; a folder of chunk files for
Parquet) and, after each chunk, a small progress record (`.NAME.progress.json`, fsynced, atomically replaced)
says how far the input was read, a sha256 of the bytes read, the adapters' fingerprints and the options. The
output path is touched only once, complete (renamed into place, or for Parquet written through
`output.atomic_open`). `resume=True` continues an interrupted run (Ctrl-C, kill -9) after its last complete
chunk, if the record matches; the final file equals an uninterrupted run's byte for byte.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .adapter_io import WEIGHTS_FILE
from .data import DEFAULT_TEXT_COLUMN, _column, _delimiter, _unclosed_quote, clean_text, shown
from .errors import UserError, file_error
from .output import (
    RUN_FILE,
    atomic_open,
    check_output_file,
    fsync_dir,
    replace_file,
    synced_file,
    write_json_record,
)

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4096
RECORD_VERSION = 1
TABLE_SUFFIXES = (".csv", ".tsv", ".tab")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
OUTPUT_FORMATS = {"csv": "csv", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl", "parquet": "parquet",
                  "pq": "parquet"}
ROUTING_COLUMN = "adapter"
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")  # where the csv module (universal newlines) also ends a line


@dataclass
class Row:
    line: int  # 1-based line (CSV/TSV/JSONL/txt: where the record starts) or data row (Parquet)
    text: str
    values: dict = field(default_factory=dict)  # the other columns wanted: id, routing, kept


@dataclass
class StreamResult:
    rows: int  # predictions written
    blank: int  # blank lines skipped
    truncated: dict[int, int]  # max length → texts longer than it
    resumed_from: int  # rows already done by the interrupted run (0 for a fresh one)
    output: Path | None


def input_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return "table"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "txt"


def output_format(path: Path | None, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("csv", "jsonl", "parquet"):
            raise UserError(f"unknown output format {fmt!r} (choose csv, jsonl or parquet)")
        return fmt
    if path is None:
        return "jsonl"
    found = OUTPUT_FORMATS.get(path.suffix.lower().lstrip("."))
    if found is None:
        raise UserError(f"{path}: unknown output type (use a .csv, .jsonl or .parquet file name)")
    return found


# ---- reading -------------------------------------------------------------------------------------------
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
        self.format = input_format(self.path)
        self.text_column, self.encoding = text_column, encoding
        self.id_column, self.keep_columns, self.routing_column = id_column, keep_columns, routing_column
        self.chunk_size = chunk_size
        self.size = self.path.stat().st_size
        self.offset = 0  # bytes read so far
        self.blank = 0
        self.total_rows: int | None = None  # known up front for Parquet only
        self._hash = hashlib.sha256()
        codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig") else encoding
        try:
            codecs.lookup(codec)
        except LookupError:
            raise UserError(f"unknown encoding {encoding!r}") from None
        self._codec = codec
        self.columns: list[str] = []  # the input's columns (empty for .txt)
        self.types: dict = {}  # Parquet: column → arrow type, for the kept columns of a Parquet output
        if id_column is not None and self.format == "txt":
            raise UserError(f"{self.path}: a text file has no columns, so --id-column {id_column} cannot apply; "
                            "use CSV/TSV, JSONL or Parquet")
        self._rows = {"table": self._table_rows, "jsonl": self._jsonl_rows, "parquet": self._parquet_rows,
                      "txt": self._txt_rows}[self.format]()
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
        hint = "; if it is a Chinese Windows file, pass --encoding gbk" if self._codec.startswith("utf") else ""
        return file_error(self.path, f"not valid {self.encoding}: byte 0x{byte:02x} cannot be decoded{hint}",
                          max(line, 1))

    def _table_rows(self) -> Iterator[Row]:
        path, delimiter = self.path, _delimiter(self.path)
        record: list[str] = []  # the lines of the record being read
        previous: list[str] = []  # the lines of the record read last

        def pieces() -> Iterator[str]:
            for line in self._lines():
                if "\r" in line:
                    for piece in _LONE_CR.split(line):
                        if piece:
                            record.append(piece)
                            yield piece
                else:
                    record.append(line)
                    yield line

        def unclosed(lines: list[str], line: int) -> UserError | None:
            text = "".join(lines)
            opened = _unclosed_quote(text, delimiter)
            if opened is None:
                return None
            line += len(re.findall(r"\r\n|\r|\n", text[:opened]))
            return file_error(path, "a quote opens a field here but never closes, so every later line would be "
                                    "read into that field", line)

        reader = csv.reader(pieces(), delimiter=delimiter)
        start, last_start = 1, 1
        header: list[str] | None = None
        ti = 0
        wanted: list[tuple[str, int]] = []
        try:
            for fields in reader:
                if header is None:
                    header = [h.strip() for h in fields]
                    self.columns = header
                    ti = _column(path, header, self.text_column, "--text-column")
                    if self.id_column is not None:
                        _column(path, header, self.id_column, "--id-column")
                    wanted = [(c, header.index(c)) for c in self._wanted()]
                    row = None
                elif any(f.strip() for f in fields):
                    text = clean_text(fields[ti]) if len(fields) > ti else ""
                    if not text:  # (a record left open by a quote runs to the end: say that instead)
                        raise unclosed(record, start) or file_error(path, "empty text", start)
                    values = {c: (fields[i] if len(fields) > i else "") for c, i in wanted}
                    for c in (self.id_column, self.routing_column):
                        if c in values:
                            values[c] = values[c].strip()
                    row = Row(start, text, values)
                else:
                    self.blank += 1
                    row = None
                previous, record[:] = list(record), []
                last_start, start = start, reader.line_num + 1
                if row is not None:
                    yield row
        except csv.Error as e:  # e.g. a field over the size limit: an unclosed quote is the likely cause
            raise unclosed(record, start) or file_error(
                path, f"malformed {path.suffix.lstrip('.') or 'CSV'}: {e}", reader.line_num) from None
        if previous and (error := unclosed(previous, last_start)) is not None:
            raise error
        if header is None:
            raise file_error(path, "the file is empty (expected a header line)")

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
        _column(path, self.columns, self.text_column, "--text-column")
        if self.id_column is not None:
            _column(path, self.columns, self.id_column, "--id-column")
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


# ---- writing -------------------------------------------------------------------------------------------
class _TextSink:
    """CSV or JSONL rows appended to a file (the partial, or stdout)."""

    def __init__(self, f, fmt: str, columns: list[str], header: bool):
        self.f, self.fmt, self.columns = f, fmt, columns
        if fmt == "csv":
            self.writer = csv.writer(f)
            if header:
                self.writer.writerow(columns)

    def write(self, rows: list[dict]) -> None:
        if self.fmt == "csv":
            self.writer.writerows([["" if (v := row.get(c)) is None else v for c in self.columns]
                                   for row in rows])
        else:
            dumps = json.dumps
            self.f.write("".join(dumps({c: row.get(c) for c in self.columns}, ensure_ascii=False) + "\n"
                                 for row in rows))


def _arrow_schema(columns: list[str], types: dict):
    import pyarrow as pa

    base = {"text": pa.string(), "label": pa.int64(), "label_name": pa.string(), "confidence": pa.float64(),
            "uncertain": pa.bool_(), ROUTING_COLUMN: pa.string()}
    return pa.schema([(c, types.get(c) or base.get(c) or (pa.float64() if c.startswith("prob_") else pa.string()))
                      for c in columns])


# ---- the run -------------------------------------------------------------------------------------------
def output_row(pred, min_confidence: float | None) -> dict:
    """A prediction's output columns; with `min_confidence` an `uncertain` column follows `confidence`."""
    row = pred.as_row()
    if min_confidence is None:
        return row
    items = list(row.items())
    at = list(row).index("confidence") + 1
    return dict([*items[:at], ("uncertain", pred.confidence < min_confidence), *items[at:]])


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


def _sha256_prefix(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        left = length
        while left > 0 and (block := f.read(min(left, 1 << 20))):
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def partial_paths(output: Path) -> tuple[Path, Path]:
    """(partial file or folder, progress record) of a streaming run writing `output`."""
    return output.with_name(f".{output.name}.partial"), output.with_name(f".{output.name}.progress.json")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def predict_file(
    predictor,
    input: str | Path,
    output: str | Path | None,
    *,
    text_column: str = DEFAULT_TEXT_COLUMN,
    encoding: str = "utf-8",
    id_column: str | None = None,
    keep_columns: bool = False,
    fmt: str | None = None,
    batch_size: int = 32,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    min_confidence: float | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> StreamResult:
    """Predict every text of `input` (CSV/TSV, JSONL, Parquet, .txt) into `output` (.csv, .jsonl, .parquet;
    None or `-`: JSON lines, or `fmt`, on stdout), `chunk_size` rows at a time, in input order.

    `predictor` is a `Predictor` or `OnnxPredictor` (`export.load_predictor`); a `routing` column named
    `adapter` sends each row to that adapter (blank: the predictor's default). `id_column` is copied into every
    output row (first column); `keep_columns` copies all other input columns after the prediction's (renamed
    `input_NAME` where a name is taken). `resume` continues an interrupted run; without it, the leftovers of one
    are an error. `progress` (None: when stderr is a terminal) shows a bar on stderr.
    """
    if chunk_size < 1:
        raise UserError(f"--chunk-size {chunk_size}: must be at least 1")
    input = Path(input)
    to_stdout = output is None or str(output) == "-"
    out_path = None if to_stdout else Path(output)
    out_fmt = output_format(out_path, fmt)
    if to_stdout and out_fmt == "parquet":
        raise UserError("Parquet output needs a file: pass --output NAME.parquet")
    if to_stdout and resume:
        raise UserError("--resume needs an --output file to continue")
    if out_path is not None:
        check_output_file(out_path, "predictions", inputs=[input])
    source = Source(input, text_column=text_column, encoding=encoding, id_column=id_column,
                    keep_columns=keep_columns, chunk_size=chunk_size)

    # The output's columns, fixed before the first row: adapters routed to may have other label sets.
    partial, record_path = partial_paths(out_path) if out_path is not None else (None, None)
    source.open()
    routing = source.routing
    label_names: list[str] = []
    for name, info in predictor.adapters.items():
        if routing or name == predictor.default:
            label_names += [n for n in info.label_names if n not in label_names]
    columns = ([id_column] if id_column else []) + ([ROUTING_COLUMN] if routing else [])
    columns += ["text", "label", "label_name", "confidence"] + (["uncertain"] if min_confidence is not None else [])
    columns += [f"prob_{n}" for n in label_names]
    if id_column and columns.count(id_column) > 1:
        raise UserError(f"--id-column {id_column}: the predictions have a column of that name; the id needs "
                        "a column of its own (keep it with --keep-columns instead)")
    renamed = {}
    for c in source.kept:
        new = c
        while new in columns:
            new = f"input_{new}"
        renamed[c] = new
        columns.append(new)
    types = {renamed[c]: t for c, t in source.types.items() if c in renamed}
    if id_column and id_column in source.types:
        types[id_column] = source.types[id_column]

    fingerprint = {
        "version": RECORD_VERSION,
        "format": out_fmt,
        "columns": columns,
        "adapters": adapters_fingerprint(predictor),
        "options": {"backend": getattr(predictor, "backend", "torch"), "default_adapter": predictor.default,
                    "calibrated": bool(predictor.calibrated), "min_confidence": min_confidence,
                    "text_column": text_column, "id_column": id_column, "keep_columns": keep_columns,
                    "encoding": encoding, "batch_size": batch_size, "chunk_size": chunk_size},
    }
    done, chunks, partial_bytes = 0, 0, 0
    truncated: dict[int, int] = {}
    if out_path is not None:
        record = _read_record(record_path) if record_path.exists() else None
        if not resume and (record is not None or partial.exists()):
            rows = f" ({record.get('rows_done', 0)} rows done)" if isinstance(record, dict) else ""
            raise UserError(f"{out_path}: an interrupted run left {partial.name}{rows} beside it; pass --resume "
                            f"to continue it, or remove {partial} and {record_path} to start afresh")
        if resume and record is None:
            if partial.exists():
                _remove(partial)  # nothing complete in it: no chunk was recorded
            logger.info("%s: no interrupted run to resume; starting from the first row", out_path)
        elif resume:
            _check_record(record, fingerprint, source, out_path, partial, record_path)
            done, chunks, partial_bytes = record["rows_done"], record["chunks"], record["partial_bytes"]
            truncated = {int(k): v for k, v in record.get("truncated", {}).items()}

    write_record = None
    if out_path is None:
        f = sys.stdout
        sink = _TextSink(f, out_fmt, columns, header=True)
    elif out_fmt == "parquet":
        f = None
        if resume and done:
            for extra in sorted(partial.glob("*.parquet"))[chunks:]:
                extra.unlink()
        else:
            partial.mkdir(exist_ok=True)
        schema = _arrow_schema(columns, types)
    else:
        if resume and done:
            f = partial.open("r+b")
            f.truncate(partial_bytes)  # drop what a killed run appended after its last record
            f.close()
        f = partial.open("a" if resume and done else "w", encoding="utf-8", newline="")
        sink = _TextSink(f, out_fmt, columns, header=not (resume and done))

    if out_path is not None:
        def write_record(rows_done: int, chunk_count: int, nbytes: int) -> None:
            write_json_record(record_path, {**fingerprint, "rows_done": rows_done, "chunks": chunk_count,
                                            "partial_bytes": nbytes, "truncated": truncated,
                                            "input": {"size": source.size, "offset": source.offset,
                                                      "sha256": source.sha256_of_read()}})

    show = sys.stderr.isatty() if progress is None else progress
    from tqdm.auto import tqdm

    bar = tqdm(total=source.total_rows, initial=done, unit="row", desc="predict", disable=not show,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    written = done
    rows_iter = source.rows()
    try:
        for _ in range(done):  # the rows an interrupted run completed: read (and checked) again, not predicted
            if next(rows_iter, None) is None:
                raise UserError(f"{input}: has fewer rows than the interrupted run completed ({done})")
        started = time.monotonic()
        while True:
            chunk = []
            for row in rows_iter:
                chunk.append(row)
                if len(chunk) >= chunk_size:
                    break
            if not chunk:
                break
            rows = _predict_chunk(predictor, source, chunk, id_column, routing, renamed, batch_size,
                                  min_confidence, truncated)
            chunks += 1
            if out_fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                table = pa.Table.from_pylist(rows, schema=schema)
                name = partial / f"{chunks:08d}.parquet"
                with synced_file(name) as tmp:
                    pq.write_table(table, tmp)
                nbytes = 0
            else:
                sink.write(rows)
                f.flush()
                nbytes = 0
                if out_path is not None:
                    os.fsync(f.fileno())
                    nbytes = f.tell()
            written += len(chunk)
            if write_record is not None:
                write_record(written, chunks, nbytes)
            if show:
                if source.total_rows is None and source.offset:
                    bar.total = max(written, int(written * source.size / source.offset))
                bar.update(len(chunk))
        if written == 0:
            raise _no_rows(source)
        if out_path is not None:
            if f is not None:
                f.close()
            if out_fmt == "parquet":
                import pyarrow.parquet as pq

                # atomic_open checks (again) that out_path is still ours to replace
                with atomic_open(out_path, "wb", encoding=None, inputs=[input]) as out:
                    with pq.ParquetWriter(out, schema) as writer:
                        for part in sorted(partial.glob("*.parquet")):
                            writer.write_table(pq.read_table(part, schema=schema))
                shutil.rmtree(partial)
            else:
                replace_file(partial, out_path, "predictions", inputs=[input])  # if still ours to replace
            record_path.unlink(missing_ok=True)
            fsync_dir(out_path.parent)
        else:
            sys.stdout.flush()
        elapsed = time.monotonic() - started
        logger.debug("%d rows in %.1f s", written - done, elapsed)
    except UserError:
        if out_path is not None:  # this input can never complete: leave nothing half-made behind
            if f is not None and not f.closed:
                f.close()
            _remove(partial)
            record_path.unlink(missing_ok=True)
        raise
    except KeyboardInterrupt:
        if out_path is not None:
            logger.warning("interrupted after %d rows; run the same command with --resume to continue", written)
        raise
    finally:
        bar.close()
        if f is not None and f is not sys.stdout and not f.closed:
            f.close()
    if source.blank:
        logger.warning("%s: skipped %d blank line(s)", input, source.blank)
    for max_length, n in sorted(truncated.items()):
        if n:
            logger.warning("%d text(s) longer than %d tokens were truncated to %d", n, max_length, max_length)
    return StreamResult(rows=written, blank=source.blank, truncated=truncated, resumed_from=done, output=out_path)


def _no_rows(source: Source) -> UserError:
    if source.format in ("table", "parquet"):
        return file_error(source.path, "has a header but no data rows", 1 if source.format == "table" else None)
    return file_error(source.path, "contains no text")


def _predict_chunk(predictor, source: Source, chunk: Sequence[Row], id_column: str | None, routing: bool,
                   renamed: dict[str, str], batch_size: int, min_confidence: float | None,
                   truncated: dict[int, int]) -> list[dict]:
    from .inference import count_truncated

    texts = [r.text for r in chunk]
    if routing:
        names = []
        for r in chunk:
            name = r.values.get(ROUTING_COLUMN) or None
            if name is not None and name not in predictor.adapters:
                raise UserError(source.where(r) + f"unknown adapter {name!r} (loaded: "
                                f"{', '.join(predictor.adapters)})")
            names.append(name)
        preds = predictor.predict_routed(texts, names, batch_size=batch_size)
    else:
        preds = predictor.predict(texts, batch_size=batch_size)
    by_length: dict[int, list[str]] = {}
    for p in preds:
        max_length = predictor.adapters[p.adapter].max_length
        if len(p.text) + 2 > max_length:
            by_length.setdefault(max_length, []).append(p.text)
    for max_length, long in by_length.items():
        truncated[max_length] = truncated.get(max_length, 0) + count_truncated(predictor.tokenizer, long, max_length)
    rows = []
    for r, p in zip(chunk, preds, strict=True):
        row = {id_column: r.values.get(id_column)} if id_column else {}
        if routing:
            row[ROUTING_COLUMN] = p.adapter
        row.update(output_row(p, min_confidence))
        for c, new in renamed.items():
            row[new] = r.values.get(c)
        rows.append(row)
    return rows


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
