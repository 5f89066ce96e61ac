"""select: the posts most worth labelling (least confident, deduplicated, seeded) as a CSV to fill in."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from weibo_sentiment.errors import UserError
from weibo_sentiment.inference import AdapterInfo
from weibo_sentiment.selection import first_occurrences, normalise, select_posts


class FixedPredictor:
    """Probabilities fixed per text: P(positive) is the number after the last space."""

    def __init__(self):
        self.adapters = {"a": AdapterInfo("a", None, {"label_names": ["negative", "positive"]})}
        self.default = "a"
        self.seen: list[list[str]] = []

    def predict_proba(self, texts, adapter=None, batch_size=32, progress=False):
        self.seen.append(list(texts))
        p = np.array([float(t.rsplit(" ", 1)[1]) for t in texts])
        return np.stack([1 - p, p], axis=1)


TEXTS = ["甲 0.97", "乙 0.55", "丙 0.10", "丁 0.48", "戊 0.80", "己 0.30", "庚 0.62", "辛 0.01"]


def test_uncertainty_picks_the_least_confident_first():
    chosen = select_posts(FixedPredictor(), TEXTS, 3, "uncertainty")
    assert [c.text for c in chosen] == ["丁 0.48", "乙 0.55", "庚 0.62"]
    assert [c.label_name for c in chosen] == ["negative", "positive", "positive"]
    assert [round(c.confidence, 2) for c in chosen] == [0.52, 0.55, 0.62]
    assert [c.index for c in chosen] == [3, 1, 6]


def test_duplicates_up_to_width_case_and_space_are_offered_once():
    assert normalise("Ｈｅｌｌｏ　世界 ！") == normalise("hello世界!")
    texts = ["Ｏｋ 0.50", "ok  0.50", "OK 0.50", "别的 0.51", "别的 0.51"]
    assert first_occurrences(texts) == [0, 3]
    chosen = select_posts(FixedPredictor(), texts, 5, "uncertainty")
    assert [c.index for c in chosen] == [0, 3]


def test_random_is_a_seeded_sample_in_input_order():
    first = [c.index for c in select_posts(FixedPredictor(), TEXTS, 4, "random", seed=1)]
    assert first == sorted(first) and len(set(first)) == 4
    assert [c.index for c in select_posts(FixedPredictor(), TEXTS, 4, "random", seed=1)] == first
    others = {tuple(c.index for c in select_posts(FixedPredictor(), TEXTS, 4, "random", seed=s)) for s in range(8)}
    assert len(others) > 1
    predictor = FixedPredictor()
    select_posts(predictor, TEXTS, 2, "random", seed=1)
    assert len(predictor.seen[0]) == 2  # only the sample is scored


def test_bad_strategy_or_n_is_one_line():
    with pytest.raises(UserError, match="choose one of uncertainty, random"):
        select_posts(FixedPredictor(), TEXTS, 3, "margin")
    with pytest.raises(UserError, match="--n 0: must be at least 1"):
        select_posts(FixedPredictor(), TEXTS, 0)


def test_select_writes_a_csv_to_label_and_never_replaces_filled_labels(cli, sample_adapter, tmp_path):
    posts = tmp_path / "posts.csv"
    rows = [("p1", "这部电影太好看了"), ("p2", "服务态度差"), ("p3", "服务态度差 "), ("p4", "一般般吧"),
            ("p5", "排队两个小时结果卖完了")]
    with posts.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("mid", "review"), *rows])
    out = tmp_path / "to_label.csv"
    result = cli("select", "--adapter", sample_adapter, "--input", posts, "--n", "3", "--id-column", "mid",
                 "--output", out, "--device", "cpu")
    assert result.code == 0, result.err
    with out.open(encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == ["id", "review", "predicted_label", "confidence", "label"]
    assert len(written) == 3 and all(r["label"] == "" for r in written)
    assert [float(r["confidence"]) for r in written] == sorted(float(r["confidence"]) for r in written)
    assert len({r["review"].strip() for r in written}) == 3
    assert {r["id"] for r in written} <= {"p1", "p2", "p4", "p5"}  # p3 repeats p2
    assert cli("select", "--adapter", sample_adapter, "--input", posts, "--n", "2", "--output", out,
               "--device", "cpu").code == 0  # its own, still unlabelled: replaced
    text = out.read_bytes().replace(b",\r\n", b",positive\r\n", 1)
    out.write_bytes(text)
    result = cli("select", "--adapter", sample_adapter, "--input", posts, "--output", out)
    assert result.code == 2 and "1 label(s) are already filled in" in result.err
    assert out.read_bytes() == text
    result = cli("select", "--adapter", sample_adapter, "--input", posts, "--output", posts)
    assert result.code == 2 and "is this command's input" in result.err
