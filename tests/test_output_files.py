"""Result files (predict --output, evaluate --json): an existing file is replaced only when it is our own output
of the same kind and not the command's input; anything else is refused with one line, byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weibo_sentiment.errors import UserError
from weibo_sentiment.output import check_output_file, write_json, write_table

from .conftest import write

POSTS = "review\n今天心情很好[哈哈]\n服务太差了[怒]\n"
LABELLED = "label,review\n1,今天心情很好[哈哈]\n0,服务太差了[怒]\n"


def test_predict_refuses_to_overwrite_a_users_file(tmp_path, cli, sample_adapter):
    posts = write(tmp_path / "posts.csv", POSTS)
    notes = write(tmp_path / "notes.csv", "my,own\nnotes,here\n")
    r = cli("predict", "--adapter", sample_adapter, "--input", posts, "--output", notes)
    assert r.code == 2
    assert r.err.strip() == (f"error: {notes}: already exists and is not a predictions file written by "
                             "weibo-sentiment; choose another output file, or remove it yourself")
    assert notes.read_text() == "my,own\nnotes,here\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv", "posts.csv"]  # no temporary file left


def test_predict_refuses_to_overwrite_its_own_input(tmp_path, cli, sample_adapter):
    # A predictions file fed back in is ours in form, but it is the input: it stays as it is.
    first = tmp_path / "first.csv"
    assert cli("predict", "--adapter", sample_adapter, "--input", write(tmp_path / "p.csv", POSTS),
               "--output", first).code == 0
    before = first.read_bytes()
    r = cli("predict", "--adapter", sample_adapter, "--input", first, "--text-column", "text", "--output", first)
    assert r.code == 2
    assert r.err.strip() == (f"error: {first}: is this command's input and will not be overwritten; "
                             "choose another --output")
    assert first.read_bytes() == before


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_predict_replaces_its_own_earlier_output(tmp_path, cli, sample_adapter, suffix):
    posts = write(tmp_path / "posts.csv", POSTS)
    out = tmp_path / f"predictions.{suffix}"
    assert cli("predict", "--adapter", sample_adapter, "--input", posts, "--output", out).code == 0
    first = out.read_bytes()
    write(posts, POSTS + "第三条微博\n")
    assert cli("predict", "--adapter", sample_adapter, "--input", posts, "--output", out).code == 0
    assert out.read_bytes() != first and out.read_bytes().startswith(first[:20])


def test_evaluate_json_refuses_a_users_file_and_replaces_its_own(tmp_path, cli, sample_adapter):
    data = write(tmp_path / "labelled.csv", LABELLED)
    settings = write(tmp_path / "settings.json", '{"theme": "dark"}\n')
    r = cli("evaluate", "--adapter", sample_adapter, "--data", data, "--json", settings)
    assert r.code == 2
    assert r.err.strip() == (f"error: {settings}: already exists and is not a metrics file written by "
                             "weibo-sentiment; choose another output file, or remove it yourself")
    assert settings.read_text() == '{"theme": "dark"}\n'
    metrics = tmp_path / "metrics.json"
    for _ in range(2):  # the second run replaces the first run's report
        assert cli("evaluate", "--adapter", sample_adapter, "--data", data, "--json", metrics).code == 0
    assert json.loads(metrics.read_text())["n"] == 2


def test_library_writers_check_kind_and_inputs(tmp_path):
    table = tmp_path / "t.jsonl"
    write_table([{"text": "x", "label": 1, "label_name": "positive", "confidence": 0.9}], table)
    write_table([{"text": "y", "label": 0, "label_name": "negative", "confidence": 0.8}], table)  # ours: replaced
    assert '"y"' in table.read_text()
    with pytest.raises(UserError, match="is not a metrics file"):
        write_json({"accuracy": 1.0}, table)  # a predictions file is not a metrics report
    assert '"y"' in table.read_text()
    with pytest.raises(UserError, match="is this command's input"):
        check_output_file(table, "predictions", inputs=[table])
    with pytest.raises(UserError, match="is a directory"):
        check_output_file(tmp_path, "predictions")
    empty = tmp_path / "empty.csv"
    empty.touch()
    assert check_output_file(empty, "predictions") == empty  # nothing in it to lose
    binary = tmp_path / "photo.csv"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(UserError, match="is not a predictions file"):
        check_output_file(binary, "predictions")
    assert Path(binary).read_bytes() == bytes(range(256))


def test_result_files_get_the_users_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        out = tmp_path / "p.jsonl"
        write_table([{"text": "x", "label": 1, "label_name": "positive", "confidence": 0.9}], out)
        assert out.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    finally:
        os.umask(umask)
