"""Reading the rows a report counts, a block at a time with pyarrow: only the columns it needs (time, group, and
either the text or the prob_<label> columns of predict's output), from CSV/TSV, JSON lines or Parquet.

Times become bucket starts here (`bucket_starts`): pandas parses them (ISO 8601 first, any other form pandas
reads second), and a value neither reads is refused with its row number rather than dropped, since a dropped
row would silently change every share of its bucket.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError

BLOCK_BYTES = 1 << 22  # CSV and JSON blocks of 4 MiB: tens of thousands of rows
PARQUET_BATCH_ROWS = 65536
EVERY_PATTERN = re.compile(r"(\d+)(min|h|d)|1w")


def input_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".tab"):
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise UserError(f"{path}: unknown input type (use .csv, .tsv, .jsonl or .parquet)")


def check_input(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    input_kind(path)
    return path


def input_columns(path: Path, encoding: str = "utf-8") -> list[str]:
    """The column names of a table file (a JSON-lines file: the keys of its first row)."""
    kind = input_kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if kind == "jsonl":
            with path.open(encoding=encoding) as f:
                first = next((line for line in f if line.strip()), "")
            return list(json.loads(first)) if first else []
        return list(_csv_reader(path, encoding, None).schema.names)
    except UserError:
        raise
    except Exception as e:  # pyarrow's and json's errors for a damaged or foreign file
        raise UserError(f"{path}: cannot read its columns ({_short(e)})") from None


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _csv_reader(path: Path, encoding: str, columns: list[str] | None):
    import pyarrow as pa
    import pyarrow.csv as pc

    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    codec = "utf8" if encoding.lower().replace("-", "") in ("utf8", "utf8sig") else encoding
    convert = pc.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in columns or ()},
                                strings_can_be_null=True)
    return pc.open_csv(path, read_options=pc.ReadOptions(encoding=codec, block_size=BLOCK_BYTES),
                       parse_options=pc.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                       convert_options=convert)


def read_blocks(path: Path, columns: dict[str, str], encoding: str = "utf-8") -> Iterator[pd.DataFrame]:
    """`path`'s rows, a block at a time, as DataFrames of `columns` ({name: "string" or "float"}). The caller has
    checked that every column exists (input_columns)."""
    import pyarrow as pa

    types = {c: pa.float64() if t == "float" else pa.string() for c, t in columns.items()}
    kind = input_kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=list(columns))
        elif kind == "jsonl":
            import pyarrow.json as pj

            parse = pj.ParseOptions(explicit_schema=pa.schema(list(types.items())), unexpected_field_behavior="ignore")
            batches = pj.open_json(path, read_options=pj.ReadOptions(block_size=BLOCK_BYTES), parse_options=parse)
        else:
            batches = _csv_reader(path, encoding, list(columns))
        for batch in batches:
            frame = batch.to_pandas()
            for c, t in columns.items():
                if t == "float" and frame[c].dtype.kind not in "fiu":
                    frame[c] = pd.to_numeric(frame[c], errors="coerce")
            yield frame[list(columns)]
    except UserError:
        raise
    except Exception as e:  # pyarrow's errors: a malformed row, a column of mixed types, bad encoding
        raise UserError(f"{path}: cannot read it ({_short(e)})") from None


# ---- times -----------------------------------------------------------------------------------------------
def check_every(every: str) -> str:
    """`every` as given (Nmin, Nh, Nd or 1w), or a UserError."""
    if not isinstance(every, str) or not EVERY_PATTERN.fullmatch(every) or every.startswith("0"):
        raise UserError(f"--every {every!r}: use a span such as 1h, 6h, 1d, 1w (minutes: 30min)")
    return every


def bucket_frequency(every: str) -> str:
    """The pandas frequency of the bucket starts of `every` (weeks start on Monday)."""
    if every == "1w":
        return "W-MON"
    number, unit = EVERY_PATTERN.fullmatch(every).groups()
    return f"{number}{ {'min': 'min', 'h': 'h', 'd': 'D'}[unit]}"


def parse_times(values: pd.Series, where: str, first_row: int) -> pd.Series:
    """`values` as naive datetimes (a time with a UTC offset keeps its wall-clock time); numbers are Unix
    seconds. A missing or unreadable value is a UserError naming its row (1-based, data rows)."""
    try:
        if values.dtype.kind == "M":
            times = pd.Series(values)
        elif values.dtype.kind in "iuf":
            times = pd.to_datetime(values, unit="s", errors="coerce")
        else:
            text = values.astype("string").str.strip()
            times = wall_clock(pd.to_datetime(text, format="ISO8601", errors="coerce"))
            retry = times.isna() & text.notna() & (text != "")
            if retry.any():  # e.g. Weibo's "Mon Jan 01 10:00:00 +0800 2024"
                again = wall_clock(pd.to_datetime(text[retry], format="mixed", errors="coerce"))
                times = times.where(~retry, again)
        times = wall_clock(times)
    except (ValueError, TypeError, OverflowError) as e:
        raise UserError(f"{where}: times that pandas cannot read as one kind ({_short(e)}); give them in one form "
                        "and one UTC offset") from None
    missing = np.flatnonzero(times.isna().to_numpy())
    if len(missing):
        i = int(missing[0])
        value = values.iloc[i]
        blank = bool(pd.isna(value)) or not str(value).strip()
        what = "no time" if blank else f"the time {str(value)!r} is not one pandas can read"
        raise UserError(f"{where}: row {first_row + i + 1}: {what}")
    return times


def wall_clock(times: pd.Series) -> pd.Series:
    """Times with a UTC offset at their own wall-clock time (Beijing posts stay in Beijing days)."""
    return times.dt.tz_localize(None) if getattr(times.dt, "tz", None) is not None else times


def bucket_starts(times: pd.Series, every: str) -> pd.Series:
    if every == "1w":
        return times.dt.to_period("W-SUN").dt.start_time
    return times.dt.floor(bucket_frequency(every))
