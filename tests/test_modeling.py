"""Base models: random ones of the right shape, and the hub path failing clearly when offline."""

from __future__ import annotations

import json

import pytest
import torch

from weibo_sentiment.errors import UserError
from weibo_sentiment.modeling import init_model, load_classifier, load_tokenizer, resolve_base_model

from .conftest import SAMPLE


def test_tiny_base_shape_and_tokenizer(tiny_base):
    config = json.loads((tiny_base / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["vocab_size"]) == (2, 128, 21128)
    tokenizer = load_tokenizer(tiny_base)
    # The real vocabulary's ids: [CLS]=101, [SEP]=102, 哈=1506; no token_type_ids reach GPT-2.
    encoded = tokenizer("[哈哈]")
    assert encoded["input_ids"] == [101, 138, 1506, 1506, 140, 102]
    assert "token_type_ids" not in encoded


def test_classifier_sets_special_ids_and_labels(tiny_base):
    model = load_classifier(tiny_base, ["negative", "positive"])
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == (0, 101, 102)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.score.out_features == 2


def test_last_token_pooling_ignores_right_padding(tiny_base):
    model = load_classifier(tiny_base, ["negative", "positive"]).eval()
    tokenizer = load_tokenizer(tiny_base)
    alone = tokenizer(["好"], return_tensors="pt")
    padded = tokenizer(["好", "这是一条更长的微博"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = model(**alone).logits[0]
        b = model(**padded).logits[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_vocab_from_data(tmp_path):
    base = init_model(tmp_path / "b", "tiny", vocab_from_data=SAMPLE)
    vocab = (base / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert vocab[0] == "[PAD]" and vocab[100:105] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]", vocab[104]]
    assert "哈" in vocab
    assert load_tokenizer(base)("哈")["input_ids"][1] == vocab.index("哈")


def test_init_model_needs_a_vocabulary(tmp_path):
    with pytest.raises(UserError, match="pass --vocab FILE"):
        init_model(tmp_path / "b", "tiny")


def test_offline_hub_id_fails_fast_with_advice(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    result = cli("train", "--data", SAMPLE, "--model-dir", tmp_path / "models")
    assert result.code == 2
    assert result.err.strip() == (
        f"error: base model 'uer/gpt2-chinese-cluecorpussmall' is not in {tmp_path / 'models'} and cannot be "
        "downloaded (HF_HUB_OFFLINE is set); pass --base-model DIR with a local model directory "
        "(e.g. one written by `weibo-sentiment init-model`)"
    )


def test_downloaded_model_dir_is_reused(tmp_path, tiny_base):
    import shutil

    model_dir = tmp_path / "models" / "gpt2-chinese"
    shutil.copytree(tiny_base, model_dir)
    (model_dir / "weibo_sentiment_source.json").write_text('{"base_model": "uer/gpt2-chinese-cluecorpussmall"}')
    assert resolve_base_model("uer/gpt2-chinese-cluecorpussmall", model_dir) == model_dir
    with pytest.raises(UserError, match="holds uer/gpt2-chinese-cluecorpussmall, not other/model"):
        resolve_base_model("other/model", model_dir)


def test_missing_local_dir(tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        resolve_base_model(str(tmp_path / "nope"))
