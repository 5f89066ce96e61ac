"""Types survive the trip (issue 17): ids and kept columns of `predict --input FILE` keep their value in every
output format, or the command exits 2 with one line naming the row and column; and the input quirks that used
to crash or mislead (lone surrogates, duplicate column names, bytes-to-bytes codecs, UTF-16's 0x0a bytes)."""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from weibo_sentiment.errors import UserError
from weibo_sentiment.streaming.record import partial_paths

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FORMATS = ("csv", "jsonl", "parquet")
PREDICTED = ["text", "label", "label_name", "confidence", "prob_negative", "prob_positive"]


@pytest.fixture(scope="module")
def predictor(sample_adapter):
    from weibo_sentiment.inference import load_predictor

    return load_predictor([str(sample_adapter)], device="cpu")


@pytest.fixture
def predict(cli, monkeypatch, predictor, sample_adapter):
    """`weibo-sentiment predict --input IN --output OUT ARGS` in this process, the adapter loaded once."""
    import weibo_sentiment.inference as inference

    monkeypatch.setattr(inference, "load_predictor", lambda *args, **kwargs: predictor)

    def run(source: Path, out: Path, *args: str):
        return cli("predict", "--adapter", sample_adapter, "--input", source, "--output", out, *args)

    return run


def read_output(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    def no_constants(name):  # NaN, Infinity: not JSON
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    lines = path.read_text(encoding="utf-8").split("\n")  # (U+2028 inside a value is no line break)
    return [json.loads(line, parse_constant=no_constants) for line in lines if line]


def one_error_line(result, source: Path) -> str:
    assert result.code == 2, result.err
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"error: {source}: "), lines[0]
    return lines[0]


def nothing_left(out: Path) -> None:
    assert not out.exists() and not any(p.exists() for p in partial_paths(out)), out


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- the findings, one test each --------------------------------------------------------------------------------
def test_integer_nested_and_numeric_columns_write_to_parquet(tmp_path, predict):
    source = jsonl(tmp_path / "in.jsonl", [
        {"id": 7, "review": "好", "n": {"a": [1, 2]}, "f": 1.5, "when": None},
        {"id": 2**40, "review": "差", "n": None, "f": 2, "when": "2024-01-01T12:00:00"},
        {"id": 9, "review": "上", "n": [1, "x"], "f": None, "when": "2024-01-02"},
    ])
    out = tmp_path / "out.parquet"
    r = predict(source, out, "--id-column", "id", "--keep-columns", "--chunk-size", "1")
    assert r.code == 0, r.err
    table = pq.read_table(out)
    assert table.schema.field("id").type == pa.int64() and table.column("id").to_pylist() == [7, 2**40, 9]
    assert table.schema.field("f").type == pa.float64() and table.column("f").to_pylist() == [1.5, 2.0, None]
    assert table.schema.field("n").type == pa.json_()  # Parquet's JSON type: any JSON value, exactly
    assert [None if v is None else json.loads(v) for v in table.column("n").to_pylist()] == \
        [{"a": [1, 2]}, None, [1, "x"]]
    assert table.column("when").to_pylist() == [None, "2024-01-01T12:00:00", "2024-01-02"]
    ids = tmp_path / "ids.csv"
    ids.write_text("id,review,zip\n00123,好,007\n 42 ,差,\n", encoding="utf-8")
    r = predict(ids, out, "--id-column", "id", "--keep-columns")
    assert r.code == 0, r.err
    assert pq.read_table(out).select(["id", "zip"]).to_pylist() == [{"id": "00123", "zip": "007"},
                                                                      {"id": "42", "zip": ""}]


def test_parquet_timestamps_are_iso_8601_in_csv_and_jsonl_and_timestamps_in_parquet(tmp_path, predict):
    when = [datetime.datetime(2024, 1, 1, 12, 30, 1, 250000), None]
    zoned = [datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=8))), None]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": pa.array(when, pa.timestamp("us")), "review": ["好", "差"],
                             "zoned": pa.array(zoned, pa.timestamp("us", "+08:00")),
                             "day": pa.array([datetime.date(2024, 2, 29), None])}), source)
    expected = [{"id": "2024-01-01T12:30:01.250000", "zoned": "2024-05-06T07:08:09+08:00", "day": "2024-02-29"},
                {"id": None, "zoned": None, "day": None}]
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"out.{fmt}"
        r = predict(source, out, "--id-column", "id", "--keep-columns", "--chunk-size", "1")
        assert r.code == 0, r.err
        rows = [{c: row[c] for c in ("id", "zoned", "day")} for row in read_output(out)]
        assert rows == (expected if fmt == "jsonl" else
                        [{c: v or "" for c, v in row.items()} for row in expected])
        assert not any(p.exists() for p in partial_paths(out))  # (the crash left a .partial that --resume hit)
    out = tmp_path / "out.parquet"
    assert predict(source, out, "--id-column", "id", "--keep-columns").code == 0
    table = pq.read_table(out)
    assert table.schema.field("id").type == pa.timestamp("us") and table.column("id").to_pylist() == when
    assert table.column("zoned").to_pylist() == zoned and table.schema.field("day").type == pa.date32()


def test_non_finite_numbers_are_null_in_json_outputs(tmp_path, predict):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1e400, "review": "好", "x": NaN, "n": {"a": [-Infinity, 1.5]}}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert predict(source, out, "--id-column", "id", "--keep-columns").code == 0, out
    [row] = read_output(out)  # (read_output refuses NaN and Infinity)
    assert (row["id"], row["x"], row["n"]) == (None, None, {"a": [None, 1.5]})
    out = tmp_path / "out.csv"
    assert predict(source, out, "--id-column", "id", "--keep-columns").code == 0
    [row] = read_output(out)
    assert (row["id"], row["x"], json.loads(row["n"])) == ("inf", "nan", {"a": [None, 1.5]})
    out = tmp_path / "out.parquet"
    assert predict(source, out, "--id-column", "id", "--keep-columns").code == 0
    [row] = read_output(out)  # Parquet holds them
    assert row["id"] == math.inf and math.isnan(row["x"]) and json.loads(row["n"]) == {"a": [None, 1.5]}


@pytest.mark.parametrize("line, column", [('{"id": "a\\ud800", "review": "好"}', "id"),
                                          ('{"id": 1, "review": "好\\udfff"}', "review"),
                                          ('{"id": 1, "review": "好", "k": {"\\ud83d": 1}}', "k")])
def test_lone_surrogate_is_refused_naming_row_and_column(tmp_path, predict, line, column):
    # A lone surrogate is half of a UTF-16 pair, not a character: no UTF-8 output (CSV, JSONL, Parquet) can
    # hold it, and writing it escaped would give a JSONL output the other two cannot match. So it is refused.
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 0, "review": "先", "k": null}\n' + line + "\n", encoding="utf-8")
    for fmt in FORMATS:
        out = tmp_path / f"out.{fmt}"
        error = one_error_line(predict(source, out, "--id-column", "id", "--keep-columns"), source)
        assert f": line 2: column {column!r} holds a lone surrogate" in error
        nothing_left(out)


def test_duplicate_column_names_are_refused_not_silently_merged(tmp_path, predict):
    # pandas renames a repeated CSV column (x, x.1) but refuses to write such a frame to Parquet; JSON parsers
    # keep the last of a repeated key. Neither is what the file meant, so the column is named and refused.
    table = tmp_path / "in.csv"
    table.write_text("id,review,x,x\n1,好,a,b\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    error = one_error_line(predict(table, out, "--keep-columns"), table)
    assert error.endswith(f"{table}: line 1: 2 columns are named 'x'; rename them so that each value has a "
                          "column of its own (a table's column names must differ)")
    assert predict(table, tmp_path / "unkept.jsonl").code == 0  # not kept: no value is lost
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"id": 1, "review": "好", "x": "a", "x": "b"}\n', encoding="utf-8")
    error = one_error_line(predict(lines, out, "--keep-columns"), lines)
    assert f"{lines}: line 1: the key 'x' appears twice in this object" in error
    nested = tmp_path / "nested.jsonl"
    nested.write_text('{"id": 1, "review": "好", "x": {"a": 1, "a": 2}}\n', encoding="utf-8")
    error = one_error_line(predict(nested, out, "--keep-columns"), nested)
    assert f"{nested}: line 1: column 'x': the key 'a' appears twice in a nested object" in error
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["好"]), pa.array([1]), pa.array([2])],
                                        names=["review", "x", "x"]), parquet)
    error = one_error_line(predict(parquet, out, "--keep-columns"), parquet)
    assert error.endswith(f"{parquet}: 2 columns are named 'x'; rename them so that each value has a column of "
                          "its own (a table's column names must differ)")
    nothing_left(out)


@pytest.mark.parametrize("encoding", ["hex", "rot13", "base64", "zlib", "bz2", "undefined"])
def test_bytes_codecs_are_not_text_encodings(tmp_path, predict, encoding):
    from weibo_sentiment.tables import codec

    source = tmp_path / "in.csv"
    source.write_text("id,review\n1,好\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    r = predict(source, out, "--encoding", encoding)
    assert r.code == 2 and "Traceback" not in r.err
    assert f"error: unknown encoding {encoding!r}" in r.err
    with pytest.raises(UserError, match=f"^unknown encoding {encoding!r}"):
        codec(encoding)
    nothing_left(out)


def test_json_nested_too_deeply_and_codec_failures_are_one_line(tmp_path, predict):
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"review": "好"}\n{"review": "差", "k": ' + "[" * 5000 + "]" * 5000 + "}\n", encoding="utf-8")
    error = one_error_line(predict(deep, tmp_path / "out.jsonl"), deep)
    assert error.endswith(f"{deep}: line 2: not valid JSON here (nested too deeply to read)")
    labels = tmp_path / "in.txt"  # the idna codec fails without saying where, in a message with a line break
    labels.write_bytes(b"xn--zz\n")
    error = one_error_line(predict(labels, tmp_path / "out.jsonl", "--encoding", "idna"), labels)
    assert error.startswith(f"error: {labels}: line 1: not valid idna (")
    nothing_left(tmp_path / "out.jsonl")


def test_utf16_byte_0x0a_inside_a_character_is_no_line_break(tmp_path):
    from weibo_sentiment.data import read_texts
    from weibo_sentiment.streaming.source import Source

    # 上 is U+4E0A: in UTF-16-LE its first byte is 0x0a, the byte of "\n" in ASCII
    text = tmp_path / "in.txt"
    text.write_bytes("上\n上好\n".encode("utf-16-le"))
    source = Source(text, encoding="utf-16-le")
    assert [(row.line, row.text) for row in source.rows()] == [(1, "上"), (2, "上好")] and source.blank == 0
    bad = tmp_path / "bad.csv"
    bad.write_bytes("review\n上\n上\n".encode("utf-16-le") + b"\x00\xd8" + "\n".encode("utf-16-le"))
    expected = rf"^{bad}: line 4: not valid utf-16-le"
    with pytest.raises(UserError, match=expected):
        list(Source(bad, encoding="utf-16-le").rows())
    with pytest.raises(UserError, match=expected):
        read_texts(bad, encoding="utf-16-le")


def test_parquet_column_type_is_the_same_for_the_whole_file(tmp_path, predict):
    # The values decide a column's type for the whole file, whatever --chunk-size: nulls fit every type, and
    # integers widen to floats (exact up to 2**53); any other mix is refused at the row that brings it.
    source = jsonl(tmp_path / "in.jsonl", [{"review": "好", "k": None}, {"review": "差", "k": 1},
                                           {"review": "上", "k": 2.5}])
    out = tmp_path / "out.parquet"
    for size in ("1", "2", "10"):
        assert predict(source, out, "--keep-columns", "--chunk-size", size).code == 0
        table = pq.read_table(out)
        assert table.schema.field("k").type == pa.float64() and table.column("k").to_pylist() == [None, 1.0, 2.5]
    for values, line, problem in [((1, "1"), 2, "a string where earlier rows have an integer"),
                                  ((True, 1), 2, "an integer where earlier rows have true/false"),
                                  ((2**53 + 1, 0.5), 2, "an integer larger than 2**53 in a column that also "
                                                        "holds fractions"),
                                  ((None, 2**64), 2, "the integer 18446744073709551616 does not fit")]:
        mixed = jsonl(tmp_path / "mixed.jsonl", [{"review": "好", "k": v} for v in values])
        refused = tmp_path / "refused.parquet"
        error = one_error_line(predict(mixed, refused, "--keep-columns", "--chunk-size", "1"), mixed)
        assert f"{mixed}: line {line}: column 'k': {problem}" in error
        nothing_left(refused)
        r = predict(mixed, tmp_path / "out.jsonl", "--keep-columns")  # JSON lines hold each value as it is
        assert r.code == 0 and [row["k"] for row in read_output(tmp_path / "out.jsonl")] == list(values)


def test_parquet_values_python_cannot_hold_name_row_and_column(tmp_path, predict):
    source = tmp_path / "in.parquet"
    bad = pa.array([b"ok", b"\xff\xfe"], pa.binary()).view(pa.string())  # nothing checks UTF-8 on writing
    pq.write_table(pa.table({"review": ["好", "差"], "k": bad}), source)
    out = tmp_path / "out.jsonl"
    error = one_error_line(predict(source, out, "--keep-columns"), source)
    assert error.endswith(f"{source}: row 2: column 'k': not valid UTF-8 text (byte 0xff)")
    nothing_left(out)
    # a time of day in nanoseconds: Python's times stop at microseconds, and would drop the rest unsaid
    pq.write_table(pa.table({"review": ["好", "差"], "t": pa.array([1000, 1001], pa.time64("ns"))}), source)
    error = one_error_line(predict(source, out, "--keep-columns"), source)
    assert f"{source}: row 2: column 't': a time of day with nanoseconds" in error
    binary = tmp_path / "binary.parquet"  # bytes: text where they are UTF-8, else only Parquet holds them
    pq.write_table(pa.table({"review": ["好", "差"], "b": pa.array([b"ok", b"\xff"])}), binary)
    error = one_error_line(predict(binary, out, "--keep-columns"), binary)
    assert error.endswith(f"{binary}: row 2: column 'b': a binary value that is not UTF-8 text: only a Parquet "
                          "output can hold it")
    assert predict(binary, tmp_path / "out.parquet", "--keep-columns").code == 0
    assert pq.read_table(tmp_path / "out.parquet").column("b").to_pylist() == [b"ok", b"\xff"]


# ---- property: any table, any input and output format --------------------------------------------------------
CHARS = "好差评论天气微博上下一二😀🎉abcXYZ"
texts = st.text(alphabet=CHARS, min_size=1, max_size=5)
TIMEZONES = [None, datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=8))]
scalar = st.one_of(texts, st.integers(-1000, 1000), st.floats(), st.booleans())
nested = st.recursive(st.none() | scalar, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from("ab上"), inner, max_size=2), max_leaves=4)


def timestamps(tz):
    return st.datetimes(min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2100, 1, 1),
                        timezones=st.just(tz) if tz else st.none())


KINDS = {
    "zeros": st.from_regex(r"0[0-9]{1,6}", fullmatch=True),  # text ids with leading zeros
    "int": st.one_of(st.integers(-(2**31), 2**31), st.integers(-(2**70), 2**70)),
    "float": st.floats(),
    "blank": st.sampled_from(["", " ", "  "]),
    "text": texts,
    "surrogate": st.sampled_from(["\ud800", "好\udfff"]),
    "timestamp": st.sampled_from(TIMEZONES).flatmap(timestamps),
    "nested": nested,
    "mixed": st.one_of(scalar, st.sampled_from(["", "007"])),
}


@st.composite
def columns(draw, n: int) -> list:
    """A column of `n` values of one kind (one time zone for timestamps), a few of them null."""
    kind = draw(st.sampled_from(sorted(KINDS)))
    values = KINDS[kind] if kind != "timestamp" else timestamps(draw(st.sampled_from(TIMEZONES)))
    column = draw(st.lists(values, min_size=n, max_size=n))
    for i in draw(st.sets(st.integers(0, n - 1), max_size=2)):
        column[i] = None
    return column


@st.composite
def tables(draw) -> tuple[list[str], list[list]]:
    """Column names (id, review, up to two kept; now and then a name twice) and rows."""
    n = draw(st.integers(1, 5))
    kept = draw(st.lists(st.sampled_from(["k", "note", "label"]), max_size=2, unique=True))
    if kept and draw(st.integers(0, 9)) == 0:
        kept.append(draw(st.sampled_from([kept[0], "id"])))
    names = ["id", "review", *kept]
    data = [draw(columns(n)) if name != "review" else draw(st.lists(texts, min_size=n, max_size=n))
            for name in names]
    return names, [list(row) for row in zip(*data)]


def as_text(value) -> str:
    """How the test writes a value into CSV (and into a Parquet string column that could hold nothing else)."""
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def json_of(value):
    return value.isoformat() if isinstance(value, datetime.datetime) else value


def has_surrogate(value) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list):
        return any(map(has_surrogate, value))
    if isinstance(value, dict):
        return any(map(has_surrogate, [*value, *value.values()]))
    return False


def write_input(path: Path, names: list[str], rows: list[list]) -> bool:
    """The table in `path`'s format; False when the format cannot hold it (Parquet: a lone surrogate)."""
    if path.suffix == ".csv":
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerows([names, *([as_text(v) for v in row] for row in rows)])
        path.write_bytes(buffer.getvalue().encode("utf-8", "surrogatepass"))  # (a surrogate: bytes not UTF-8)
    elif path.suffix == ".jsonl":  # written by hand: a repeated name is a repeated key
        path.write_text("".join("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(json_of(v))}"
                                               for k, v in zip(names, row)) + "}\n" for row in rows))
    elif has_surrogate(rows):
        return False
    else:
        arrays = []
        for i in range(len(names)):
            values = [row[i] for row in rows]
            try:
                array = pa.array(values)
                pq.write_table(pa.table({"x": array}), io.BytesIO())  # (a struct with no field cannot be)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):  # no one Parquet type
                array = pa.array([None if v is None else as_text(v) for v in values], pa.string())
            arrays.append(array)
        pq.write_table(pa.Table.from_arrays(arrays, names=names), path)
    return True


def read_input(path: Path) -> tuple[list[str], list[dict], str | None]:
    """The test's own reading of the input (names, rows, why the command must refuse it or None)."""
    if path.suffix == ".csv":
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            return [], [], "not UTF-8"
        names, *rows = list(csv.reader(io.StringIO(text, newline="")))
        refuse = "repeated name" if len(set(names)) < len(names) else None
        return names, [{**dict(zip(names, row)), "id": row[0].strip()} for row in rows], refuse
    if path.suffix == ".jsonl":
        repeated = []

        def pairs(items):
            repeated.extend([len({k for k, _ in items}) < len(items)])
            return dict(items)

        rows = [json.loads(line, object_pairs_hook=pairs) for line in path.read_text().splitlines()]
        why = "repeated name" if any(repeated) else "lone surrogate" if has_surrogate(rows) else None
        return list(rows[0]), rows, why
    names = pq.read_schema(path).names
    if len(set(names)) < len(names):
        return names, [], "repeated name"
    return names, pq.read_table(path).to_pylist(), None


def kind(value) -> str | None:
    return None if value is None else {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value),
                                                                                               "json")


def parquet_refusal(values: list) -> str | None:
    """Why a JSONL column cannot be one Parquet column (the documented rule), or None."""
    kinds = {kind(v) for v in values} - {None}
    ints = [v for v in values if kind(v) == "int"]
    if any(not -(2**63) <= v < 2**63 for v in ints):
        return "integer over 64 bits"
    if kinds == {"int", "float"}:
        return "integer beyond 2**53 among floats" if any(abs(v) > 2**53 for v in ints) else None
    return "types mixed" if len(kinds) > 1 else None


def as_json(value):
    """What JSON lines hold for an input value: non-finite numbers null, timestamps ISO 8601."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


def as_csv(value) -> str:
    if isinstance(value, list | dict):
        return json.dumps(as_json(value), ensure_ascii=False)
    return as_text(value)


def same(a, b) -> bool:
    """Equal, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def expected_value(value, source_fmt: str, out_fmt: str, column_kind: str | None):
    if out_fmt == "jsonl":
        return as_json(value)
    if out_fmt == "csv":
        return as_csv(value)
    if source_fmt == "jsonl" and column_kind == "json":  # a JSON column: JSON text
        return None if value is None else json.dumps(as_json(value), ensure_ascii=False)
    if source_fmt == "jsonl" and column_kind == "float" and kind(value) == "int":
        return float(value)
    return value


UTC8 = datetime.timezone(datetime.timedelta(hours=8))
EXAMPLES = [  # each kind at least once, whatever the generated ones hold
    (["id", "review", "k", "note"], [[7, "好😀", 1.5, {"a": [1, None]}], [2**40, "差", math.nan, [True, "上"]],
                                     [None, "上下", math.inf, None]]),
    (["id", "review", "label", "k"], [["00123", "一", datetime.datetime(2024, 1, 1, 8, tzinfo=UTC8), True],
                                      ["", "二", None, False], [" 042 ", "天气", datetime.datetime(1999, 12, 31,
                                                                                         23, 59, 59, 5, UTC8), None]]),
    (["id", "review", "k"], [[1, "好", 1], [2, "差", None], [3, "上", 2.5], [4, "下", -(2**53)]]),
    (["id", "review", "k"], [[2**64, "好", "x"], [1.25, "差", 3]]),
]


TYPES = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@TYPES
@given(table=tables())
@example(table=EXAMPLES[0])
@example(table=EXAMPLES[1])
@example(table=EXAMPLES[2])
@example(table=EXAMPLES[3])
def test_any_table_keeps_its_ids_and_columns_in_every_format(tmp_path_factory, predict, table):
    names, rows = table
    folder = tmp_path_factory.mktemp("types")
    for source_fmt in FORMATS:
        source = folder / f"in.{source_fmt}"
        if not write_input(source, names, rows):
            continue
        header, expected_rows, refuse = read_input(source)
        for out_fmt in FORMATS:
            out = folder / f"out-{source_fmt}.{out_fmt}"
            why = refuse
            kinds = {}
            if why is None and source_fmt == "jsonl":
                kinds = {c: ({kind(r[c]) for r in expected_rows} - {None} or {None}) for c in header}
                kinds = {c: "float" if k == {"int", "float"} else next(iter(k)) for c, k in kinds.items()}
                if out_fmt == "parquet":
                    why = next((w for c in header if (w := parquet_refusal([r[c] for r in expected_rows]))), None)
            r = predict(source, out, "--id-column", "id", "--keep-columns", "--chunk-size", "2")
            if why is not None:
                one_error_line(r, source)
                nothing_left(out)
                continue
            assert r.code == 0, (source_fmt, out_fmt, r.err)
            got = read_output(out)
            assert [g["text"] for g in got] == [e["review"] for e in expected_rows]  # every row, in order
            for column in header:
                if column == "review":
                    continue
                name = "input_label" if column == "label" else column
                for g, e in zip(got, expected_rows):
                    want = expected_value(e[column], source_fmt, out_fmt, kinds.get(column))
                    if out_fmt == "parquet" and source_fmt == "jsonl" and kinds.get(column) == "json":
                        assert (g[name] is None and want is None) or same(json.loads(g[name]), json.loads(want))
                    else:
                        assert same(g[name], want), (source_fmt, out_fmt, column, g[name], want)
