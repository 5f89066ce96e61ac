"""Pictures: training.png in every adapter, `evaluate --plot`, Chinese label names, and `train --report-to`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE
from weibo_sentiment import fonts, plots
from weibo_sentiment.calibration import softmax
from weibo_sentiment.errors import UserError
from weibo_sentiment.output import SOFTWARE, is_our_png

PNG = b"\x89PNG\r\n\x1a\n"
CATS = ["书籍", "平板", "手机", "水果", "洗发水", "热水器", "蒙牛", "衣服", "计算机", "酒店"]


def synthetic(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, calibrated and over-confident ('raw') probabilities of a decent k-class classifier."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 2.0
    return labels, softmax(logits), softmax(logits * 3)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def require_cjk_font() -> None:
    if plots.cjk_font() is None:
        pytest.fail("no font with CJK glyphs on this machine: install Debian's fonts-wqy-microhei (make test does "
                    f"when run as root) or set {plots.FONT_ENV} to a CJK font file", pytrace=False)


def test_adapter_has_training_png(sample_adapter):
    path = sample_adapter / "training.png"
    data = path.read_bytes()
    assert data.startswith(PNG) and is_our_png(data[:65536])
    assert 5_000 < len(data) < 150_000
    assert png_size(path) == (1000, 400)


def test_training_picture_failure_keeps_going(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no canvas today")

    monkeypatch.setattr(plots, "training_figure", broken)
    with caplog.at_level(logging.WARNING, logger="weibo_sentiment.plots"):
        plots.training_extras([{"loss": 0.7, "step": 1, "epoch": 0.1}])(tmp_path)  # no exception
    assert "training.png not written" in caplog.text and "no canvas today" in caplog.text
    assert not (tmp_path / "training.png").exists()


def test_training_figure_from_log_history(tmp_path):
    history = [{"loss": 0.7 - 0.01 * i, "step": 10 * (i + 1), "epoch": (i + 1) / 20} for i in range(40)]
    history += [{"eval_accuracy": 0.8 + 0.02 * e, "eval_macro_f1": 0.79 + 0.02 * e, "eval_loss": 0.5 - 0.02 * e,
                 "step": 200 * e, "epoch": float(e)} for e in (1, 2)]
    history.append({"train_loss": 0.5, "step": 400, "epoch": 2.0})
    path = plots.training_figure(history, tmp_path / "t.png")
    assert png_size(path) == (1000, 400)
    empty = plots.training_figure([], tmp_path / "empty.png")  # nothing logged: still a picture
    assert empty.read_bytes().startswith(PNG)


def test_evaluation_figure_synthetic(tmp_path):
    require_cjk_font()
    labels, probs, raw = synthetic(2000, 2)
    two = plots.evaluation_figure(tmp_path / "two.png", labels, probs, raw, ["负面", "正面"], title="测试 on test.csv")
    labels, probs, raw = synthetic(3000, 10, seed=1)
    ten = plots.evaluation_figure(tmp_path / "ten.png", labels, probs, raw, CATS)
    one_curve = plots.evaluation_figure(tmp_path / "one.png", labels, probs, None, CATS)
    for path in (two, ten, one_curve):
        assert png_size(path) == (1500, 520)
        assert is_our_png(path.read_bytes()[:65536])
        assert 20_000 < path.stat().st_size < 250_000


def test_chinese_labels_draw_without_glyph_warnings(tmp_path):
    require_cjk_font()
    labels, probs, raw = synthetic(500, 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.evaluation_figure(tmp_path / "cats.png", labels, probs, raw, CATS, title="online_shopping 购物")
        plots.training_figure([{"loss": 0.5, "step": 1, "epoch": 1.0}], tmp_path / "t.png", title="训练")
    assert [str(w.message) for w in caught if "Glyph" in str(w.message) or "missing from" in str(w.message)] == []


def test_without_cjk_font_ids_are_shown(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(fonts, "_candidates", lambda: [])
    fonts._cjk_font.cache_clear()
    try:
        labels, probs, raw = synthetic(300, 3)
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            path = plots.evaluation_figure(tmp_path / "ids.png", labels, probs, raw, ["负面", "neutral", "正面"])
        assert [str(w.message) for w in caught if "Glyph" in str(w.message)] == []
        assert "0 = 负面; 1 = neutral; 2 = 正面" in caplog.text and plots.FONT_ENV in caplog.text
        with Image.open(path) as image:
            assert image.info["Description"] == "labels: 0 = 负面; 1 = neutral; 2 = 正面"
            assert image.info["Software"] == SOFTWARE
    finally:
        fonts._cjk_font.cache_clear()


def test_evaluation_figure_checks_shapes(tmp_path):
    labels, probs, raw = synthetic(10, 2)
    with pytest.raises(ValueError):
        plots.evaluation_figure(tmp_path / "x.png", labels, probs, raw, ["a", "b", "c"])
    with pytest.raises(ValueError):
        plots.evaluation_figure(tmp_path / "x.png", labels, probs, raw[:5], ["a", "b"])


def test_is_our_png():
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    foreign = buffer.getvalue()
    assert not is_our_png(foreign)
    assert not is_our_png(b"")
    assert not is_our_png(b"Software\0weibo-sentiment")
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", "weibo-sentiment")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    assert is_our_png(buffer.getvalue())
    info = PngInfo()
    info.add_text("Comment", "Software weibo-sentiment")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG", pnginfo=info)
    assert not is_our_png(buffer.getvalue())


def test_evaluate_plot_end_to_end(cli, sample_adapter, tmp_path):
    out = tmp_path / "eval.png"
    result = cli("evaluate", "--adapter", sample_adapter, "--data", SAMPLE, "--plot", out)
    assert result.code == 0, result.err
    assert f"Plot written to {out}" in result.out
    assert png_size(out) == (1500, 520)
    first = out.read_bytes()
    assert is_our_png(first[:65536])
    # An earlier picture of ours is replaced, atomically; no temporary file is left.
    result = cli("evaluate", "--adapter", sample_adapter, "--data", SAMPLE, "--plot", out, "--strip-emoticons")
    assert result.code == 0, result.err
    assert out.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.png"]


@pytest.mark.parametrize("content", [b"my notes\n", None], ids=["text", "foreign-png"])
def test_evaluate_plot_refuses_foreign_file(cli, sample_adapter, tmp_path, content):
    if content is None:
        import io

        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
        content = buffer.getvalue()
    out = tmp_path / "mine.png"
    out.write_bytes(content)
    result = cli("evaluate", "--adapter", sample_adapter, "--data", SAMPLE, "--plot", out)
    assert result.code == 2
    assert "is not a picture written by weibo-sentiment" in result.err
    assert out.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.png"]


# ---- --report-to --------------------------------------------------------------------------------------------
def test_report_to_values(monkeypatch):
    from weibo_sentiment.recipe import report_to
    from weibo_sentiment.training import TrainConfig

    assert report_to(TrainConfig()) == []
    assert report_to(TrainConfig(report_to=["none"])) == []
    assert report_to(TrainConfig(report_to="tensorboard")) == ["tensorboard"]
    with pytest.raises(UserError, match="unknown"):
        report_to(TrainConfig(report_to="wandb-ish"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match="pip install mlflow"):
        report_to(TrainConfig(report_to=["mlflow"]))


def test_report_to_flag_reaches_config(cli, monkeypatch, tmp_path):
    import weibo_sentiment.training as training

    seen = {}

    def fake_train(config):
        seen["report_to"] = config.report_to
        raise UserError("stop here")

    monkeypatch.setattr(training, "train", fake_train)
    result = cli("train", "--data", SAMPLE, "--output", tmp_path / "a", "--report-to", "tensorboard")
    assert result.code == 2 and seen["report_to"] == ["tensorboard"]
    cli("train", "--data", SAMPLE, "--output", tmp_path / "a")
    assert seen["report_to"] == ["none"]
    assert cli("train", "--data", SAMPLE, "--report-to", "nope").code == 2


def test_report_to_tensorboard_writes_events(tmp_path, tiny_base):
    pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")
    from transformers import TrainerCallback

    from weibo_sentiment.training import TrainConfig, train

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.report_to = list(args.report_to)

    spy = Spy()
    out = tmp_path / "adapter"
    train(TrainConfig(data=str(SAMPLE), base_model=str(tiny_base), output=str(out), max_steps=3, logging_steps=1,
                      report_to="tensorboard"), callbacks=[spy])
    assert spy.report_to == ["tensorboard"]
    events = list((tmp_path / "adapter.tensorboard").glob("*/events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert not (tmp_path / "adapter.checkpoints").exists() or not any(
        (tmp_path / "adapter.checkpoints").glob("runs"))
    assert (out / "training.png").is_file()
