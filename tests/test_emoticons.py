"""Emoticons: what `strip_emoticons` removes and keeps, and `train --emoticon-dropout` (on the fly, per epoch,
deterministic, validation untouched, recorded, part of the resume identity)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import TrainerCallback

import weibo_sentiment.training as training
from weibo_sentiment.batches import encode
from weibo_sentiment.checkpoints import MARKER_FILE
from weibo_sentiment.data import load_labelled, stratified_split
from weibo_sentiment.emoticons import strip_emoticons
from weibo_sentiment.errors import UserError
from weibo_sentiment.modeling import load_tokenizer
from weibo_sentiment.sampling import EmoticonDropout
from weibo_sentiment.training import TrainConfig, train

from .conftest import ROOT, SAMPLE

HELDOUT = ROOT / "examples" / "weibo_sample_heldout.csv"

REMOVED = [  # (text, what is left)
    ("太好看了[哈哈]", "太好看了"),
    ("[泪][泪]又加班[抓狂]", "又加班"),
    ("[good] 赞[din推撞][江南style]", "赞"),
    ("这是什么[?]", "这是什么"),
    ("我爱你❤️", "我爱你"),  # with the emoji presentation selector U+FE0F
    ("我爱你❤", "我爱你"),
    ("笑死😂😂", "笑死"),
    ("点赞👍🏽", "点赞"),  # skin tone
    ("一家人👨\u200d👩\u200d👧\u200d👦", "一家人"),  # ZWJ sequence, whole
    ("🏳️\u200d🌈骄傲", "骄傲"),
    ("中国队🇨🇳加油", "中国队加油"),  # a flag: two regional indicators
    ("1️⃣第一名", "第一名"),  # keycap
    ("天气☀️真好✨", "天气真好"),
    ("©️版权", "版权"),  # a typographic symbol as emoji (U+FE0F)
    ("🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f苏格兰", "苏格兰"),  # tag sequence
]
KEPT = [
    "【转发】今天天气不错，《新闻联播》说“明天下雨”！？",  # CJK brackets, quotes and punctuation
    "参考文献[1]和[2013]",  # digits only: reference numbers
    "[原文地址：http://t.cn/aN59ie  ]",  # spaced / long bracketed text
    "[友情提示：本周六晚这一段感人整蛊请务必自备纸巾]",
    "★五星推荐☆ → ①②",  # stars, arrows and circled digits are not emoji
    "©2013 新浪 ™",  # typographic symbols without U+FE0F
    "开心(^_^) :)",  # kaomoji and ASCII smileys are not emoji characters
    "第10000个粉丝",
]


@pytest.mark.parametrize("text, left", REMOVED)
def test_strip_removes_bracket_emoticons_and_emoji(text, left):
    assert strip_emoticons(text) == left


@pytest.mark.parametrize("text", KEPT)
def test_strip_keeps_cjk_text_punctuation_and_other_brackets(text):
    assert strip_emoticons(text) == text


def test_a_post_of_only_emoticons_becomes_empty():
    assert strip_emoticons(" [哈哈] 😀 [泪] ") == ""


# ---- the dataset: which texts are drawn without emoticons ---------------------------------------------------
@pytest.fixture(scope="module")
def sample_split():
    (texts, labels), _ = stratified_split(load_labelled(SAMPLE), 0.1, 42)
    texts = [*texts, "[哈哈][哈哈]", "没有表情"]  # one that is nothing but emoticons, one with none
    return texts, [*labels, 1, 0]


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    return load_tokenizer(tiny_base)


def drawn_stripped(dataset: EmoticonDropout, epoch: int) -> np.ndarray:
    """Which examples `dataset` gives without emoticons in `epoch`, read from what it returns."""
    dataset.set_epoch(epoch)
    return np.array([dataset[i] is not dataset.original[i] for i in range(len(dataset))])


def test_dropout_draws_a_seeded_subset_per_epoch(sample_split, tokenizer):
    texts, labels = sample_split
    has = np.array([strip_emoticons(t) not in (t, "") for t in texts])
    assert has.sum() > 300 and not has[-2:].any()
    never = EmoticonDropout.build(tokenizer, texts, labels, 32, 0.0, 42)
    assert not drawn_stripped(never, 0).any() and not drawn_stripped(never, 1).any()
    always = EmoticonDropout.build(tokenizer, texts, labels, 32, 1.0, 42)
    assert (drawn_stripped(always, 0) == has).all() and (drawn_stripped(always, 3) == has).all()
    # The stripped variant is the stripped text's encoding; the empty one is kept whole.
    i = int(np.flatnonzero(has)[0])
    assert always[i]["input_ids"] == encode(tokenizer, [strip_emoticons(texts[i])], None, 32)[0]["input_ids"]
    assert always[len(texts) - 2] is always.original[len(texts) - 2]
    assert always.lengths == [len(x["input_ids"]) for x in always.original]  # length grouping: the originals

    half = EmoticonDropout.build(tokenizer, texts, labels, 32, 0.5, 42)
    epoch0, epoch1 = drawn_stripped(half, 0), drawn_stripped(half, 1)
    assert not (epoch0 & ~has).any() and not (epoch1 & ~has).any()
    assert 0.4 < epoch0[has].mean() < 0.6 and 0.4 < epoch1[has].mean() < 0.6
    assert 0.3 < (epoch0 != epoch1)[has].mean() < 0.7  # another subset, independent of the first
    again = EmoticonDropout.build(tokenizer, texts, labels, 32, 0.5, 42)
    assert (drawn_stripped(again, 1) == epoch1).all() and (drawn_stripped(again, 0) == epoch0).all()
    # A pure function of (seed, epoch, index): the order of access does not matter, and another seed differs.
    half.set_epoch(1)
    backwards = np.array([half[i] is not half.original[i] for i in reversed(range(len(texts)))])[::-1]
    assert (backwards == epoch1).all()
    other = EmoticonDropout.build(tokenizer, texts, labels, 32, 0.5, 7)
    assert (drawn_stripped(other, 0) != epoch0).any()


# ---- in training --------------------------------------------------------------------------------------------
class Recording(training.PaddedBatches):
    """Collates as usual and records every example with the phase it was collated in (set by `Phases`)."""

    phase = "before"
    seen: list[tuple[str, tuple[int, ...]]] = []

    def __call__(self, features):
        Recording.seen.extend((Recording.phase, tuple(f["input_ids"])) for f in features)
        return super().__call__(features)


class Phases(TrainerCallback):
    def __init__(self):
        self.epoch = -1

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch += 1
        Recording.phase = f"train {self.epoch}"

    def on_epoch_end(self, args, state, control, **kwargs):
        Recording.phase = "evaluate"  # the per-epoch evaluation follows the end of the epoch

    def on_train_end(self, args, state, control, **kwargs):
        Recording.phase = "after"


def recorded_run(tmp_path, tiny_base, monkeypatch, **settings) -> tuple[dict, list]:
    monkeypatch.setattr(training, "PaddedBatches", Recording)
    Recording.seen, Recording.phase = [], "before"
    config = TrainConfig(data=str(SAMPLE), validation_data=str(HELDOUT), base_model=str(tiny_base),
                         output=str(tmp_path / "out"), max_length=32, lr=0.002, logging_steps=1000, **settings)
    result = train(config, callbacks=[Phases()])
    return result.run, list(Recording.seen)


def test_dropout_in_training_strips_half_per_epoch_and_leaves_validation(tmp_path, tiny_base, tokenizer,
                                                                          monkeypatch):
    from collections import Counter

    from weibo_sentiment.evaluation import evaluate
    from weibo_sentiment.inference import Predictor

    run, seen = recorded_run(tmp_path, tiny_base, monkeypatch, epochs=2, emoticon_dropout=0.5)
    train_data = load_labelled(SAMPLE)
    expected = EmoticonDropout.build(tokenizer, train_data.texts, train_data.labels, 32, 0.5, 42)
    drawn = {}
    for epoch in (0, 1):
        # Every training text once per epoch, stripped exactly where the seeded draw for this epoch says.
        drawn[epoch] = Counter(ids for phase, ids in seen if phase == f"train {epoch}")
        assert drawn[epoch] == Counter(tuple(x["input_ids"]) for x in (
            expected.stripped[i] if strip else expected.original[i] for i, strip in enumerate(expected.strips(epoch))))
        has = np.array([s is not None for s in expected.stripped])
        assert 0.4 < expected.strips(epoch)[has].mean() < 0.6
    assert drawn[0] != drawn[1] and (expected.strips(0) != expected.strips(1)).any()

    # Validation (the per-epoch evaluations and the calibration pass) reads the texts as they are; after them comes
    # the one pass over the stripped texts.
    heldout = load_labelled(HELDOUT).texts
    val = Counter(tuple(x["input_ids"]) for x in encode(tokenizer, heldout, None, 32))
    val_stripped = Counter(tuple(x["input_ids"])
                           for x in encode(tokenizer, [strip_emoticons(t) or "。" for t in heldout], None, 32))
    evaluated = [ids for phase, ids in seen if phase == "evaluate"]
    assert Counter(evaluated) == Counter({k: 2 * v for k, v in val.items()})  # two epochs
    after = [ids for phase, ids in seen if phase == "after"]
    assert Counter(after[-len(heldout):]) == val_stripped != val
    assert all(ids in val for ids in after[:-len(heldout)])

    assert run["training"]["emoticon_dropout"] == 0.5
    assert json.loads((tmp_path / "out" / "run.json").read_text())["validation_stripped"] == run["validation_stripped"]
    assert set(run["validation_stripped"]) == {"accuracy", "macro_f1"}
    report = evaluate(Predictor.from_adapters([tmp_path / "out"], base_model=tiny_base, device="cpu"),
                      load_labelled(HELDOUT), strip=True)
    assert run["validation_stripped"]["accuracy"] == pytest.approx(report["accuracy"], abs=1.5 / len(heldout))
    assert run["validation_stripped"]["macro_f1"] == pytest.approx(report["macro_f1"], abs=0.03)


def test_without_dropout_every_text_is_drawn_as_it_is(tmp_path, tiny_base, tokenizer, monkeypatch):
    run, seen = recorded_run(tmp_path, tiny_base, monkeypatch, max_steps=6)
    original = {tuple(x["input_ids"]) for x in encode(tokenizer, load_labelled(SAMPLE).texts, None, 32)}
    drawn = [ids for phase, ids in seen if phase == "train 0"]
    assert len(drawn) >= 6 * 16 and all(ids in original for ids in drawn)  # (the loader may collate one ahead)
    assert run["training"]["emoticon_dropout"] == 0.0 and "accuracy" in run["validation_stripped"]


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_outside_0_1_is_refused(tmp_path, tiny_base, cli, p):
    result = cli("train", "--data", SAMPLE, "--base-model", tiny_base, "--output", tmp_path / "out",
                 "--emoticon-dropout", p)
    assert (result.code, result.err) == (2, f"error: --emoticon-dropout {p:g}: must be between 0 and 1\n")
    assert not (tmp_path / "out").exists()


class StopAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 6:
            raise KeyboardInterrupt


def test_resume_with_another_dropout_is_refused(tmp_path, tiny_base, cli):
    ck = tmp_path / "ck"
    config = TrainConfig(data=str(SAMPLE), base_model=str(tiny_base), output=str(tmp_path / "out"),
                         checkpoint_dir=str(ck), max_length=32, save_steps=5, logging_steps=1000,
                         emoticon_dropout=0.5)
    with pytest.raises(UserError, match="interrupted"):
        train(config, callbacks=[StopAt()])
    args = ["train", "--data", SAMPLE, "--base-model", tiny_base, "--output", tmp_path / "out", "--checkpoint-dir",
            ck, "--max-length", "32", "--save-steps", "5", "--resume"]
    for other in ([], ["--emoticon-dropout", "0.25"]):
        result = cli(*args, *other)
        was = "0.0" if not other else "0.25"
        assert (result.code, result.err) == (2, f"error: --resume: the checkpoints in {ck} are of a different run "
                                                f"(--emoticon-dropout was 0.5, now {was}); resume with the same data "
                                                f"and settings, or pass --restart to discard them\n")
    # Checkpoints written before the setting existed were trained without it.
    old = Path(shutil.copytree(ck, tmp_path / "old"))
    marker = json.loads((old / MARKER_FILE).read_text())
    del marker["identity"]["emoticon_dropout"]
    (old / MARKER_FILE).write_text(json.dumps(marker))
    args[args.index(ck)] = old
    result = cli(*args, "--emoticon-dropout", "0.5")
    assert result.code == 2 and "(--emoticon-dropout was 0.0, now 0.5)" in result.err
