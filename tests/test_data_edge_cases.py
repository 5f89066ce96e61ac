"""Bad input that used to crash or mislead: non-finite labels, an unclosed quote, odd line breaks in `.txt` and
stdin, stdin in another encoding, blank lines and over-long texts dropped or cut without a word."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weibo_sentiment.data import load_labelled, read_texts
from weibo_sentiment.errors import UserError

from .conftest import ROOT, write

NOT_INTEGER = "is not an integer (labels are 0..N-1; for text labels pass --label-names auto)"
UNCLOSED = "a quote opens a field here but never closes, so every later line would be read into that field"


def train_error(cli, path) -> str:
    result = cli("train", "--data", path, "--base-model", "/nonexistent/base")
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.err
    return lines[0]


# ---- labels ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["nan", "inf", "-inf", "1e400", "NaN", "Infinity"])
def test_non_finite_labels_name_the_line(cli, tmp_path, label):
    path = write(tmp_path / "d.csv", f"label,review\n1,好[哈哈]\n{label},差[泪]\n0,坏\n")
    assert train_error(cli, path) == f"error: {path}: line 3: label {label!r} {NOT_INTEGER}"


# ---- quotes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_unclosed_quote_names_the_line_it_opens_on(cli, tmp_path, newline):
    rows = ["label,review", "1,好[哈哈]", '0,"差[泪]', "1,还行", "0,坏"]
    path = write(tmp_path / "d.csv", newline.join(rows) + newline)
    assert train_error(cli, path) == f"error: {path}: line 3: {UNCLOSED}"
    with pytest.raises(UserError, match=rf"^{path}: line 3: {UNCLOSED}$"):
        read_texts(path)


def test_unclosed_quote_after_a_quoted_newline_and_in_a_tsv(tmp_path):
    path = write(tmp_path / "d.csv", 'label,review\n1,"两行\n文本"\n0,"say ""hi"""\n1,ok\n0,"open\n1,x\n')
    with pytest.raises(UserError, match=rf"^{path}: line 6: {UNCLOSED}$"):
        load_labelled(path)
    tsv = write(tmp_path / "d.tsv", 'review\tlabel\n"好\t1\n差\t0\n')
    with pytest.raises(UserError, match=rf"^{tsv}: line 2: {UNCLOSED}$"):
        read_texts(tsv)


def test_unclosed_quote_in_a_long_field_is_named_not_the_field_size(tmp_path):
    # The csv module gives up at its field size limit (128 kB) long before the end of the file.
    path = write(tmp_path / "d.csv", 'label,review\n1,好\n0,"差\n' + "1,一行文字\n" * 40_000)
    with pytest.raises(UserError, match=rf"^{path}: line 3: {UNCLOSED}$"):
        load_labelled(path)


def test_quoted_newlines_and_quotes_inside_fields_still_load(tmp_path):
    path = write(tmp_path / "d.csv",
                 'label,review\r\n1,"两行\r\n文本"\r\n0,"say ""hi"""\r\n1,好"的\r\n0,"a"b\r\n1,"末行"\r\n')
    data = load_labelled(path, deduplicate=False)
    assert data.texts == ["两行\r\n文本", 'say "hi"', '好"的', "ab", "末行"]
    assert data.lines == [2, 4, 5, 6, 7]
    texts, _ = read_texts(path)
    assert texts == data.texts


# ---- .txt and stdin --------------------------------------------------------------------------------------
ODD = ["第一条\u2028还是第一条", "第二条\x85仍是第二条", "第三条\x0c也一样", "第四条\x0b\x1c\x1d\x1e结束"]


def test_txt_lines_end_at_newlines_only(tmp_path, caplog):
    path = write(tmp_path / "in.txt", "\n".join(ODD) + "\r\n")
    with caplog.at_level("WARNING"):
        assert read_texts(path)[0] == ODD
    assert "blank" not in caplog.text  # the final newline ends the last line; it starts no blank one


def test_blank_lines_are_counted(tmp_path, caplog):
    path = write(tmp_path / "in.txt", "\n第一条\n\n  \r\n第二条\n\u3000\n")
    with caplog.at_level("WARNING"):
        assert read_texts(path)[0] == ["第一条", "第二条"]
    assert f"{path}: skipped 4 blank line(s)" in caplog.messages


def test_blank_lines_of_a_table_are_counted(tmp_path, caplog):
    path = write(tmp_path / "in.csv", "review,adapter\n好,a\n\n , \n差,\n\n")
    with caplog.at_level("WARNING"):
        assert read_texts(path, extra_columns=("adapter",)) == (["好", "差"], {"adapter": ["a", ""]})
    assert f"{path}: skipped 3 blank line(s)" in caplog.messages


@pytest.mark.parametrize(("encoding", "lines"), [
    ("gbk", ["今天天气真好\x0c心情也好", "", "堵车两小时"]),
    ("utf-8", ["第一条\u2028还是第一条", "第二条\x85仍是第二条", "  ", "第三条"]),
])
def test_stdin_honours_encoding_and_newlines(monkeypatch, caplog, encoding, lines):
    raw = "\r\n".join(lines).encode(encoding)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    with caplog.at_level("WARNING"):
        texts, _ = read_texts("-", encoding=encoding)
    assert texts == [line for line in lines if line.strip()]
    assert "<stdin>: skipped 1 blank line(s)" in caplog.messages


def test_gbk_on_stdin_without_encoding_is_a_one_line_error(cli, monkeypatch, sample_adapter):
    raw = "今天天气真好\n堵车两小时\n".encode("gbk")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    result = cli("predict", "--adapter", sample_adapter, "--device", "cpu", "--input", "-")
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == (
        "error: <stdin>: line 1: not valid utf-8: byte 0xbd cannot be decoded; if it is a Chinese Windows file, "
        "pass --encoding gbk")


def test_stdin_gbk_blank_and_long_lines_end_to_end(sample_adapter):
    long = "很" * 200
    raw = "\n".join(["今天天气真好", "", "堵车两小时\x0c真烦", long, "短"]).encode("gbk")
    proc = subprocess.run([sys.executable, "-m", "weibo_sentiment", "predict", "--adapter", str(sample_adapter),
                           "--device", "cpu", "--input", "-", "--encoding", "gbk"],
                          input=raw, capture_output=True, timeout=300, cwd=ROOT)
    err = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["今天天气真好", "堵车两小时\x0c真烦", long, "短"]
    assert "<stdin>: skipped 1 blank line(s)" in err.splitlines()
    assert "1 text(s) longer than 128 tokens were truncated to 128" in err.splitlines()


# ---- truncation ------------------------------------------------------------------------------------------
def test_count_truncated_is_exact_at_the_boundary(sample_adapter):
    from weibo_sentiment.inference import Predictor, count_truncated

    tokenizer = Predictor.from_adapters([sample_adapter], device="cpu").tokenizer
    # One token per Chinese character, plus [CLS] and [SEP].
    assert len(tokenizer("好" * 126)["input_ids"]) == 128
    assert count_truncated(tokenizer, ["好" * 126, "好" * 10, "好" * 127, "好" * 500, "good " * 200], 128) == 3
    assert count_truncated(tokenizer, [], 128) == 0


def test_cli_text_reports_truncation(cli, sample_adapter, caplog):
    with caplog.at_level("WARNING"):
        result = cli("predict", "--adapter", sample_adapter, "--device", "cpu", "--text", "好" * 300,
                     "--text", "好" * 126, "--text", "差" * 127)
    assert result.code == 0, result.err
    assert "2 text(s) longer than 128 tokens were truncated to 128" in caplog.messages


# ---- property: any bytes either load or give one line ----------------------------------------------------
PIECES = ["label", "review", "adapter", ",", "\t", '"', '""', "\n", "\r\n", "\r", " ", "0", "1", "x", "好",
          "\ufeff", "\u2028", "\x85", "\x0c", "\x00", "[哈哈]"]
LABELS = ["0", "1", "2", "-1", " 1 ", "", "nan", "inf", "-inf", "1e400", "1e18", "1.5", "1_0", "１", "x", '"1', '"']
ENCODINGS = ["utf-8", "gbk", "utf-16", "latin-1"]
texts = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
headers = st.sampled_from(["label,review", "review,label", "label\treview", '"label","review"', 'label,"re\nview"',
                           "label,review,adapter", "text,label", ""])
rows = st.lists(st.tuples(st.sampled_from(LABELS), texts), max_size=8).map(
    lambda rs: "".join(f"{label},{text}\n" for label, text in rs))
tables = st.builds(lambda h, r: f"{h}\n{r}", headers, rows)
files = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda t, e: t.encode(e, errors="replace"), st.one_of(texts, tables), st.sampled_from(ENCODINGS)),
    tables.map(lambda t: t.encode("utf-8")),
    tables.map(lambda t: t.replace(",", "\t").encode("utf-8")),
)
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_line(error: UserError) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, message


@PROPERTY
@given(raw=files, suffix=st.sampled_from([".csv", ".tsv"]), text_labels=st.booleans())
def test_any_bytes_load_or_give_one_line(tmp_path_factory, raw, suffix, text_labels):
    path = tmp_path_factory.mktemp("prop") / f"d{suffix}"
    path.write_bytes(raw)
    try:
        data = load_labelled(path, text_labels=text_labels, min_classes=1)
    except UserError as e:
        one_line(e)
    else:
        assert len(data.texts) == len(data.labels) == len(data.lines)
        assert all(0 <= label < data.num_labels for label in data.labels)


@PROPERTY
@given(raw=files, suffix=st.sampled_from([".txt", ".csv", ".tsv"]))
def test_any_bytes_read_as_texts_or_give_one_line(tmp_path_factory, raw, suffix):
    path = tmp_path_factory.mktemp("prop") / f"in{suffix}"
    path.write_bytes(raw)
    try:
        texts, _ = read_texts(path, extra_columns=("adapter",))
    except UserError as e:
        one_line(e)
    else:
        assert texts and all(t == t.strip() and t for t in texts)
        if suffix == ".txt":
            assert all("\n" not in t for t in texts)
