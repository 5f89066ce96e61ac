"""Calibrated confidence: temperature scaling fitted after training, applied alike on every prediction path."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from weibo_sentiment.adapter_io import read_run, write_run
from weibo_sentiment.calibration import brier, coverage_table, ece, fit_temperature, fit_validation, nll, softmax
from weibo_sentiment.errors import UserError
from weibo_sentiment.inference import Predictor

from .conftest import SAMPLE, write

with SAMPLE.open(encoding="utf-8", newline="") as f:
    TEXTS = [row["review"] for row in csv.DictReader(f)][:12]
TEXTS.append("好" * 300)  # longer than max_length: truncated alike everywhere
HOT = 2.0  # the temperature written into the test adapters' run.json, so calibrated and raw differ visibly


def with_temperature(src: Path, dst: Path, temperature: float | None) -> Path:
    """A copy of an adapter whose run.json says `temperature` (None: no key, as adapters before calibration)."""
    shutil.copytree(src, dst)
    run = read_run(dst)
    run.pop("calibration", None)
    run.pop("temperature", None)
    if temperature is not None:
        run["temperature"] = temperature
    write_run(dst, run)
    return dst


@pytest.fixture(scope="module")
def hot(tmp_path_factory, sample_adapter) -> Path:
    return with_temperature(sample_adapter, tmp_path_factory.mktemp("calibration") / "hot", HOT)


@pytest.fixture(scope="module")
def raw_logits(hot) -> np.ndarray:
    predictor = Predictor.from_adapters([hot], device="cpu")
    predictor.merge_single = False
    return predictor.predict_logits(TEXTS)


@pytest.fixture(scope="module")
def calibrated(raw_logits) -> np.ndarray:
    return softmax(raw_logits, HOT)


def close(a, b, tolerance: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=tolerance,
                               rtol=0)


# ---- the maths --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [2.5, 0.5])
def test_fit_temperature_undoes_a_known_overconfidence(factor):
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(200_000, 5))  # enough rows that sampling noise stays well under 1%
    p = softmax(z)
    labels = (rng.random(len(z))[:, None] > p.cumsum(axis=1)).sum(axis=1)  # drawn from softmax(z)
    assert fit_temperature(z * factor, labels) == pytest.approx(factor, rel=0.01)
    assert fit_temperature(z, labels) == pytest.approx(1.0, rel=0.01)


def test_fit_temperature_without_information_is_one():
    assert fit_temperature(np.zeros((4, 2)), [0, 1, 1, 0]) == 1.0
    assert fit_temperature(np.zeros((0, 2)), []) == 1.0


PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
LABELS = [0, 1, 1, 1]  # right, wrong (0.6 on the other class), right, right


def test_scores_on_a_hand_computed_example():
    # Each row in a bin of its own: ECE is the mean |correct - confidence| = (0.1 + 0.6 + 0.3 + 0.2) / 4.
    assert ece(PROBS, LABELS) == pytest.approx(0.3)
    # One bin: |accuracy 3/4 - mean confidence (0.9 + 0.6 + 0.7 + 0.8) / 4| = 0.
    assert ece(PROBS, LABELS, bins=1) == pytest.approx(0.0)
    # Sum over classes of (p - onehot)²: 0.02, 0.72, 0.18, 0.08.
    assert brier(PROBS, LABELS) == pytest.approx(0.25)
    assert nll(PROBS, LABELS) == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4)
    assert coverage_table(PROBS, LABELS, thresholds=(0.5, 0.7, 0.95)) == [
        {"threshold": 0.5, "accuracy": 0.75, "kept": 1.0},
        {"threshold": 0.7, "accuracy": 1.0, "kept": 0.75},
        {"threshold": 0.95, "accuracy": None, "kept": 0.0},
    ]
    assert [row["threshold"] for row in coverage_table(PROBS, LABELS)] == pytest.approx(
        [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])


# ---- training writes it ----------------------------------------------------------------------------------
def test_training_fits_a_temperature_on_the_validation_split(sample_adapter):
    run = read_run(sample_adapter)
    assert isinstance(run["temperature"], float) and run["temperature"] > 0
    block = run["calibration"]
    assert (block["method"], block["fitted_on"]) == ("temperature scaling", "validation")
    assert block["rows"] == run["rows"]["validation"]
    assert block["nll_after"] <= block["nll_before"] + 1e-6  # the fitted T minimises validation NLL
    assert {"ece_before", "ece_after"} <= set(block)


def test_an_adapter_from_before_calibration_has_temperature_one(adapter_copy, raw_logits):
    with_temperature(adapter_copy, adapter_copy.parent / "old", None)
    predictor = Predictor.from_adapters([adapter_copy.parent / "old"], device="cpu")
    assert predictor.adapters[predictor.default].temperature == 1.0
    close(predictor.predict_proba(TEXTS), softmax(raw_logits))


def test_a_bad_temperature_is_refused(adapter_copy, cli):
    run = read_run(adapter_copy)
    write_run(adapter_copy, {**run, "temperature": -1})
    result = cli("predict", "--adapter", adapter_copy, "--text", "好")
    assert (result.code, result.err) == (2, f"error: {adapter_copy}: the temperature -1 in its settings is not "
                                            "a positive number\n")


# ---- every path gives the same calibrated probabilities ------------------------------------------------------
def test_torch_predictor_merged_unmerged_and_routed(hot, sample_adapter, tmp_path, raw_logits, calibrated):
    merged = Predictor.from_adapters([hot], device="cpu")
    close(merged.predict_proba(TEXTS), calibrated)
    assert merged._merged == merged.default
    close(merged.predict_proba(TEXTS, calibrated=False), softmax(raw_logits))
    merged.calibrated = False
    close([list(p.probabilities.values()) for p in merged.predict(TEXTS)], softmax(raw_logits))

    # A mixed batch: every row divided by its own adapter's temperature.
    cool = with_temperature(sample_adapter, tmp_path / "cool", 0.5)
    mixed = Predictor.from_adapters({"hot": hot, "cool": cool}, device="cpu")
    routes = ["hot" if i % 2 else "cool" for i in range(len(TEXTS))]
    got = [list(p.probabilities.values()) for p in mixed.predict_routed(TEXTS, routes, batch_size=64)]
    want = [softmax(raw_logits[i:i + 1], HOT if r == "hot" else 0.5)[0] for i, r in enumerate(routes)]
    close(got, want)
    close(mixed.predict_proba(TEXTS, "hot"), calibrated)


def test_served_probabilities_are_calibrated(hot, calibrated):
    from weibo_sentiment.serve import create_app

    from .serving_helpers import running

    predictor = Predictor.from_adapters({"hot": hot}, device="cpu")
    with running(create_app(predictor)) as url, httpx.Client(base_url=url, timeout=60) as client:
        body = client.post("/v1/predict", json={"texts": TEXTS}).json()
    close([list(p["probabilities"].values()) for p in body["predictions"]], calibrated)
    close([p["confidence"] for p in body["predictions"]], calibrated.max(axis=1))


def test_serve_command_passes_no_calibration(cli, hot, monkeypatch):
    import weibo_sentiment.serve

    seen = {}
    monkeypatch.setattr(weibo_sentiment.serve, "serve", lambda adapters, **kw: seen.update(kw) or 0)
    assert cli("serve", "--adapter", hot, "--no-calibration").code == 0
    assert seen["calibrated"] is False
    assert cli("serve", "--adapter", hot).code == 0
    assert seen["calibrated"] is True


def test_merged_model_in_a_plain_pipeline_is_calibrated(hot, tmp_path, calibrated):
    from transformers import pipeline

    from weibo_sentiment.adapters import merge
    from weibo_sentiment.output import MERGE_FILE

    out = merge(hot, tmp_path / "merged")
    assert json.loads((out / MERGE_FILE).read_text(encoding="utf-8"))["temperature"] == HOT
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["weibo_sentiment_temperature"] == HOT
    classify = pipeline("text-classification", model=str(out), top_k=None, device="cpu")
    # The pipeline cuts texts at the model's 1024 positions, not at the adapter's max length: short texts only.
    rows = [{d["label"]: d["score"] for d in row} for row in classify(TEXTS[:-1])]
    close([[row["negative"], row["positive"]] for row in rows], calibrated[:-1])


def test_onnx_export_records_and_applies_the_temperature(hot, tmp_path, raw_logits, calibrated):
    from weibo_sentiment.exporters.onnx import export_onnx
    from weibo_sentiment.inference import OnnxPredictor
    from weibo_sentiment.inference.onnx_predictor import read_export

    out = export_onnx(hot, tmp_path / "onnx")
    assert read_export(out)["temperature"] == HOT
    close(OnnxPredictor(out).predict_proba(TEXTS, batch_size=4), calibrated)
    close(OnnxPredictor(out, calibrated=False).predict_proba(TEXTS), softmax(raw_logits))


def test_combined_adapter_keeps_equal_temperatures(hot, tmp_path, calibrated):
    from weibo_sentiment.adapters import combine

    out = combine({"a": hot, "b": hot}, tmp_path / "combined")
    run = read_run(out)
    assert run["temperature"] == HOT and "temperature" in run["combination"]
    close(Predictor.from_adapters([out], device="cpu").predict_proba(TEXTS), calibrated)


# ---- the command line ----------------------------------------------------------------------------------------
def predict_rows(cli, *args) -> list[dict]:
    result = cli("predict", *args)
    assert result.code == 0, result.err
    return [json.loads(line) for line in result.out.splitlines()]


def test_predict_no_calibration_and_min_confidence(cli, hot, tmp_path, raw_logits, calibrated):
    inp = write(tmp_path / "in.txt", "\n".join(TEXTS))
    rows = predict_rows(cli, "--adapter", hot, "--input", inp)
    close([[r["prob_negative"], r["prob_positive"]] for r in rows], calibrated)
    assert "uncertain" not in rows[0]
    raw = predict_rows(cli, "--adapter", hot, "--input", inp, "--no-calibration")
    close([[r["prob_negative"], r["prob_positive"]] for r in raw], softmax(raw_logits))

    confidence = calibrated.max(axis=1)
    middle = np.unique(np.round(confidence, 4))
    threshold = float(middle[len(middle) // 2 - 1] + middle[len(middle) // 2]) / 2  # rows on each side, none near
    rows = predict_rows(cli, "--adapter", hot, "--input", inp, "--min-confidence", threshold)
    assert list(rows[0])[:5] == ["text", "label", "label_name", "confidence", "uncertain"]
    assert [r["uncertain"] for r in rows] == [bool(c < threshold) for c in confidence]
    assert 0 < sum(r["uncertain"] for r in rows) < len(rows)
    assert [r["label"] for r in rows] == calibrated.argmax(axis=1).tolist()  # the label is kept

    result = cli("predict", "--adapter", hot, "--text", TEXTS[0], "--min-confidence", 0.999)
    assert result.code == 0 and result.out.splitlines()[1].endswith(") (uncertain)")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan"])
def test_min_confidence_out_of_range(cli, value):
    result = cli("predict", "--adapter", "no-such-dir", "--text", "好", "--min-confidence", value)
    assert (result.code, result.err) == (2, f"error: --min-confidence {float(value):g}: must be between 0 and 1 "
                                            "(exclusive)\n")


def test_evaluate_reports_calibration(cli, hot, tmp_path):
    data = write(tmp_path / "d.csv", "label,review\n" + "".join(
        f"{i % 2},{t}\n" for i, t in enumerate(TEXTS[:10])))
    result = cli("evaluate", "--adapter", hot, "--data", data, "--print-json")
    assert result.code == 0, result.err
    report = json.loads(result.out.splitlines()[-1])
    assert {"ece", "ece_raw", "brier", "nll", "coverage"} <= set(report)
    assert (report["temperature"], report["calibrated"]) == (HOT, True)
    assert [row["threshold"] for row in report["coverage"]][:2] == [0.5, 0.55]
    assert "ECE" in result.out and "Brier" in result.out and "confidence >=" in result.out

    raw = json.loads(cli("evaluate", "--adapter", hot, "--data", data, "--print-json",
                         "--no-calibration").out.splitlines()[-1])
    assert (raw["temperature"], raw["calibrated"]) == (HOT, False)
    assert raw["ece"] == raw["ece_raw"] == pytest.approx(report["ece_raw"])
    assert raw["accuracy"] == report["accuracy"]  # a temperature never changes the argmax


# ---- when a temperature cannot be trusted (issue 17) -------------------------------------------------------
def test_a_small_easy_split_keeps_temperature_one_and_says_why(caplog):
    z = np.array([[0.0, 0.05], [0.05, 0.0], [0.0, 0.05], [0.05, 0.0]])  # 4 rows, all right, margin 0.05
    before_fix = fit_temperature(z, [1, 0, 1, 0])
    assert before_fix == pytest.approx(0.01, rel=0.05)  # what the bare fit does: runs to its lower bound
    temperature, block = fit_validation(z, [1, 0, 1, 0])
    assert temperature == 1.0
    assert block["warning"] == "4 validation rows, fewer than the 50 a temperature needs: temperature 1 kept"
    assert softmax(z, temperature).max() < 0.52  # a margin of 0.05 stays an honest ~0.51, not 0.993
    assert "fewer than the 50" in caplog.text


def test_enough_rows_but_no_errors_keeps_temperature_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=200)
    z = np.zeros((200, 2))
    z[np.arange(200), labels] = 0.3  # every row right
    temperature, block = fit_validation(z, labels)
    assert temperature == 1.0 and block["errors"] == 0
    assert block["warning"].startswith("0 misclassified validation rows, fewer than the 3")


def test_a_temperature_at_the_search_bound_is_a_warning():
    labels = np.array([0, 1] * 50)
    z = np.zeros((100, 2))
    z[np.arange(100), labels] = 1e-4  # right by a hair ...
    z[:6] = z[:6, ::-1] * 1e-6  # ... and 6 wrong by less: NLL keeps falling as T does
    temperature, block = fit_validation(z, labels)
    assert temperature == pytest.approx(0.01, rel=0.02)
    assert "lies at the bound of the search (0.01..100)" in block["warning"]


def test_nan_logits_stop_with_one_line():
    z = np.zeros((60, 2))
    z[3, 0] = np.nan
    with pytest.raises(UserError) as e:
        fit_validation(z, [0, 1] * 30)
    assert str(e.value) == ("the model's logits are NaN or infinite on 1 of 60 validation rows: training diverged "
                            "(try a lower --lr, or --precision fp32)")
