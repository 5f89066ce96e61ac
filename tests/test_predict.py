"""Prediction and evaluation through the CLI and the library API."""

from __future__ import annotations

import csv
import io
import json

import pytest

from weibo_sentiment.cli.predict import interactive
from weibo_sentiment.inference import Predictor

from .conftest import run_subprocess, shared, write

TEXTS = ["这部电影太好看了，我非常喜欢！[哈哈]", "服务态度差，价格又贵，完全不推荐[怒]",
         "今天天气不错", "堵车堵了两个小时，真是受够了[抓狂]"]


@pytest.fixture(scope="module")
def predictor(sample_adapter):
    return Predictor.from_adapters([sample_adapter])


def test_batched_equals_one_by_one(predictor):
    # Length-sorted, per-batch padded batches must give what each text gives alone, in input order.
    together = predictor.predict_proba(TEXTS, batch_size=3)
    alone = [predictor.predict_proba([t])[0] for t in TEXTS]
    for a, b in zip(together, alone):
        assert abs(a - b).max() < 1e-5
    assert abs(together.sum(axis=1) - 1).max() < 1e-6


def test_prediction_fields(predictor):
    pred = predictor.predict(TEXTS[:1])[0]
    assert pred.label_name == ["negative", "positive"][pred.label]
    assert pred.confidence == max(pred.probabilities.values())
    assert list(pred.probabilities) == ["negative", "positive"]


def test_text_flag_prints_original_format(cli, sample_adapter, predictor):
    result = cli("predict", "--adapter", sample_adapter, "--text", TEXTS[0], "--text", TEXTS[1])
    assert result.code == 0
    expected = []
    for p in predictor.predict(TEXTS[:2]):
        expected += [p.text, f"Prediction: {p.label_name.capitalize()} sentiment (Confidence: {p.confidence:.4f})"]
    assert result.out.splitlines() == expected


def test_csv_in_csv_out_keeps_order(cli, sample_adapter, predictor, tmp_path):
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review"])
        writer.writerows(enumerate(TEXTS))
    out = tmp_path / "out.csv"
    result = cli("predict", "--adapter", sample_adapter, "--input", src, "--output", out)
    assert result.code == 0, result.err
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert list(rows[0]) == ["text", "label", "label_name", "confidence", "prob_negative", "prob_positive"]
    assert [r["text"] for r in rows] == TEXTS
    expected = predictor.predict(TEXTS)
    assert [int(r["label"]) for r in rows] == [p.label for p in expected]
    assert [abs(float(r["prob_positive"]) - p.probabilities["positive"]) < 1e-5 for r, p in zip(rows, expected)] \
        == [True] * len(TEXTS)


def test_txt_in_jsonl_out_and_stdin(cli, sample_adapter, tmp_path):
    src = write(tmp_path / "in.txt", "\n".join(TEXTS) + "\n")
    out = tmp_path / "out.jsonl"
    assert cli("predict", "--adapter", sample_adapter, "--input", src, "--output", out).code == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    proc = run_subprocess("predict", "--adapter", sample_adapter, "--input", "-", stdin="\n".join(TEXTS))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == rows


def test_failed_run_leaves_no_output(cli, sample_adapter, tmp_path):
    src = write(tmp_path / "in.csv", "review,id\n好,1\n,2\n")
    out = tmp_path / "out.csv"
    result = cli("predict", "--adapter", sample_adapter, "--input", src, "--output", out)
    assert result.code == 2
    assert result.err.strip() == f"error: {src}: line 3: empty text"
    assert list(tmp_path.iterdir()) == [src]


def test_missing_adapter_dir(cli, tmp_path):
    result = cli("predict", "--adapter", tmp_path / "nope", "--text", "好")
    assert result.code == 2
    assert result.err.strip() == f"error: {tmp_path / 'nope'}: no such adapter directory"


def test_interactive_loop(predictor):
    stdin = io.StringIO(f"{TEXTS[0]}\n\n   \n:adapters\nq\nnever read\n")
    stdout = io.StringIO()
    assert interactive(predictor, stdin, stdout) == 0
    out = stdout.getvalue()
    expected = predictor.predict(TEXTS[:1])[0]
    assert f"Prediction: {expected.label_name.capitalize()} sentiment (Confidence: {expected.confidence:.4f})" in out
    assert out.count("Please type a Weibo post to analyse, or 'q' to quit.") == 2
    assert "* sample:" in out
    assert out.rstrip().endswith("Bye.")
    assert "never read" not in out


def test_interactive_eof_quits_cleanly(sample_adapter):
    proc = run_subprocess("predict", "--adapter", sample_adapter, stdin="今天很开心[哈哈]\n")
    assert proc.returncode == 0, proc.stderr
    assert "Please enter Weibo content: Prediction: " in proc.stdout
    assert proc.stdout.rstrip().endswith("Bye.")
    assert "Traceback" not in proc.stderr


def test_evaluate_json(cli, sample_adapter, tmp_path):
    data = write(tmp_path / "d.csv", "label,review\n1,太好吃了[馋嘴]\n0,难吃死了[怒]\n1,好开心[哈哈]\n")
    out = tmp_path / "m.json"
    result = cli("evaluate", "--adapter", sample_adapter, "--data", data, "--json", out)
    assert result.code == 0, result.err
    report = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "n", "confusion_matrix", "per_class"} <= set(report)
    assert report["n"] == 3
    assert sum(map(sum, report["confusion_matrix"])) == 3
    assert report["confusion_matrix"][1][0] + report["confusion_matrix"][1][1] == 2
    assert set(report["per_class"]) == {"negative", "positive"}
    correct = report["confusion_matrix"][0][0] + report["confusion_matrix"][1][1]
    assert report["accuracy"] == pytest.approx(correct / 3)


def test_evaluate_strip_emoticons_changes_the_input(cli, sample_adapter, tmp_path, predictor):
    data = write(tmp_path / "d.csv", "label,review\n1,[哈哈][哈哈][哈哈]\n0,[怒][怒]\n")
    result = cli("evaluate", "--adapter", sample_adapter, "--data", data, "--strip-emoticons", "--print-json")
    report = json.loads(result.out.splitlines()[-1])
    assert report["strip_emoticons"] is True and report["texts_only_emoticons"] == 2
    # Both posts become the same emoticon-free stand-in, so both get the same prediction.
    assert sorted(sum(report["confusion_matrix"], [])) in ([0, 0, 1, 1], [0, 0, 0, 2]) or \
        report["confusion_matrix"] in ([[1, 0], [1, 0]], [[0, 1], [0, 1]])


def test_evaluate_label_outside_adapter_labels(cli, sample_adapter, tmp_path):
    data = write(tmp_path / "d.csv", "label,review\n1,好\n2,一般\n")
    result = cli("evaluate", "--adapter", sample_adapter, "--data", data)
    assert result.code == 2
    assert result.err.strip() == f"error: {data}: line 3: label 2 is out of range (expected 0..1)"


def test_learns_weibo_above_090_on_the_held_out_test_set(tmp_path, tiny_base):
    """A 2-layer, 128-wide base with LoRA, 1 epoch on 20,000 real training rows, scored on test.csv."""
    import pandas as pd

    from weibo_sentiment.data import load_labelled
    from weibo_sentiment.evaluation import evaluate
    from weibo_sentiment.training import TrainConfig, train

    rows = pd.read_csv(shared("data", "weibo_senti_100k", "train.csv")).sample(n=20_000, random_state=0)
    subset = tmp_path / "train20k.csv"
    rows.to_csv(subset, index=False)
    out = tmp_path / "weibo"
    train(TrainConfig(data=str(subset), base_model=str(tiny_base), output=str(out), epochs=1,
                      logging_steps=10_000))
    predictor = Predictor.from_adapters([out])
    test = load_labelled(shared("data", "weibo_senti_100k", "test.csv"), deduplicate=False, min_classes=1)
    report = evaluate(predictor, test, batch_size=64)
    assert report["n"] == 9940
    assert report["accuracy"] >= 0.90, report
    stripped = evaluate(predictor, test, strip=True, batch_size=64)
    assert 0.5 < stripped["accuracy"] < report["accuracy"]
