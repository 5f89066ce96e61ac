"""Explanations as data: a planted sentiment word is the top span, spans are the post's own characters."""

from __future__ import annotations

import csv
import json
import random

import httpx
import pyarrow.parquet as pq
import pytest
import torch

from weibo_sentiment.errors import UserError
from weibo_sentiment.explanation import NOT_TORCH, explain, text_units
from weibo_sentiment.inference import Predictor
from weibo_sentiment.training import TrainConfig, train

FILLER = "今天我们去公园看到很多人在路上吃饭上班回家朋友一起电影时间下午晚上城市地铁"
PLANTED = {0: "烂", 1: "赞"}  # one-character sentiment words: 烂 (rotten, lousy), 赞 (great, a like)
MIXED = ["我觉得 iPhone15 太差了[哈哈]😀 ok", "👨‍👩‍👧好 unbelievable!! [good][din推撞]", "[1] 不是表情，[泪]是"]


def post(rng: random.Random, label: int | None) -> str:
    chars = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
    if label is not None:
        chars.insert(rng.randint(0, len(chars)), PLANTED[label])
    return "".join(chars)


@pytest.fixture(scope="module")
def planted_adapter(tmp_path_factory, tiny_base):
    """An adapter of the tiny model trained where the planted word alone decides the label. Filler-only posts
    come once with each label, so the model learns that filler carries no sentiment."""
    rng = random.Random(0)
    rows = [(post(rng, label), label) for label in [0, 1] * 200]
    rows += [(text, label) for text in (post(rng, None) for _ in range(50)) for label in (0, 1)]
    rng.shuffle(rows)
    tmp = tmp_path_factory.mktemp("planted")
    with (tmp / "planted.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("review", "label"), *rows])
    train(TrainConfig(data=str(tmp / "planted.csv"), base_model=str(tiny_base), output=str(tmp / "adapter"),
                      epochs=3, lr=1e-3, logging_steps=1000))
    return tmp / "adapter"


@pytest.fixture(scope="module")
def predictor(planted_adapter):
    return Predictor.from_adapters([planted_adapter])


def test_top_span_is_the_planted_word(predictor):
    rng = random.Random(5)
    labels = [0, 1] * 20
    texts = [post(rng, label) for label in labels]
    explanations = explain(predictor, texts)
    predictions = predictor.predict(texts)
    assert sum(p.label == label for p, label in zip(predictions, labels)) >= 0.9 * len(texts)  # the task is learned
    for text, label, e, p in zip(texts, labels, explanations, predictions):
        assert e.label == p.label and e.adapter == "adapter"
        assert e.probability == pytest.approx(p.confidence, abs=1e-5)  # the calibrated probability explained
        span, weight = e.top(1)[0]
        assert span == PLANTED[label], (text, e.top(3))
        # Positive weights support the predicted label: the planted word's, unless the model got the post wrong.
        assert (weight > 0) == (p.label == label), (text, e.label_name, e.top(3))
        # Completeness: the weights add up to p(post) - p(baseline), the baseline being the post's words as [PAD].
        assert e.baseline_probability == pytest.approx(baseline_probability(predictor, text, e.label), abs=1e-5)
        assert sum(w for *_, w in e.units) == pytest.approx(e.probability - e.baseline_probability, abs=0.01)
        assert abs(e.delta) < 0.01 and e.n_steps == 16


def baseline_probability(predictor, text: str, label: int) -> float:
    ids = predictor.tokenizer([text], return_tensors="pt")["input_ids"]
    ids[0, 1:-1] = predictor.tokenizer.pad_token_id
    with torch.no_grad():
        logits = predictor.model(input_ids=ids).logits
    return float(torch.softmax(logits / predictor.temperature(), -1)[0, label])


def test_spans_are_the_original_characters(predictor):
    explanations = explain(predictor, MIXED)
    spans = [[s for s, _ in e.top(None)] for e in explanations]
    assert sorted(spans[0], key=MIXED[0].index) == ["我", "觉", "得", "iPhone15", "太", "差", "了", "[哈哈]", "😀",
                                                   "ok"]
    assert sorted(spans[1], key=MIXED[1].index) == ["👨‍👩‍👧", "好", "unbelievable", "!", "!", "[good]",
                                                   "[din推撞]"]
    assert "[1]" not in spans[2] and "[泪]" in spans[2] and "1" in spans[2]  # [1] is no emoticon
    for text, e in zip(MIXED, explanations):
        for start, end, _ in e.units:
            assert text[start:end].strip() == text[start:end] != ""
        assert not any("##" in s or "[UNK]" in s for s in (text[s:e] for s, e, _ in e.units))
        assert [s for s, _ in e.top(None)] == [e.text[s:t] for s, t, _ in sorted(e.units, key=lambda u: -abs(u[2]))]


def test_units_follow_word_ids(predictor):
    # Units without a model: WordPiece pieces of one word join, an emoticon joins the words it overlaps.
    text = "超级unbelievable[哈哈]"
    encoded = predictor.tokenizer([text], return_offsets_mapping=True)
    units = text_units(text, encoded["offset_mapping"][0], encoded.word_ids(0))
    assert [text[u[0]:u[1]] for u in units] == ["超", "级", "unbelievable", "[哈哈]"]
    assert [p for u in units for p in u[2:]] == list(range(1, len(encoded["input_ids"][0]) - 1))


def test_top_k(predictor):
    e = explain(predictor, [MIXED[0]])[0]
    assert len(e.top(3)) == 3 and len(e.top(1)) == 1 and len(e.top(50)) == len(e.units) == 10
    weights = [abs(w) for _, w in e.top(None)]
    assert weights == sorted(weights, reverse=True)


def test_routed_adapters_explain_with_their_own(planted_adapter, sample_adapter):
    rng = random.Random(9)
    texts = [post(rng, 1), post(rng, 0), "服务态度差，价格又贵"]
    both = Predictor.from_adapters({"planted": planted_adapter, "sample": sample_adapter})
    routed = explain(both, texts, ["sample", None, "sample"])
    for name, path, rows in (("planted", planted_adapter, [1]), ("sample", sample_adapter, [0, 2])):
        alone = explain(Predictor.from_adapters({name: path}), [texts[i] for i in rows])
        for i, e in zip(rows, alone):
            assert routed[i].adapter == name
            assert routed[i].label == e.label
            assert [u[:2] for u in routed[i].units] == [u[:2] for u in e.units]
            assert [u[2] for u in routed[i].units] == pytest.approx([u[2] for u in e.units], abs=1e-4)
    assert both.default == "planted"
    assert both.predict_proba(texts) == pytest.approx(Predictor.from_adapters([planted_adapter]).predict_proba(texts),
                                                      abs=1e-5)  # the default adapter is selected again


@pytest.fixture(scope="module")
def onnx(tmp_path_factory, planted_adapter):
    from weibo_sentiment.exporters.onnx import export_onnx
    from weibo_sentiment.inference import OnnxPredictor

    return OnnxPredictor(export_onnx(planted_adapter, tmp_path_factory.mktemp("onnx") / "export"))


def test_refusals(predictor, onnx):
    with pytest.raises(UserError) as info:
        explain(onnx, ["好"])
    assert str(info.value) == NOT_TORCH
    with pytest.raises(UserError, match="text 2 is empty"):
        explain(predictor, ["好", " "])
    with pytest.raises(UserError, match="unknown adapter 'x'"):
        explain(predictor, ["好"], ["x"])


def test_predict_explain_writes_spans_in_every_format(cli, planted_adapter, predictor, tmp_path):
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("review", "id"), (MIXED[0], "a"), ("今天公园赞", "b")])
    expected = [e.top(2) for e in explain(predictor, [MIXED[0], "今天公园赞"])]
    for name in ("out.csv", "out.jsonl", "out.parquet"):
        result = cli("predict", "--adapter", planted_adapter, "--input", src, "--output", tmp_path / name,
                     "--explain", "2", "--id-column", "id")
        assert result.code == 0, result.err
    rows = list(csv.DictReader((tmp_path / "out.csv").open(encoding="utf-8")))
    assert list(rows[0])[-2:] == ["explanation", "completeness_error"]
    assert [json.loads(r["explanation"]) for r in rows] == expected  # a JSON list in a CSV cell
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["explanation"] for r in lines] == expected and [r["id"] for r in lines] == ["a", "b"]
    assert all(abs(r["completeness_error"]) < 0.01 for r in lines)
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [[[s["span"], s["weight"]] for s in r["explanation"]] for r in table] == expected

    result = cli("predict", "--adapter", planted_adapter, "--text", "今天公园赞", "--explain")
    assert result.code == 0, result.err
    assert result.out.splitlines()[2].startswith('Explanation: [["赞", ')


def test_predict_explain_refusals(cli, planted_adapter):
    for args, message in [(("--backend", "onnx", "--text", "好"), NOT_TORCH),
                          (("--text", "好", "--explain", "0"), "--explain 0: the number of spans must be"),
                          ((), "--explain is for --text and --input")]:
        result = cli("predict", "--adapter", planted_adapter, "--explain", *args)
        assert result.code == 2 and message in result.err and "Traceback" not in result.err, result.err


def test_api_explains_on_request(predictor, onnx):
    from weibo_sentiment.serve import create_app
    from weibo_sentiment.serve.schemas import MAX_EXPLAIN_TEXTS

    from .serving_helpers import running

    texts = ["今天公园赞", MIXED[0]]
    with running(create_app(predictor)) as url, httpx.Client(base_url=url, timeout=60) as client:
        plain = client.post("/v1/predict", json={"texts": texts}).json()["predictions"]
        assert all(set(p) == {"label", "label_name", "confidence", "probabilities"} for p in plain)
        reply = client.post("/v1/predict", json={"texts": texts, "explain": True, "explain_top": 3})
        assert reply.status_code == 200, reply.text
        for text, p, e in zip(texts, reply.json()["predictions"], explain(predictor, texts)):
            assert p["explanation"] == e.top(3) and abs(p["completeness_error"]) < 0.01
            assert [text[s:t] for s, t in p["explanation_offsets"]] == [s for s, _ in e.top(3)]
        too_many = client.post("/v1/predict", json={"texts": ["好"] * (MAX_EXPLAIN_TEXTS + 1), "explain": True})
        assert too_many.status_code == 413 and "texts to explain" in too_many.json()["error"]
    with running(create_app(onnx)) as url:
        reply = httpx.post(f"{url}/v1/predict", json={"texts": ["好"], "explain": True})
        assert (reply.status_code, reply.json()) == (422, {"error": NOT_TORCH})
