"""Input validation: each bad input gives exit code 2 and one line naming the file, the line and the problem."""

from __future__ import annotations

import pytest

from weibo_sentiment.data import load_labelled, read_texts, stratified_split
from weibo_sentiment.emoticons import strip_emoticons
from weibo_sentiment.errors import UserError

from .conftest import run_subprocess, write

GOOD = "label,review\n1,今天天气真好[哈哈]\n0,堵车两小时[抓狂]\n1,好吃[馋嘴]\n0,又加班[泪]\n"


def train_error(cli, path, *extra):
    # The base model does not exist: validation must fail before any model work is attempted.
    result = cli("train", "--data", path, "--base-model", "/nonexistent/base", *extra)
    assert result.code == 2
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.err
    return lines[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("label,text\n1,好[哈哈]\n0,差[泪]\n",
         "line 1: no column 'review' (columns are label, text); pass --text-column to choose another"),
        ("label,review\n1,好[哈哈]\nx,差[泪]\n",
         "line 3: label 'x' is not an integer (labels are 0..N-1; for text labels pass --label-names auto)"),
        ("label,review\n1,好[哈哈]\n0,差[泪]\n5,什么[晕]\n",
         "line 4: label 5 is out of range: labels must be 0..2 (found 0, 1, 5); "
         "pass --label-names to declare the label set"),
        ("label,review\n1,好[哈哈]\n-1,差[泪]\n", "line 3: label -1 is out of range (expected 0..N-1)"),
        ("label,review\n1,好[哈哈]\n,差[泪]\n", "line 3: blank label"),
        ("label,review\n", "line 1: has a header but no data rows"),
        ("label,review\n1,\n0,  \n", "no rows left: all 2 texts are blank"),
        ("label,review\n1,好[哈哈]\n1,棒[赞]\n", "only one class ('positive') is present; training needs at least two"),
    ],
    ids=["missing-column", "non-integer", "out-of-range", "negative", "blank-label", "header-only", "all-blank",
         "one-class"],
)
def test_bad_training_file(cli, tmp_path, content, message):
    path = write(tmp_path / "data.csv", content)
    assert train_error(cli, path) == f"error: {path}: {message}"


def test_out_of_range_with_label_names(cli, tmp_path):
    path = write(tmp_path / "d.csv", "label,review\n1,好[哈哈]\n0,差[泪]\n2,一般\n")
    assert train_error(cli, path, "--label-names", "negative", "positive") == (
        f"error: {path}: line 4: label 2 is out of range (expected 0..1)")


def test_gbk_file_suggests_encoding(cli, tmp_path):
    path = write(tmp_path / "gbk.csv", "label,review\n1,今天天气真好\n0,堵车两小时\n", encoding="gbk")
    line = train_error(cli, path)
    assert line.startswith(f"error: {path}: line 2: not valid utf-8: byte 0xbd cannot be decoded")
    assert line.endswith("pass --encoding gbk")
    data = load_labelled(path, encoding="gbk")
    assert data.texts == ["今天天气真好", "堵车两小时"]


def test_missing_file(cli, tmp_path):
    assert train_error(cli, tmp_path / "nope.csv") == f"error: {tmp_path / 'nope.csv'}: no such file"


def test_directory(cli, tmp_path):
    assert train_error(cli, tmp_path) == f"error: {tmp_path}: is a directory, expected a CSV/TSV file"


def test_empty_file(cli, tmp_path):
    path = write(tmp_path / "empty.csv", "")
    assert train_error(cli, path) == f"error: {path}: the file is empty (expected a header line)"


def test_bad_validation_file_is_named(cli, tmp_path):
    train = write(tmp_path / "train.csv", GOOD)
    val = write(tmp_path / "val.csv", "label,review\n1,好\n3,差\n")
    assert train_error(cli, train, "--validation-data", val) == (
        f"error: {val}: line 3: label 3 is out of range (expected 0..1)")


def test_error_in_a_fresh_process_has_no_traceback(tmp_path):
    path = write(tmp_path / "data.csv", "label,review\n1,好[哈哈]\nx,差[泪]\n")
    proc = run_subprocess("train", "--data", path, "--base-model", "/nonexistent/base")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {path}: line 3: label 'x' is not an integer")
    assert "Traceback" not in proc.stderr


def test_line_numbers_count_multiline_fields(tmp_path):
    path = write(tmp_path / "d.csv", 'label,review\n1,"两行\n文本"\nx,差\n')
    with pytest.raises(UserError, match="line 4: label 'x'"):
        load_labelled(path)


def test_blank_texts_and_duplicates_are_dropped_and_counted(tmp_path, caplog):
    path = write(tmp_path / "d.csv", "\ufefflabel,review\n1,好[哈哈]\n0,  \n1,好[哈哈]\n0,差[泪]\n0,\ufeff坏\n")
    data = load_labelled(path)
    assert data.texts == ["好[哈哈]", "差[泪]", "坏"]
    assert data.labels == [1, 0, 0]
    assert (data.dropped_blank, data.dropped_duplicates, data.rows_read) == (1, 1, 5)
    assert data.label_names == ["negative", "positive"]
    assert "dropped 1 row(s) with a blank text" in caplog.text
    assert "dropped 1 exact duplicate row(s)" in caplog.text


def test_tsv_custom_columns_and_text_labels(tmp_path):
    path = write(tmp_path / "d.tsv", "cat\tlabel\treview\n书籍\t1\t好书\n水果\t0\t不甜\n书籍\t0\t无聊\n")
    data = load_labelled(path, label_column="cat", text_labels=True)
    assert data.label_names == ["书籍", "水果"]
    assert data.labels == [0, 1, 0]
    with pytest.raises(UserError, match="label '平板' is not one of 书籍, 水果"):
        load_labelled(write(tmp_path / "v.tsv", "cat\treview\n平板\t卡\n"), label_column="cat",
                      text_labels=True, label_names=["书籍", "水果"])


def test_stratified_split_keeps_class_balance(tmp_path):
    rows = "".join(f"{i % 2},文本{i}\n" for i in range(200))
    data = load_labelled(write(tmp_path / "d.csv", "label,review\n" + rows))
    (train_texts, train_labels), (val_texts, val_labels) = stratified_split(data, 0.1, seed=42)
    assert len(val_texts) == 20 and sum(val_labels) == 10
    assert set(train_texts).isdisjoint(val_texts)
    assert stratified_split(data, 0.1, seed=42)[1][0] == val_texts


def test_strip_emoticons():
    assert strip_emoticons("[哈哈]今天真好[good] [泪]") == "今天真好"
    assert strip_emoticons("[心][心]") == ""


def test_read_texts_formats(tmp_path):
    txt = write(tmp_path / "in.txt", "第一条\n\n第二条\n")
    assert read_texts(txt)[0] == ["第一条", "第二条"]
    csv_path = write(tmp_path / "in.csv", "review,adapter\n好,a\n差,b\n")
    texts, extras = read_texts(csv_path, extra_columns=("adapter",))
    assert texts == ["好", "差"] and extras == {"adapter": ["a", "b"]}
    with pytest.raises(UserError, match=r"in.csv: line 3: empty text"):
        read_texts(write(tmp_path / "in.csv", "review,id\n好,1\n,2\n"))
