"""Long texts read whole (`long_text="window"`): windows equal truncation for texts that fit, the end of a long
post is read, windows of all posts share sorted batches, strides are checked, counts are reported."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from weibo_sentiment.data import load_labelled
from weibo_sentiment.errors import UserError
from weibo_sentiment.evaluation import evaluate
from weibo_sentiment.exporters.onnx import export_onnx
from weibo_sentiment.inference import (
    COMBINE_RULES,
    AdapterInfo,
    BasePredictor,
    LongText,
    OnnxPredictor,
    Predictor,
    WindowScores,
)
from weibo_sentiment.modeling import load_tokenizer
from weibo_sentiment.serve import create_app
from weibo_sentiment.streaming.run import long_text_option, predict_file

from .conftest import SAMPLE
from .serving_helpers import running

with SAMPLE.open(encoding="utf-8", newline="") as f:
    SHORT = [row["review"] for row in csv.DictReader(f)][:24]  # real posts, all shorter than 128 tokens
# 300 distinct characters (one token each): a post of 2.5 windows whose windows can be told apart.
CHARS = [chr(c) for c in range(0x4E00, 0x4E00 + 3000, 10)][:300]
LONG = "".join(CHARS)
FILLER = "的" * 300  # a window of it holds neither decisive word


class Counting(BasePredictor):
    """A model whose logits are counts: [how many 坏, how many 好] in a window; a window of neither is exactly
    undecided. It records the lengths of the windows of every forward pass."""

    def __init__(self, tokenizer, max_length: int = 32, temperature: float = 1.0):
        self.tokenizer, self.calibrated, self.default = tokenizer, True, "count"
        run = {"label_names": ["negative", "positive"], "max_length": max_length, "temperature": temperature}
        self.adapters = {"count": AdapterInfo("count", Path("count"), run)}
        self.bad, self.good = tokenizer.convert_tokens_to_ids(["坏", "好"])
        self.batches: list[list[int]] = []

    def forward(self, ids: list[list[int]], adapter_names: list[str] | None) -> np.ndarray:
        self.batches.append([len(x) for x in ids])
        return np.array([[x.count(self.bad), x.count(self.good)] for x in ids], dtype=np.float32)


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    return load_tokenizer(tiny_base)


@pytest.fixture(scope="module")
def predictor(sample_adapter):
    return Predictor.from_adapters([sample_adapter], device="cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sample_adapter) -> Path:
    return export_onnx(sample_adapter, tmp_path_factory.mktemp("exports") / "fp32")


# ---- texts that fit: windows are truncation -------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_windows_equal_truncation_for_texts_that_fit(backend, predictor, exported):
    model = predictor if backend == "torch" else OnnxPredictor(exported)
    truncated = model.predict_proba(SHORT, batch_size=8)
    for rule in COMBINE_RULES:
        windowed = model.predict_proba(SHORT, batch_size=8, long_text=LongText("window", combine=rule))
        np.testing.assert_array_equal(windowed, truncated)  # exactly: the same ids, batches and arithmetic
    preds = model.predict(SHORT, long_text="window")
    assert [p.as_row() for p in preds] == [p.as_row() for p in model.predict(SHORT)]
    assert {p.windows for p in preds} == {1}


def test_texts_that_fit_keep_their_probabilities_beside_long_ones(predictor):
    mixed = predictor.predict_proba([*SHORT, LONG], batch_size=8, long_text="window")
    # Other batch partners pad differently: float rounding only, as between batch sizes (test_predict).
    assert np.abs(mixed[:-1] - predictor.predict_proba(SHORT, batch_size=8)).max() < 1e-5


def test_predictor_setting_and_per_call_override(sample_adapter):
    model = Predictor.from_adapters([sample_adapter], device="cpu")
    truncated = model.predict_proba([LONG])
    model.long_text = LongText("window")
    windowed = model.predict_proba([LONG])
    assert np.abs(windowed - truncated).max() > 1e-4  # the rest of the post moved the probabilities
    np.testing.assert_array_equal(model.predict_proba([LONG], long_text="truncate"), truncated)
    # Logits are one row a text only under truncation: predict_logits reads the start, whatever the setting.
    start = model.predict_windows([LONG], long_text="truncate").logits
    np.testing.assert_array_equal(model.predict_logits([LONG]), start)


# ---- long texts are read whole ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_long_post_is_the_mean_of_its_windows(backend, predictor, exported):
    # Each window of LONG is the post's characters [start, start + 126), and is read as that text alone.
    model = predictor if backend == "torch" else OnnxPredictor(exported)
    starts = range(0, len(CHARS) - 126 + 63, 63)  # 0, 63, 126, 189: the last one holds the post's end
    pieces = ["".join(CHARS[s:s + 126]) for s in starts]
    expected = model.predict_proba(pieces).mean(axis=0)
    pred = model.predict([LONG], long_text="window")[0]
    assert pred.windows == len(pieces) == 4
    np.testing.assert_allclose(list(pred.probabilities.values()), expected, atol=1e-5)


def test_decisive_words_at_the_end_are_read_by_windows_not_by_truncation(tokenizer):
    model = Counting(tokenizer)
    good, bad = FILLER + "好好好", FILLER + "坏坏坏"
    truncated = model.predict_proba([good, bad])
    np.testing.assert_array_equal(truncated, [[0.5, 0.5], [0.5, 0.5]])  # the end is never read
    for rule in COMBINE_RULES:
        windowed = model.predict([good, bad], long_text=LongText("window", combine=rule))
        assert [p.label_name for p in windowed] == ["positive", "negative"], rule
        assert all(p.confidence > 0.5 for p in windowed)


def test_every_token_is_in_a_window_and_windows_share_sorted_batches(tokenizer):
    model = Counting(tokenizer)  # 32 tokens: windows of 30 text tokens, 15 apart
    texts = [FILLER[:n] + "好" for n in (5, 29, 30, 44, 45, 200)] + ["坏" * 120]
    preds = model.predict(texts, batch_size=4, long_text="window")
    for text, pred in zip(texts, preds, strict=True):
        n = len(text)  # one token a character
        assert pred.windows == (1 if n <= 30 else 1 + math.ceil((n - 30) / 15)), n
        assert pred.label_name == ("negative" if "坏" in text else "positive")  # the last token is read
    lengths = [n for batch in model.batches for n in batch]
    total = sum(p.windows for p in preds)
    assert len(model.batches) == math.ceil(total / 4) and len(lengths) == total
    assert lengths == sorted(lengths)  # the windows of all posts, sorted by length across posts


def test_stride(tokenizer):
    model = Counting(tokenizer)
    text = FILLER[:100]
    assert model.predict([text], long_text=LongText("window", stride=29))[0].windows == 1 + math.ceil(70 / 29)
    assert model.predict([text], long_text=LongText("window", stride=1))[0].windows == 71
    for stride in (30, 31, 500):
        with pytest.raises(UserError) as e:
            model.predict([text], long_text=LongText("window", stride=stride))
        assert str(e.value) == (f"--stride {stride}: must be less than a window's 30 text tokens (the max length "
                                f"less [CLS] and [SEP]), so that windows overlap")
    for stride in (0, -3, 2.5, True):
        with pytest.raises(UserError, match="at least 1"):
            LongText("window", stride=stride)
    with pytest.raises(UserError, match="choose one of truncate, window"):
        LongText("whole")
    with pytest.raises(UserError, match="choose one of mean, mean-logits, max-confidence"):
        LongText("window", combine="vote")


def test_combining_rules_on_known_logits():
    logits = np.array([[0, 2], [0, 0], [3, 0], [1, 1]], dtype=np.float32)  # text 0: windows 0-2; text 1: 3
    owner = np.array([0, 0, 0, 1])
    p = np.exp(logits / 2) / np.exp(logits / 2).sum(axis=1, keepdims=True)
    mean = WindowScores(logits, owner, 2, "mean").probabilities(2.0)
    np.testing.assert_allclose(mean, [p[:3].mean(axis=0), p[3]])
    z = logits[:3].mean(axis=0) / 2
    np.testing.assert_allclose(WindowScores(logits, owner, 2, "mean-logits").probabilities(2.0)[0],
                               np.exp(z) / np.exp(z).sum())
    np.testing.assert_allclose(WindowScores(logits, owner, 2, "max-confidence").probabilities(np.array([2.0, 1.0])),
                               [p[2], [0.5, 0.5]])
    np.testing.assert_array_equal(WindowScores(logits, owner, 2).windows, [3, 1])


def test_calibration_applies_to_each_window(tokenizer):
    hot = Counting(tokenizer, temperature=2.0)
    probs = hot.predict_proba([FILLER[:40] + "好"], long_text="window")[0]
    # windows [0, 30) and [15, 41): logits (0, 0) and (0, 1), each divided by T = 2 before the mean
    assert probs[1] == pytest.approx((0.5 + 1 / (1 + math.exp(-0.5))) / 2)
    raw = hot.predict_proba([FILLER[:40] + "好"], long_text="window", calibrated=False)[0]
    assert raw[1] == pytest.approx((0.5 + 1 / (1 + math.exp(-1))) / 2)


# ---- counts and reports -----------------------------------------------------------------------------------
def write_csv(path: Path, texts: list[str], labels: list[int] | None = None) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review"] if labels is None else ["label", "review"])
        writer.writerows([t] if labels is None else [y, t] for t, y in zip(texts, labels or texts))
    return path


def read_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_streaming_reports_windows_and_truncation(predictor, tmp_path, caplog):
    source = write_csv(tmp_path / "posts.csv", [*SHORT[:3], LONG, LONG[::-1]])
    with caplog.at_level(logging.WARNING):
        predict_file(predictor, source, tmp_path / "truncated.csv")
    assert "2 text(s) longer than 128 tokens were truncated to 128" in caplog.messages
    caplog.clear()
    windowed = Predictor.from_adapters([predictor.adapters[predictor.default].path], device="cpu")
    windowed.long_text = LongText("window")
    with caplog.at_level(logging.WARNING):
        predict_file(windowed, source, tmp_path / "windows.csv")
    assert ("2 text(s) longer than 128 tokens were read whole, in overlapping windows of 128 tokens 63 apart"
            in caplog.messages)
    a, b = read_rows(tmp_path / "truncated.csv"), read_rows(tmp_path / "windows.csv")
    assert list(a[0]) == list(b[0])  # the same columns
    for x, y, fits in zip(a, b, [True] * 3 + [False] * 2, strict=True):
        difference = abs(float(x["prob_positive"]) - float(y["prob_positive"]))
        assert difference < 1e-5 if fits else difference > 1e-4
    # A run interrupted under one reading must not resume under the other: its fingerprint says which.
    assert long_text_option(predictor) == {}
    assert long_text_option(windowed) == {"long_text": {"mode": "window", "stride": None, "combine": "mean"}}


def test_evaluate_reports_the_windows(predictor, tmp_path):
    data = write_csv(tmp_path / "labelled.csv", [*SHORT[:5], LONG], [0, 1, 0, 1, 0, 1])
    labelled = load_labelled(data, min_classes=1)
    plain = evaluate(predictor, labelled)
    assert "long_text" not in plain
    windowed = Predictor.from_adapters([predictor.adapters[predictor.default].path], device="cpu")
    windowed.long_text = LongText("window")
    report = evaluate(windowed, labelled)
    assert {k: report[k] for k in ("long_text", "stride", "combine", "texts_in_windows", "windows")} == {
        "long_text": "window", "stride": 63, "combine": "mean", "texts_in_windows": 1, "windows": 5 + 4}


def test_serve_reads_windows_server_wide_and_per_request(predictor):
    texts = [SHORT[0], LONG]
    truncated = predictor.predict_proba(texts)
    windowed = predictor.predict_proba(texts, long_text="window")

    def probs(client, **extra):
        reply = client.post("/v1/predict", json={"texts": texts, **extra})
        assert reply.status_code == 200, reply.text
        return np.array([list(p["probabilities"].values()) for p in reply.json()["predictions"]])

    with running(create_app(predictor, long_text="window")) as url, httpx.Client(base_url=url, timeout=60) as c:
        np.testing.assert_allclose(probs(c), windowed, atol=2e-6)
        np.testing.assert_allclose(probs(c, long_text="truncate"), truncated, atol=2e-6)
        assert c.post("/v1/predict", json={"texts": texts, "long_text": "all"}).status_code == 422
        # Explanations cover the first window: refused for texts read in windows, not for truncated ones.
        refused = c.post("/v1/predict", json={"texts": texts, "explain": True})
        # 409: a valid request whose two options cannot go together (422 is for requests the schema refuses)
        assert (refused.status_code, refused.json()) == (409, {"error": (
            'explain covers a text\'s first max-length tokens only, not windows: ask with "long_text": "truncate"')})
        assert probs(c, long_text="truncate", explain=True).shape == (2, 2)
    with running(create_app(predictor)) as url, httpx.Client(base_url=url, timeout=60) as c:
        np.testing.assert_allclose(probs(c), truncated, atol=2e-6)
        np.testing.assert_allclose(probs(c, long_text="window"), windowed, atol=2e-6)
    with pytest.raises(UserError, match="--stride 126: must be less than"):
        create_app(predictor, long_text="window", stride=126)


# ---- the command line -------------------------------------------------------------------------------------
def test_cli_predict_reads_long_texts_in_windows(cli, sample_adapter, predictor, caplog):
    from weibo_sentiment.cli.predict import result_line

    common = ["predict", "--adapter", sample_adapter, "--device", "cpu", "--text", SHORT[0], "--text", LONG]
    with caplog.at_level("WARNING"):
        result = cli(*common, "--long-text", "window")
    assert result.code == 0, result.err
    assert ("1 text(s) longer than 128 tokens were read whole, in overlapping windows of 128 tokens 63 apart"
            in caplog.messages)
    expected = predictor.predict([SHORT[0], LONG], long_text="window")
    assert result.out.splitlines()[1::2] == [result_line(p) for p in expected]
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert cli(*common, "--long-text", "window", "--stride", "20").code == 0
    assert "1 text(s) longer than 128 tokens were read whole, in overlapping windows of 128 tokens 20 apart" \
        in caplog.messages
    refused = cli(*common, "--long-text", "window", "--stride", "126")
    assert (refused.code, refused.err.splitlines()) == (2, [
        "error: --stride 126: must be less than a window's 126 text tokens (the max length less [CLS] and [SEP]), "
        "so that windows overlap"])
    alone = cli(*common, "--stride", "20")
    assert (alone.code, alone.err.splitlines()) == (2, ["error: --stride 20: only with --long-text window"])
    explained = cli(*common, "--long-text", "window", "--explain")
    assert (explained.code, explained.err.splitlines()) == (2, [
        "error: --explain covers a text's first max-length tokens only: not with --long-text window"])


def test_cli_evaluate_reports_the_windows(cli, sample_adapter, tmp_path):
    import json

    data = write_csv(tmp_path / "labelled.csv", [*SHORT[:5], LONG], [0, 1, 0, 1, 0, 1])
    result = cli("evaluate", "--adapter", sample_adapter, "--device", "cpu", "--data", data, "--long-text", "window",
                 "--print-json")
    assert result.code == 0, result.err
    assert ("long texts read whole: 1 text(s) longer than the max length, 9 windows in all (stride 63, mean of "
            "their probabilities)") in result.out.splitlines()
    assert json.loads(result.out.splitlines()[-1])["windows"] == 9
