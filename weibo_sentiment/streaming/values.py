"""How an input value (an id, a kept column) is written in each output format: unchanged, as far as the format
can say it.

- Text byte for byte (a CSV id, as every CSV id and routing field, without surrounding spaces); integers as
  integers; floating-point numbers as the shortest text that reads back the same; true/false as JSON's
  `true`/`false`, CSV's `True`/`False` (as pandas writes and reads them).
- JSON has no NaN or Infinity: in JSON lines, and in the JSON of a nested value, a non-finite number is null.
  (CSV writes them as `nan`/`inf`, as pandas reads them; Parquet keeps them.)
- Timestamps, dates and times: ISO 8601 text in CSV and JSON lines (`2024-01-01T12:00:00+08:00`), their own
  types in Parquet. Durations: ISO 8601 durations (`P0DT0H1M0S`). Decimals: their exact digits, as text.
- Nested values (lists, objects; Parquet structs and maps): JSON in JSON lines, JSON text in CSV; in Parquet
  their own types from a Parquet input, and a JSON column (Parquet's JSON type) from a JSON-lines input. A map
  with text keys is a JSON object, any other a list of [key, value] pairs.
- Binary values: text where the bytes are UTF-8, otherwise only Parquet can hold them.
- A null is null (an empty field in CSV, which cannot tell the two apart).

What no format can hold is refused where it is read (`streaming.source`): a lone surrogate, a column name given
twice. A value refused here names its row and column too (`convert_rows`).

A Parquet column has one type. Where the input says none (CSV: text; JSON lines: each value its own), the values
decide it, for the whole file: see `InferredTypes`.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import uuid
from collections.abc import Callable

Where = Callable[[int], str]  # row i of a chunk → where it is in the input ("FILE: line N: ")


class Unwritable(ValueError):
    """A value the output format cannot hold (the message says what it is and what to do instead)."""


def json_value(value):
    """`value` as a value `json.dumps` writes as it is: JSON's null, true/false, numbers, strings, lists, objects."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(type(item) is tuple and len(item) == 2 for item in value):  # a Parquet map
            keys = [k for k, _ in value]
            if all(type(k) is str for k in keys) and len(set(keys)) == len(keys):
                return {k: json_value(v) for k, v in value}
            return [[json_value(k), json_value(v)] for k, v in value]
        return [json_value(v) for v in value]
    if isinstance(value, float):  # float subclasses
        return json_value(float(value))
    if isinstance(value, int):
        return int(value)
    return scalar_text(value)


def json_text(value) -> str:
    """`value` (any JSON value) as JSON text, as JSON lines write it."""
    return json.dumps(json_value(value), ensure_ascii=False)


def csv_field(value):
    """`value` as a CSV field (the csv module writes numbers and booleans as Python prints them)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool:
        return value
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json_text(value)
    return scalar_text(value)


def scalar_text(value) -> str:
    """A value that JSON and CSV have no type for, as text: ISO 8601 for times, exact digits for decimals."""
    if isinstance(value, datetime.date | datetime.time):  # (datetime and pandas' Timestamp are dates)
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        import pandas as pd

        return pd.Timedelta(value).isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise Unwritable("a binary value that is not UTF-8 text: only a Parquet output can hold it") from None
    raise Unwritable(f"a value of type {type(value).__name__} that this output format cannot hold; "
                     "write Parquet output")


def convert_rows(rows: list[dict], columns: list[str], convert: Callable, where: Where) -> None:
    """`convert` each row's value in `columns` (in place); a value that cannot be written is an error naming its
    row and column."""
    from ..errors import UserError

    for i, row in enumerate(rows):
        for column in columns:
            try:
                row[column] = convert(row.get(column))
            except Unwritable as e:
                raise UserError(f"{where(i)}column {column!r}: {e}") from None
            except RecursionError:
                raise UserError(f"{where(i)}column {column!r}: a value nested too deeply to write") from None


# ---- Parquet: one type per column ------------------------------------------------------------------------------
# The kinds of value CSV and JSON lines hold, and their Parquet types.
_NAMES = {"bool": "true/false", "int": "an integer", "float": "a number with a fraction", "string": "a string",
          "json": "a list or object"}
EXACT_INT = 2**53  # integers up to this size are exact as 64-bit floats


def _kind(value) -> str | None:
    kind = type(value)
    if value is None:
        return None
    if kind is bool:
        return "bool"
    if kind is int:
        return "int"
    if kind is float:
        return "float"
    if kind is str:
        return "string"
    return "json"


def arrow_type(kind: str | None):
    import pyarrow as pa

    return {None: pa.null(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string(),
            "json": pa.json_()}[kind]


def kind_of_type(arrow) -> str | None:
    """The kind whose Parquet type `arrow` is (a chunk file written earlier)."""
    for kind in (None, "bool", "int", "float", "string", "json"):
        if arrow == arrow_type(kind):
            return kind
    raise ValueError(f"no kind has the type {arrow}")


class InferredTypes:
    """The Parquet types of input columns that have none of their own, decided by their values.

    A column's type is its values' kind: text, integer, float, true/false, or JSON (lists and objects, written
    as Parquet's JSON type, which holds any JSON value exactly). Nulls fit every type. The type holds for the
    whole file, whatever the chunk size: chunks written before a wider type was known are converted when the
    output is assembled. The one widening is integer → float, as pandas and pyarrow read JSON: it is exact only
    while every integer is within ±2**53, so past that it is refused. Any other mix (an integer, then a
    string) is refused, naming the row and column: a Parquet column has one type, and turning a number into
    text (or back) would change the value. CSV and JSON lines outputs write such columns as they are.
    """

    def __init__(self, columns: list[str]):
        self.kinds: dict[str, str | None] = dict.fromkeys(columns)
        self.largest_int: dict[str, int] = dict.fromkeys(columns, 0)  # |integer| seen, for the widening to float

    def restore(self, schema, largest: dict[str, int]) -> None:
        """Take up where a resumed run's chunk files leave off: `schema`, the last one's (each chunk is written
        with the types known by then, which only widen), and the largest |integer| of each integer column."""
        for column in self.kinds:
            self.kinds[column] = kind_of_type(schema.field(column).type)
        self.largest_int.update(largest)

    def convert(self, column: str, values: list, where: Where) -> list:
        """`values` (a chunk's, in order) as the column's type, which they may widen; a value that fits
        no type the column can have is an error naming its row and column."""
        from ..errors import UserError

        kind, largest = self.kinds[column], self.largest_int[column]
        for i, value in enumerate(values):
            found = _kind(value)
            if found == "int":
                if not -(2**63) <= value < 2**63:
                    raise UserError(f"{where(i)}column {column!r}: the integer {value} does not fit a Parquet "
                                    "64-bit integer; write CSV or JSON lines output, or quote it in the input")
                largest = max(largest, abs(value))
            if found is None or found == kind:
                continue
            if kind is None:
                kind = found
            elif {found, kind} == {"int", "float"}:
                kind = "float"
            else:
                raise UserError(f"{where(i)}column {column!r}: {_NAMES[found]} where earlier rows have "
                                f"{_NAMES[kind]}; a Parquet column holds one type, so write CSV or JSON lines "
                                "output, or give the column one type in the input")
            if kind == "float" and largest > EXACT_INT:
                raise UserError(f"{where(i)}column {column!r}: an integer larger than 2**53 in a column that "
                                "also holds fractions cannot be written exactly as a Parquet float; write CSV or "
                                "JSON lines output, or quote the numbers in the input")
        self.kinds[column], self.largest_int[column] = kind, largest
        if kind == "json":
            rows = [{column: v} for v in values]
            convert_rows(rows, [column], lambda v: None if v is None else json_text(v), where)
            return [row[column] for row in rows]
        if kind == "float":
            return [float(v) if type(v) is int else v for v in values]
        return values
