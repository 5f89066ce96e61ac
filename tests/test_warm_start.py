"""train --init-adapter: an adapter continued from its parent's weights, on new data plus a seeded replay sample;
refused on another base or label set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weibo_sentiment.data import load_labelled
from weibo_sentiment.emoticons import strip_emoticons
from weibo_sentiment.errors import UserError
from weibo_sentiment.training import TrainConfig, train
from weibo_sentiment.warm_start import weights_sha256, with_replay

from .conftest import SAMPLE


@pytest.fixture(scope="module")
def corrections(tmp_path_factory) -> Path:
    """40 sample posts without their emoticons, standing in for an analyst's corrections."""
    data = load_labelled(SAMPLE)
    path = tmp_path_factory.mktemp("corrections") / "corrections.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "review"])
        writer.writerows((label, strip_emoticons(text) or "。") for text, label in zip(data.texts[:40], data.labels))
    return path


def test_a_continued_adapter_starts_from_its_parent_and_records_it(sample_adapter, corrections, tmp_path, cli):
    out = tmp_path / "child"
    # Learning rate 0: the weights stay where they started, so they show where that was.
    result = cli("train", "--init-adapter", sample_adapter, "--data", corrections, "--replay", SAMPLE,
                 "--replay-ratio", "1.5", "--output", out, "--epochs", "1", "--lr", "0", "--lora-r", "4")
    assert result.code == 0, result.err
    assert f"Continued from {sample_adapter.resolve()}" in result.out
    parent_weights, child_weights = (load_file(str(d / "adapter_model.safetensors")) for d in (sample_adapter, out))
    assert parent_weights.keys() == child_weights.keys()  # --lora-r 4 gave way to the parent's shape
    for key, value in parent_weights.items():
        torch.testing.assert_close(child_weights[key], value, msg=key)
    run, parent_run = (json.loads((d / "run.json").read_text(encoding="utf-8")) for d in (out, sample_adapter))
    assert run["parent"] == {"path": str(sample_adapter.resolve()), "weights_sha256": weights_sha256(sample_adapter),
                             "base_fingerprint": parent_run["base_fingerprint"],
                             "label_names": parent_run["label_names"], "best": parent_run["best"], "generation": 0}
    assert run["base_fingerprint"] == parent_run["base_fingerprint"] and run["lora"] == parent_run["lora"]
    assert run["data"]["replay"]["rows_kept"] == 60 and run["data"]["replay"]["ratio"] == 1.5
    assert run["rows"]["train"] + run["rows"]["validation"] == 100
    from weibo_sentiment.inference import Predictor

    both = Predictor.from_adapters({"parent": sample_adapter, "child": out}, device="cpu")  # loads as any adapter
    texts = ["服务态度差", "这部电影太好看了"]
    torch.testing.assert_close(both.predict_logits(texts, "child"), both.predict_logits(texts, "parent"))
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"continued from the adapter `{sample_adapter.name}`" in card and "| replay |" in card


def test_replay_is_seeded_and_leaves_out_the_texts_labelled_anew(sample_adapter, corrections):
    config = TrainConfig(init_adapter=str(sample_adapter), replay=str(SAMPLE), replay_ratio=2.0, data=str(corrections))
    new = load_labelled(corrections, label_names=["negative", "positive"])
    mixed, files = with_replay(config, new)
    again, _ = with_replay(config, new)
    other, _ = with_replay(TrainConfig(**{**config.__dict__, "seed": 7}), new)
    assert mixed.texts[:40] == new.texts and len(mixed.texts) == 120 and mixed.texts == again.texts
    assert other.texts != mixed.texts
    assert not set(mixed.texts[40:]) & set(new.texts)
    assert files["train"]["rows_kept"] == 40 and files["replay"]["rows_kept"] == 80


def test_a_warm_start_refuses_another_base_or_label_set(sample_adapter, corrections, tmp_path, cli, real_vocab):
    from weibo_sentiment.modeling import init_model

    other_base = init_model(tmp_path / "other", "tiny", vocab_file=real_vocab, seed=1)  # same shape, other weights
    out = tmp_path / "child"
    result = cli("train", "--init-adapter", sample_adapter, "--data", corrections, "--output", out,
                 "--base-model", other_base)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert f"--init-adapter {sample_adapter}: it was trained on base model" in result.err
    assert "continue it on its own base" in result.err
    result = cli("train", "--init-adapter", sample_adapter, "--data", corrections, "--output", out,
                 "--label-names", "neg", "neu", "pos")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "it has the labels negative, positive, not neg, neu, pos" in result.err
    three = tmp_path / "three.csv"
    three.write_text("label,review\n0,差\n1,好\n2,一般\n", encoding="utf-8")
    result = cli("train", "--init-adapter", sample_adapter, "--data", three, "--output", out)
    assert result.code == 2 and "label 2 is out of range (expected 0..1)" in result.err
    result = cli("train", "--data", corrections, "--replay", SAMPLE, "--output", out)
    assert result.code == 2 and "give the adapter with --init-adapter DIR" in result.err
    assert not out.exists()
    with pytest.raises(UserError, match="--replay-ratio -1: must be 0 or more"):
        train(TrainConfig(init_adapter=str(sample_adapter), data=str(corrections), replay_ratio=-1, output=str(out)))
