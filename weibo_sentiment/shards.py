"""Shard files on Ray, read and written as the local engine reads and writes a file.

`SourceFiles` reads CSV/TSV and JSONL shards with the local engine's own reader (`streaming.source.Source`), so
a shard means on Ray what it means to `predict --input FILE`: every CSV value is text as written (an id `00123`
or a blank id stays that text, never a number or NaN), JSON values keep their JSON type, header names and ids
are stripped, blank lines skipped, texts cleaned, a problem is named by file and line, and a row may be of any
length (no parser block size to straddle).

`ShardSink` writes each write task's rows as one shard file through the local engine's row writer
(`output.write_rows`; Parquet through pyarrow, each column keeping its type) and returns what it wrote, so that
the driver can check that every row reached storage it can see (`check_written`).

Ray is imported with this module: `cluster` imports it only once it knows Ray is installed.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, FileBasedDatasource

from .durable import synced_file
from .errors import UserError
from .output import write_rows
from .streaming.source import Row, Source
from .tables import DELIMITED_FORMATS

SHARED_STORAGE = ("the output must be on storage that every worker and the driver can see (a shared file system "
                  "mounted at the same path), not a node's own disk")
_JSON_KINDS = {str: "text", int: "an integer", float: "a decimal number", bool: "true/false"}


class SourceFiles(FileBasedDatasource):
    """CSV/TSV or JSONL files as a Ray Dataset of the columns the scorer needs: `text_column` (cleaned text),
    `id_column` (when given) and the routing column (when the files have one), `block_rows` rows a block."""

    def __init__(self, paths: list[str], *, text_column: str, id_column: str | None, encoding: str,
                 block_rows: int):
        super().__init__(paths)
        self.text_column, self.id_column, self.encoding = text_column, id_column, encoding
        self.block_rows = max(1, block_rows)

    def _read_stream(self, f, path: str) -> Iterator[Block]:
        # Source reads `path` itself (the same path on every node, as for every input), not Ray's stream `f`
        source = Source(path, text_column=self.text_column, encoding=self.encoding, id_column=self.id_column,
                        chunk_size=self.block_rows).open()
        kinds: dict[str, tuple[type, Row]] = {}  # column → its first value's kind and row, across the file
        rows: list[Row] = []
        for row in source.rows():
            rows.append(row)
            if len(rows) == self.block_rows:
                yield self._block(source, rows, kinds)
                rows = []
        if rows:
            yield self._block(source, rows, kinds)

    def _block(self, source: Source, rows: list[Row], kinds: dict) -> pa.Table:
        data = {self.text_column: text_array(source, self.text_column, rows, [r.text for r in rows])}
        for name in (self.id_column, source.routing_column):
            if name is not None and name in source.columns and name not in data:
                data[name] = column(source, name, rows, kinds)
        return pa.table(data)


def text_array(source: Source, name: str, rows: list[Row], values: list) -> pa.Array:
    """`values` (column `name` of `rows`) as an arrow string column; text that UTF-8 cannot hold (a lone
    surrogate, from a JSON escape such as `\ud800`) is an error naming its line."""
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        for row, value in zip(rows, values):
            try:
                (value or "").encode("utf-8")
            except UnicodeEncodeError as e:
                raise UserError(source.where(row) + f"the {name!r} value holds a lone surrogate "
                                f"({value[e.start]!r}), which is not text UTF-8 can hold") from None
        raise


def column(source: Source, name: str, rows: list[Row], kinds: dict) -> pa.Array:
    """Column `name` of `rows` as arrow: text from CSV/TSV; from JSONL the JSON values, which must be of one
    kind in a file (text, integers, decimals or true/false, any of them null) as an arrow column is. `kinds`
    holds each column's first kind and row, from block to block of the file."""
    values = [r.values.get(name) for r in rows]
    if source.format in DELIMITED_FORMATS:
        return text_array(source, name, rows, values)
    for row, value in zip(rows, values):
        if value is None:
            continue
        kind = type(value)
        if kind not in _JSON_KINDS:
            raise UserError(source.where(row) + f"the {name!r} value is a JSON {'object' if kind is dict else 'array'}"
                            "; --engine ray takes text, numbers or true/false there (the local engine takes any)")
        if kind is int and not -(2**63) <= value < 2**63:
            raise UserError(source.where(row) + f"the {name!r} value {value} does not fit 64 bits; --engine ray "
                            "needs integers that do (the local engine takes any)")
        first = kinds.setdefault(name, (kind, row))
        if kind is not first[0]:
            raise UserError(source.where(row) + f"the {name!r} value is {_JSON_KINDS[kind]} but line "
                            f"{first[1].line} has {_JSON_KINDS[first[0]]}; --engine ray needs one kind of value "
                            "per column (the local engine takes mixed ones)")
    if name in kinds and kinds[name][0] is str:
        return text_array(source, name, rows, values)
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError) as e:
        raise UserError(f"{source.path}: the {name!r} values do not fit an arrow column ({e}); --engine ray "
                        "cannot carry them (the local engine can)") from None


class Shard(NamedTuple):
    name: str  # the file's name in the output directory
    rows: int
    size: int  # bytes


class ShardSink(Datasink):
    """Writes each write task's rows as one shard file `part-NNNNN.FORMAT` into `directory` (fsynced, renamed
    into place whole); on the driver, `shards` and `rows` then say what the workers wrote."""

    def __init__(self, directory: Path, fmt: str):
        self.directory, self.fmt = str(directory), fmt
        self.shards: list[Shard] = []
        self.rows = 0

    def write(self, blocks: Iterable[Block], ctx) -> list[Shard]:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return []
        directory = Path(self.directory)
        if not directory.is_dir():
            raise UserError(f"{directory}: not found on the worker node {socket.gethostname()}: {SHARED_STORAGE}")
        path = directory / f"part-{ctx.task_idx:05d}.{self.fmt}"
        with synced_file(path) as out:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(one_table(tables), out)
            else:
                f = io.TextIOWrapper(out, encoding="utf-8", newline="")
                try:
                    write_rows([row for t in tables for row in t.to_pylist()], f, self.fmt)
                except (TypeError, ValueError) as e:  # e.g. a Parquet timestamp id, which JSON has no type for
                    raise UserError(f"the predictions cannot be written as {self.fmt} ({e}); write "
                                    "--format parquet") from None
                f.flush()
                f.detach()  # `out` is synced_file's to fsync and close
        return [Shard(path.name, sum(t.num_rows for t in tables), path.stat().st_size)]

    def on_write_complete(self, write_result) -> None:
        self.rows = write_result.num_rows
        self.shards = [s for written in write_result.write_returns for s in written or []]


def one_table(tables: list[pa.Table]) -> pa.Table:
    """`tables` as one (a Parquet file has one type per column); a column whose type differs between them (an
    id that is a number in one input file and text in another) is an error naming it."""
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        first = tables[0].schema
        for table in tables[1:]:
            for field in table.schema:
                if field.name in first.names and first.field(field.name).type != field.type:
                    raise UserError(mixed_types(field.name, first.field(field.name).type, field.type)) from None
        raise


def mixed_types(name: str, one, other) -> str:
    return (f"column {name!r} holds values of different types in different rows ({one} and {other}); "
            "--engine ray needs one type per column (the local engine writes them to CSV or JSONL)")


def check_written(directory: Path, fmt: str, sink: ShardSink, output: Path) -> int:
    """The rows in `directory` as the driver sees it; an error unless that is every row the workers wrote
    (a worker that wrote to a disk of its own left its shard where the driver cannot see it), or (Parquet) if
    the shards disagree on a column's type."""
    seen, missing, schemas = 0, [], []
    for shard in sink.shards:
        path = directory / shard.name
        if not path.is_file() or path.stat().st_size != shard.size:
            missing.append(shard.name)
            continue
        if fmt == "parquet":
            import pyarrow.parquet as pq

            footer = pq.ParquetFile(path)
            seen += footer.metadata.num_rows
            schemas.append(footer.schema_arrow)
        elif fmt == "jsonl":  # a row is one line
            with path.open("rb") as f:
                seen += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        else:  # CSV, whose quoted fields may hold line breaks: the rows written, once its size matched
            seen += shard.rows
    reported = sum(s.rows for s in sink.shards)
    if missing or seen != sink.rows or reported != sink.rows:
        gone = f"; {len(missing)} of {len(sink.shards)} shard files missing or incomplete" if missing else ""
        raise UserError(f"{output}: the workers wrote {sink.rows} rows but {seen} are there as the driver sees it"
                        f"{gone}: {SHARED_STORAGE}")
    for schema in schemas[1:]:
        for field in schema:
            if field.name in schemas[0].names and schemas[0].field(field.name).type != field.type:
                raise UserError(mixed_types(field.name, schemas[0].field(field.name).type, field.type))
    return seen
