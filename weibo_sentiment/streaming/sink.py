"""The streaming sink: predictions written a chunk at a time, in input order.

To stdout (CSV or JSON lines), or to the partial file beside the output (a folder of chunk files for Parquet),
fsynced after each chunk (a chunk file and its folder, for Parquet) so that the progress record never claims rows
a crash lost. The output path is touched only once, complete: `complete` gives the finished file (the partial, or
for Parquet the chunks combined into one file), which the run then puts in place.
Values copied from the input (the id, kept columns) are written by the rules of `values`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from ..durable import create_exclusive, fsync_dir, synced_file
from ..errors import UserError
from ..output import csv_cell
from ..tables import ROUTING_COLUMN, shown
from .record import Progress, chunk_file
from .values import InferredTypes, Where, arrow_type, convert_rows, csv_field, json_value


class _TextSink:
    """CSV or JSONL rows appended to a file (the partial, or stdout); `inputs`: the columns copied from the input."""

    def __init__(self, f, fmt: str, columns: list[str], inputs: list[str], header: bool):
        self.f, self.fmt, self.columns, self.inputs = f, fmt, columns, inputs
        if fmt == "csv":
            self.writer = csv.writer(f)
            if header:
                self.writer.writerow(columns)

    def write(self, rows: list[dict], where: Where) -> None:
        if self.inputs:  # (all of a chunk's rows, before any is written)
            convert_rows(rows, self.inputs, csv_field if self.fmt == "csv" else json_value, where)
        if self.fmt == "csv":
            self.writer.writerows([[csv_cell(row.get(c)) for c in self.columns] for row in rows])
        else:
            dumps = json.dumps
            self.f.write("".join(dumps({c: row.get(c) for c in self.columns}, ensure_ascii=False) + "\n"
                                 for row in rows))


def _prediction_type(column: str):
    import pyarrow as pa

    base = {"text": pa.string(), "label": pa.int64(), "label_name": pa.string(), "confidence": pa.float64(),
            "uncertain": pa.bool_(), ROUTING_COLUMN: pa.string(), "completeness_error": pa.float64(),
            "explanation": pa.list_(pa.struct([("span", pa.string()), ("weight", pa.float64())]))}
    return base.get(column) or (pa.float64() if column.startswith("prob_") else pa.string())


class _ParquetColumns:
    """The Parquet output's columns and their types: a prediction's fixed, an input column's its own (from a
    Parquet input) or its values' (`InferredTypes`)."""

    def __init__(self, columns: list[str], types: dict):
        self.columns = columns
        self.fixed = {c: types[c] if c in types else _prediction_type(c) for c in columns
                      if c not in types or types[c] is not None}
        self.inferred = InferredTypes([c for c in columns if c not in self.fixed])

    def schema(self):
        import pyarrow as pa

        return pa.schema([(c, self.fixed[c] if c in self.fixed else arrow_type(self.inferred.kinds[c]))
                          for c in self.columns])

    def table(self, rows: list[dict], where: Where):
        """A chunk's rows as a table; a value that does not fit its column is an error naming row and column."""
        import pyarrow as pa

        arrays = {}
        for c in self.columns:
            values = [row.get(c) for row in rows]
            if c in self.inferred.kinds:
                values = self.inferred.convert(c, values, where)
            arrays[c] = values
        schema = self.schema()
        return pa.Table.from_arrays([_array(c, arrays[c], schema.field(c).type, where) for c in self.columns],
                                    schema=schema)

    def restore(self, parts: list[Path]) -> None:
        """Take up the types of the chunk files an interrupted run wrote."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if not parts or not self.inferred.kinds:
            return
        schema = pq.read_schema(parts[-1])
        ints = [c for c in self.inferred.kinds if schema.field(c).type == arrow_type("int")]
        largest = dict.fromkeys(ints, 0)
        for part in parts if ints else []:
            table = pq.read_table(part, columns=ints)
            for c in ints:
                low, high = pc.min_max(table[c]).values()
                if low.is_valid:
                    largest[c] = max(largest[c], abs(low.as_py()), abs(high.as_py()))
        self.inferred.restore(schema, largest)

    def read(self, part: Path):
        """A chunk file's table, in the types of the whole output (an earlier chunk's may be narrower)."""
        import pyarrow.parquet as pq

        table = pq.read_table(part)
        schema = self.schema()
        return table if table.schema.equals(schema) else table.cast(schema)


def _array(column: str, values: list, arrow, where: Where):
    import pyarrow as pa

    problems = (pa.ArrowException, TypeError, ValueError, OverflowError)
    try:
        return pa.array(values, type=arrow)
    except problems as e:
        for i, value in enumerate(values):
            try:
                pa.array([value], type=arrow)
            except problems:
                raise UserError(f"{where(i)}column {column!r}: the value {shown(repr(value))[:80]} does not fit "
                                f"the column's Parquet type {arrow}") from None
        raise UserError(f"column {column!r}: cannot be written as Parquet type {arrow} ({e})") from None


COMBINED = "complete.parquet.tmp"  # in a Parquet run's partial folder: the chunks as one file, to be put in place


class Sink:
    """Where a run's rows go: stdout, or (`progress.output` set) the partial file or folder beside the output,
    continued after the last recorded chunk when the run resumes. `types`: the columns copied from the input,
    each with its arrow type (from a Parquet input) or None (its values' own types decide)."""

    def __init__(self, fmt: str, columns: list[str], types: dict, progress: Progress):
        self.fmt, self.output, self.partial = fmt, progress.output, progress.partial
        self.progress = progress
        inputs = [c for c in columns if c in types]
        resumed = progress.resumed_from > 0
        self.file = None
        if self.output is None:
            self.file = sys.stdout
            self._text = _TextSink(self.file, fmt, columns, inputs, header=True)
        elif fmt == "parquet":
            self.parquet = _ParquetColumns(columns, types)
            if resumed:  # what a killed run wrote after its last record (checked: Progress.start) goes
                recorded = [chunk_file(self.partial, i) for i in range(1, progress.chunks + 1)]
                for extra in self.partial.iterdir():
                    if extra not in recorded and not extra.is_dir():
                        extra.unlink()
                self.parquet.restore(recorded)
            else:
                self.partial.mkdir(exist_ok=True)
                fsync_dir(self.partial.parent)
        else:
            if resumed:
                with self.partial.open("r+b") as f:
                    f.truncate(progress.partial_bytes)  # drop what a killed run appended after its last record
            self.file = self.partial.open("a" if resumed else "w", encoding="utf-8", newline="")
            self._text = _TextSink(self.file, fmt, columns, inputs, header=not resumed)

    def write(self, rows: list[dict], chunk: int, where: Where | None = None) -> int:
        """Write chunk number `chunk` (from 1) durably; returns how long the partial file now is (0: Parquet,
        stdout). `where(i)`: where the chunk's row i is in the input, for an error about one of its values."""
        if where is None:
            done = self.progress.rows_done
            where = lambda i: f"row {done + i + 1}: "  # noqa: E731
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            table = self.parquet.table(rows, where)
            with synced_file(chunk_file(self.partial, chunk)) as f:
                pq.write_table(table, f)
            fsync_dir(self.partial)  # the chunk's rename, before the record claims it
            fsync_dir(self.partial.parent)
            return 0
        self._text.write(rows, where)
        self.file.flush()
        if self.output is None:
            return 0
        os.fsync(self.file.fileno())
        return self.file.tell()

    def complete(self, chunks: int) -> Path | None:
        """The complete output, fsynced, ready to be put in place: the partial file, or for Parquet its `chunks`
        chunk files combined into one file in the partial folder (None: stdout, flushed)."""
        if self.output is None:
            sys.stdout.flush()
            return None
        self.close()
        if self.fmt != "parquet":
            return self.partial
        import pyarrow.parquet as pq

        combined = self.partial / COMBINED
        with create_exclusive(combined) as out:
            with pq.ParquetWriter(out, self.parquet.schema()) as writer:
                for i in range(1, chunks + 1):
                    writer.write_table(self.parquet.read(chunk_file(self.partial, i)))
            out.flush()
            os.fsync(out.fileno())
        return combined

    def close(self) -> None:
        """Close the partial file (never stdout)."""
        if self.file is not None and self.file is not sys.stdout and not self.file.closed:
            self.file.close()
