"""Streaming prediction (`predict --input FILE --output FILE`, weibo_sentiment.streaming): every input and output
format, chunk boundaries, bad rows late in a file, kill -9 then --resume, routing and the ONNX backend."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE

pq = pytest.importorskip("pyarrow.parquet")
import pyarrow as pa  # noqa: E402

from weibo_sentiment.streaming.record import partial_paths  # noqa: E402
from weibo_sentiment.streaming.run import predict_file  # noqa: E402


def sample_texts(n: int = 23) -> list[str]:
    with SAMPLE.open(encoding="utf-8", newline="") as f:
        texts = [row["review"].strip() for row in csv.DictReader(f)][:n]
    texts[3] = "第一行\n第二行, 带逗号和\"引号\""  # a quoted field over two lines
    texts[10] = "换页\f和\u2028分隔符留在帖子里"
    return texts


@pytest.fixture(scope="module")
def predictor(sample_adapter):
    from weibo_sentiment.inference import Predictor

    return Predictor.from_adapters([str(sample_adapter)], device="cpu")


def write_csv(path: Path, texts: list[str], delimiter: str = ",", extra: dict | None = None) -> Path:
    extra = extra or {}
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["id", "review", *extra])
        for i, text in enumerate(texts):
            writer.writerow([f"id{i}", text, *(values[i] for values in extra.values())])
    return path


def read_jsonl(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 inside a text is no break
    return [json.loads(line) for line in lines if line]


def assert_same(rows: list[dict], expected) -> None:
    assert [r["text"] for r in rows] == [p.text for p in expected]
    assert [r["label"] for r in rows] == [p.label for p in expected]
    for r, p in zip(rows, expected):
        for name, value in p.probabilities.items():
            assert r[f"prob_{name}"] == pytest.approx(value, abs=2e-6)


def test_every_input_format_matches_the_in_memory_path(tmp_path, predictor):
    texts = sample_texts()
    expected = predictor.predict(texts)
    single_line = [t for t in texts if "\n" not in t]
    inputs = {
        "csv": write_csv(tmp_path / "in.csv", texts),
        "tsv": write_csv(tmp_path / "in.tsv", texts, delimiter="\t"),
        "jsonl": tmp_path / "in.jsonl",
        "parquet": tmp_path / "in.parquet",
    }
    inputs["jsonl"].write_text("".join(json.dumps({"id": f"id{i}", "review": t}, ensure_ascii=False) + "\n"
                                       + ("\n" if i == 5 else "") for i, t in enumerate(texts)), encoding="utf-8")
    pq.write_table(pa.table({"id": [f"id{i}" for i in range(len(texts))], "review": texts}), inputs["parquet"],
                   row_group_size=4)
    for name, path in inputs.items():
        out = tmp_path / f"out-{name}.jsonl"
        result = predict_file(predictor, path, out, chunk_size=5, id_column="id", progress=False)
        rows = read_jsonl(out)
        assert result.rows == len(texts), name
        assert_same(rows, expected)
        assert [r["id"] for r in rows] == [f"id{i}" for i in range(len(texts))], name
        assert not any(p.exists() for p in partial_paths(out)), name
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(single_line[:8]) + "\n\n" + "\n".join(single_line[8:]) + "\n", encoding="utf-8")
    result = predict_file(predictor, txt, tmp_path / "out-txt.jsonl", chunk_size=3, progress=False)
    assert_same(read_jsonl(tmp_path / "out-txt.jsonl"), predictor.predict(single_line))
    assert result.blank == 1


def test_output_formats_id_and_kept_columns(tmp_path, sample_adapter, cli, predictor):
    texts = sample_texts(17)
    labels = [str(i % 2) for i in range(len(texts))]
    source = write_csv(tmp_path / "in.csv", texts, extra={"label": labels, "user": [f"u{i}" for i in range(17)]})
    outs = {}
    for suffix in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"out.{suffix}"
        r = cli("predict", "--adapter", sample_adapter, "--input", source, "--output", out, "--id-column", "id",
                "--keep-columns", "--chunk-size", "4", "--min-confidence", "0.6", "--no-calibration")
        assert r.code == 0, r.err
        assert f"17 predictions written to {out}" in r.err
        outs[suffix] = out
    table = pq.read_table(outs["parquet"]).to_pylist()
    with outs["csv"].open(encoding="utf-8", newline="") as f:
        from_csv = list(csv.DictReader(f))
    from_jsonl = read_jsonl(outs["jsonl"])
    columns = ["id", "text", "label", "label_name", "confidence", "uncertain", "prob_negative", "prob_positive",
               "input_label", "user"]
    assert list(table[0]) == columns and list(from_csv[0]) == columns and list(from_jsonl[0]) == columns
    expected = predictor.predict(texts, calibrated=False)
    for rows in (table, from_jsonl):
        assert_same(rows, expected)
        assert [r["id"] for r in rows] == [f"id{i}" for i in range(17)]
        assert [r["user"] for r in rows] == [f"u{i}" for i in range(17)]
        assert [r["input_label"] for r in rows] == labels
        assert [r["uncertain"] for r in rows] == [p.confidence < 0.6 for p in expected]
    assert [r["text"] for r in from_csv] == texts
    # a second run replaces our own earlier output, Parquet included; someone else's file is refused
    r = cli("predict", "--adapter", sample_adapter, "--input", source, "--output", outs["parquet"])
    assert r.code == 0, r.err
    foreign = tmp_path / "notes.parquet"
    foreign.write_bytes(b"PAR1 not ours")
    r = cli("predict", "--adapter", sample_adapter, "--input", source, "--output", foreign)
    assert r.code == 2 and "not a predictions file written by weibo-sentiment" in r.err
    assert foreign.read_bytes() == b"PAR1 not ours"


@pytest.mark.parametrize("bad, message", [
    ('id40,""\n', "line 43: empty text"),
    ('id40,"opens and never closes\n', "line 43: a quote opens a field here but never closes"),
])
def test_a_bad_row_in_a_late_chunk(tmp_path, sample_adapter, cli, bad, message):
    source = write_csv(tmp_path / "in.csv", sample_texts(40))  # header + 40 rows, one with two lines: lines 2-42
    with source.open("a", encoding="utf-8", newline="") as f:
        f.write(bad + "id41,还有一行\n")
    out = tmp_path / "out.csv"
    r = cli("predict", "--adapter", sample_adapter, "--input", source, "--output", out, "--chunk-size", "4")
    assert r.code == 2
    assert r.err.strip().splitlines()[-1] == f"error: {source}: {message}" + (
        "" if "empty" in message else ", so every later line would be read into that field")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no output, no partial, no record


def test_interrupted_run_resumes_only_when_nothing_changed(tmp_path, sample_adapter, cli, monkeypatch, caplog):
    import weibo_sentiment.streaming.run as streaming

    texts = sample_texts(30)
    source = write_csv(tmp_path / "in.csv", texts)
    args = ["predict", "--adapter", sample_adapter, "--input", source, "--chunk-size", "4", "--id-column", "id"]
    reference = tmp_path / "reference.csv"
    assert cli(*args, "--output", reference).code == 0
    out = tmp_path / "out.csv"
    real, calls = streaming._predict_chunk, []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(streaming, "_predict_chunk", interrupt)
    r = cli(*args, "--output", out)
    monkeypatch.setattr(streaming, "_predict_chunk", real)
    assert r.code == 130 and "interrupted after 12 rows; run the same command with --resume" in caplog.text
    partial, record = partial_paths(out)
    assert not out.exists() and partial.exists() and json.loads(record.read_text())["rows_done"] == 12

    r = cli(*args, "--output", out)  # leftovers are never deleted silently
    assert r.code == 2 and "pass --resume to continue it" in r.err and "12 rows done" in r.err
    r = cli(*args, "--output", out, "--resume", "--chunk-size", "5")
    assert r.code == 2 and "the options differ (chunk_size 4 → 5)" in r.err
    r = cli(*args[:-2], "--output", out, "--resume")  # without --id-column: options differ
    assert r.code == 2 and "id_column 'id' → None" in r.err
    original = source.read_bytes()
    source.write_bytes(original.replace(b"id1,", b"idX,", 1))
    r = cli(*args, "--output", out, "--resume")
    assert r.code == 2 and f"the input {source} has changed (its first" in r.err
    source.write_bytes(original + b"id30,a new row\n")
    r = cli(*args, "--output", out, "--resume")
    assert r.code == 2 and "has changed (size" in r.err
    source.write_bytes(original)
    assert partial.exists() and record.exists()  # refusals keep the interrupted run

    r = cli(*args, "--output", out, "--resume")
    assert r.code == 0, r.err
    assert "resumed after row 12" in r.err
    assert out.read_bytes() == reference.read_bytes()
    assert not partial.exists() and not record.exists()


def test_kill_9_then_resume_gives_the_uninterrupted_file(tmp_path, sample_adapter, cli):
    texts = sample_texts(200) * 4  # 800 rows, 200 chunks of 4
    source = write_csv(tmp_path / "in.csv", texts)
    out, reference = tmp_path / "out.jsonl", tmp_path / "reference.jsonl"
    args = ["predict", "--adapter", sample_adapter, "--input", source, "--chunk-size", "4", "--keep-columns"]
    partial, record = partial_paths(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "weibo_sentiment", *map(str, args), "--output", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(record.read_text())["rows_done"]
        except (OSError, ValueError):
            done = 0
        if done >= 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and partial.exists() and record.exists()
    assert cli(*args, "--output", reference).code == 0
    r = cli(*args, "--output", out, "--resume")
    assert r.code == 0, r.err
    assert out.read_bytes() == reference.read_bytes()
    assert len(read_jsonl(out)) == 800


def test_routing_column_across_chunks(tmp_path, sample_adapter, adapter_copy, cli):
    from weibo_sentiment.inference import Predictor

    texts = sample_texts(14)
    routes = ["a", "b", ""] * 4 + ["b", "a"]
    source = write_csv(tmp_path / "in.csv", texts, extra={"adapter": routes})
    out = tmp_path / "out.jsonl"
    r = cli("predict", "--adapter", f"a={sample_adapter}", "--adapter", f"b={adapter_copy}", "--use", "b",
            "--input", source, "--output", out, "--chunk-size", "3")
    assert r.code == 0, r.err
    rows = read_jsonl(out)
    predictor = Predictor.from_adapters({"a": sample_adapter, "b": adapter_copy}, device="cpu")
    predictor.use("b")
    expected = predictor.predict_routed(texts, routes)
    assert [r["adapter"] for r in rows] == [x or "b" for x in routes]
    assert_same(rows, expected)
    bad = write_csv(tmp_path / "bad.csv", texts, extra={"adapter": routes[:12] + ["nope", "a"]})
    r = cli("predict", "--adapter", f"a={sample_adapter}", "--adapter", f"b={adapter_copy}", "--input", bad,
            "--output", out, "--chunk-size", "3")
    assert r.code == 2 and f"{bad}: line 15: unknown adapter 'nope'" in r.err


def test_onnx_backend_streams(tmp_path, sample_adapter, cli):
    pytest.importorskip("onnxruntime")
    from weibo_sentiment.exporters.onnx import export_onnx
    from weibo_sentiment.inference import OnnxPredictor

    model = export_onnx(sample_adapter, tmp_path / "export")
    texts = sample_texts(11)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"review": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "out.csv"
    r = cli("predict", "--model", model, "--input", source, "--output", out, "--chunk-size", "4")
    assert r.code == 0, r.err
    with out.open(encoding="utf-8", newline="") as f:
        rows = [{**row, "label": int(row["label"]), **{k: float(v) for k, v in row.items() if k.startswith("prob_")}}
                for row in csv.DictReader(f)]
    assert_same(rows, OnnxPredictor(model).predict(texts))


# ---- property: the streaming reader reads what read_texts reads, or refuses the same way ----------------------
def _property_case():
    from hypothesis import given

    from tests.test_data_edge_cases import PROPERTY, files, one_line

    @PROPERTY
    @given(raw=files, suffix=st.sampled_from([".txt", ".csv", ".tsv"]))
    def test(tmp_path_factory, raw, suffix):
        from weibo_sentiment.data import read_texts
        from weibo_sentiment.errors import UserError
        from weibo_sentiment.streaming.source import Source

        path = tmp_path_factory.mktemp("prop") / f"in{suffix}"
        path.write_bytes(raw)
        try:
            expected = read_texts(path, extra_columns=("adapter",))[0]
        except UserError as e:
            expected = e
        try:
            source = Source(path, chunk_size=3)
            got = [row.text for row in source.rows()]
        except UserError as e:
            one_line(e)
            # (the first problem met may differ: read_texts checks the whole file before any row)
            assert isinstance(expected, UserError), f"streaming refused what read_texts read: {e}"
            assert str(e).startswith(f"{path}: ")
        else:
            if isinstance(expected, UserError):  # no rows at all: predict_file says so, as read_texts does
                assert not got, f"streaming read what read_texts refused: {expected}"
            else:
                assert got == expected

    return test


st = pytest.importorskip("hypothesis.strategies")
test_any_bytes_stream_as_read_texts_reads_them = _property_case()
