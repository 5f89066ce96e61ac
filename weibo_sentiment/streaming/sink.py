"""The streaming sink: predictions written a chunk at a time, in input order.

To stdout (CSV or JSON lines), or to the partial file beside the output (a folder of chunk files for Parquet),
fsynced after each chunk so that the progress record never claims rows a crash lost. The output path is touched
only once, complete (`finish`: renamed into place, or for Parquet written through `output.atomic_open`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

from ..output import atomic_open, csv_cell, replace_file, synced_file
from ..tables import ROUTING_COLUMN
from .record import Progress


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
            self.writer.writerows([[csv_cell(row.get(c)) for c in self.columns] for row in rows])
        else:
            dumps = json.dumps
            self.f.write("".join(dumps({c: row.get(c) for c in self.columns}, ensure_ascii=False) + "\n"
                                 for row in rows))


def _arrow_schema(columns: list[str], types: dict):
    import pyarrow as pa

    base = {"text": pa.string(), "label": pa.int64(), "label_name": pa.string(), "confidence": pa.float64(),
            "uncertain": pa.bool_(), ROUTING_COLUMN: pa.string(), "completeness_error": pa.float64(),
            "explanation": pa.list_(pa.struct([("span", pa.string()), ("weight", pa.float64())]))}
    return pa.schema([(c, types.get(c) or base.get(c) or (pa.float64() if c.startswith("prob_") else pa.string()))
                      for c in columns])


class Sink:
    """Where a run's rows go: stdout, or (`progress.output` set) the partial file or folder beside the output,
    continued after the last recorded chunk when the run resumes. `types`: arrow types of input columns kept."""

    def __init__(self, fmt: str, columns: list[str], types: dict, progress: Progress):
        self.fmt, self.output, self.partial = fmt, progress.output, progress.partial
        resumed = progress.resumed_from > 0
        self.file = None
        if self.output is None:
            self.file = sys.stdout
            self._text = _TextSink(self.file, fmt, columns, header=True)
        elif fmt == "parquet":
            if resumed:
                for extra in sorted(self.partial.glob("*.parquet"))[progress.chunks:]:
                    extra.unlink()
            else:
                self.partial.mkdir(exist_ok=True)
            self.schema = _arrow_schema(columns, types)
        else:
            if resumed:
                with self.partial.open("r+b") as f:
                    f.truncate(progress.partial_bytes)  # drop what a killed run appended after its last record
            self.file = self.partial.open("a" if resumed else "w", encoding="utf-8", newline="")
            self._text = _TextSink(self.file, fmt, columns, header=not resumed)

    def write(self, rows: list[dict], chunk: int) -> int:
        """Write chunk number `chunk` (from 1) durably; returns how long the partial file now is (0: Parquet,
        stdout)."""
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(rows, schema=self.schema)
            name = self.partial / f"{chunk:08d}.parquet"
            with synced_file(name) as tmp:
                pq.write_table(table, tmp)
            return 0
        self._text.write(rows)
        self.file.flush()
        if self.output is None:
            return 0
        os.fsync(self.file.fileno())
        return self.file.tell()

    def finish(self, input: Path) -> None:
        """Make the partial the output (if that is still ours to replace), or flush stdout."""
        if self.output is None:
            sys.stdout.flush()
            return
        self.close()
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            # atomic_open checks (again) that the output is still ours to replace
            with atomic_open(self.output, "wb", encoding=None, inputs=[input]) as out:
                with pq.ParquetWriter(out, self.schema) as writer:
                    for part in sorted(self.partial.glob("*.parquet")):
                        writer.write_table(pq.read_table(part, schema=self.schema))
            shutil.rmtree(self.partial)
        else:
            replace_file(self.partial, self.output, "predictions", inputs=[input])  # if still ours to replace

    def close(self) -> None:
        """Close the partial file (never stdout)."""
        if self.file is not None and self.file is not sys.stdout and not self.file.closed:
            self.file.close()
