"""Adapter names: any name the server accepts ([A-Za-z0-9_-]{1,64}) works everywhere, because PEFT only ever
sees internal keys; a path with `=` in it is a path; a hot swap never touches another adapter."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from weibo_sentiment.adapter_io import WEIGHTS_FILE, read_run
from weibo_sentiment.adapters import combine
from weibo_sentiment.inference import Predictor, parse_adapter_specs

TEXTS = ["这部电影太好看了，我非常喜欢！[哈哈]", "服务态度差，价格又贵，完全不推荐[怒]", "苹果很新鲜，甜"]
# Names that PEFT's substring matching or torch's ModuleDict broke, names PEFT gives a meaning to, and names
# shaped like our internal keys.
AWKWARD = ["a", "lo", "to", "half", "lora_", "default", "__base__", "x__incoming", "ws0_", "ws1_", "-", "A" * 64]


@pytest.fixture(scope="module")
def other_adapter(tmp_path_factory, sample_adapter) -> Path:
    """The sample adapter with other weights (negated head, doubled LoRA B): other probabilities, no training."""
    out = Path(shutil.copytree(sample_adapter, tmp_path_factory.mktemp("adapters") / "other"))
    weights = load_file(str(out / WEIGHTS_FILE))
    weights = {k: (-v if k.endswith("score.weight") else 2 * v if "lora_B" in k else v) for k, v in weights.items()}
    save_file(weights, str(out / WEIGHTS_FILE))
    return out


def single(adapter, texts=TEXTS) -> np.ndarray:
    return Predictor.from_adapters([adapter], device="cpu").predict_proba(texts)


def test_a_path_with_an_equals_sign_is_a_path(tmp_path, sample_adapter, cli):
    folder = Path(shutil.copytree(sample_adapter, tmp_path / "runs" / "lr=5e-4" / "adapter"))
    assert parse_adapter_specs([folder]) == {"adapter": folder}
    assert parse_adapter_specs([f"{folder}/"]) == {"adapter": Path(f"{folder}/")}
    assert parse_adapter_specs([f"mine={folder}"]) == {"mine": folder}  # NAME=DIR where no such path exists
    result = cli("predict", "--adapter", folder, "--device", "cpu", "--text", TEXTS[0])
    assert result.code == 0, result.err
    assert "Prediction:" in result.out


def test_any_server_name_loads_predicts_routes_and_removes(sample_adapter, other_adapter):
    expected = {"sample": single(sample_adapter), "other": single(other_adapter)}
    assert not np.allclose(expected["sample"], expected["other"], atol=1e-3)
    adapters = {name: (sample_adapter if i % 2 == 0 else other_adapter) for i, name in enumerate(AWKWARD)}
    source = {name: "sample" if path == sample_adapter else "other" for name, path in adapters.items()}
    predictor = Predictor.from_adapters(adapters, device="cpu")
    assert list(predictor.adapters) == AWKWARD
    for name in AWKWARD:
        np.testing.assert_allclose(predictor.predict_proba(TEXTS, name), expected[source[name]], atol=1e-5)
    # A mixed batch routes every row by its name.
    routes = [AWKWARD[i % len(AWKWARD)] for i in range(2 * len(AWKWARD))]
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(routes))]
    for i, pred in enumerate(predictor.predict_routed(texts, routes)):
        assert pred.adapter == routes[i]
        np.testing.assert_allclose(list(pred.probabilities.values()), expected[source[routes[i]]][i % len(TEXTS)],
                                   atol=1e-5)
    for name in ("a", "default", "__base__"):
        predictor.use(name)
        predictor.remove_adapter(name)
    assert predictor.default == "lo"
    np.testing.assert_allclose(predictor.predict_proba(TEXTS), expected["other"], atol=1e-5)
    np.testing.assert_allclose(predictor.predict_proba(TEXTS, "to"), expected["sample"], atol=1e-5)


def test_routing_column_with_awkward_names(cli, tmp_path, sample_adapter, other_adapter):
    data = tmp_path / "in.csv"
    with data.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("review", "adapter"), (TEXTS[0], "a"), (TEXTS[1], "half"), (TEXTS[2], "")])
    out = tmp_path / "out.jsonl"
    result = cli("predict", "--adapter", f"half={other_adapter}", "--adapter", f"a={sample_adapter}",
                 "--device", "cpu", "--input", data, "--output", out)
    assert result.code == 0, result.err
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [g["adapter"] for g in got] == ["a", "half", "half"]
    assert got[0]["prob_positive"] == pytest.approx(single(sample_adapter)[0][1], abs=1e-5)
    assert got[1]["prob_positive"] == pytest.approx(single(other_adapter)[1][1], abs=1e-5)


def test_hot_swap_leaves_an_adapter_named_like_the_staging_name_alone(sample_adapter, other_adapter):
    predictor = Predictor.from_adapters({"x__incoming": sample_adapter, "x": sample_adapter}, device="cpu")
    before = predictor.predict_proba(TEXTS, "x__incoming")
    predictor.add_adapter("x", other_adapter)  # hot swap `x`
    np.testing.assert_array_equal(predictor.predict_proba(TEXTS, "x__incoming"), before)
    np.testing.assert_allclose(predictor.predict_proba(TEXTS, "x"), single(other_adapter), atol=1e-5)
    # The old weights of `x` are gone: PEFT holds exactly one key per loaded adapter.
    assert sorted(predictor.model.peft_config) == sorted(predictor.key(n) for n in ("x__incoming", "x"))


def test_a_failed_hot_swap_keeps_the_old_adapter(tmp_path, sample_adapter, other_adapter):
    predictor = Predictor.from_adapters({"x": sample_adapter, "y": other_adapter}, device="cpu")
    broken = Path(shutil.copytree(sample_adapter, tmp_path / "broken"))
    weights = load_file(str(broken / WEIGHTS_FILE))
    weights = {k: (v[:, :1].contiguous() if "lora_A" in k else v) for k, v in weights.items()}  # wrong shapes
    save_file(weights, str(broken / WEIGHTS_FILE))
    with pytest.raises(Exception):  # noqa: B017 - PEFT's own error for weights of the wrong shape
        predictor.add_adapter("x", broken)
    np.testing.assert_allclose(predictor.predict_proba(TEXTS, "x"), single(sample_adapter), atol=1e-5)
    assert sorted(predictor.model.peft_config) == sorted(predictor.key(n) for n in ("x", "y"))


@pytest.mark.parametrize("names", [("a", "b"), ("lo", "to"), ("half", "__combined__")])
def test_combine_accepts_any_names_and_writes_a_plain_adapter(cli, tmp_path, sample_adapter, names):
    from peft import PeftModel

    from weibo_sentiment.modeling import load_classifier, load_tokenizer

    out = tmp_path / "combined"
    result = cli("combine", "--adapter", f"{names[0]}={sample_adapter}", "--adapter", f"{names[1]}={sample_adapter}",
                 "--output", out)
    assert result.code == 0, result.err
    assert [a["name"] for a in read_run(out)["combination"]["adapters"]] == list(names)
    assert not [p for p in out.iterdir() if p.is_dir()]  # PEFT's sub-folder for a non-default adapter is undone
    np.testing.assert_allclose(single(out), single(sample_adapter), atol=1e-5)  # 0.5·Δ + 0.5·Δ = Δ
    # Plain PEFT loads it as its default adapter.
    run = read_run(out)
    tokenizer = load_tokenizer(run["base_model_dir"])
    model = PeftModel.from_pretrained(load_classifier(run["base_model_dir"], run["label_names"], tokenizer),
                                      str(out)).eval()
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        probs = torch.softmax(model(**batch).logits, dim=-1).numpy()
    raw = Predictor.from_adapters([sample_adapter], device="cpu", calibrated=False).predict_proba(TEXTS)
    np.testing.assert_allclose(probs, raw, atol=1e-5)  # plain PEFT applies no temperature


def test_combine_python_api_with_names_peft_cannot_hold(tmp_path, sample_adapter, other_adapter):
    out = combine({"a": sample_adapter, "lora_": other_adapter}, tmp_path / "c", method="cat", weights=[1, 0])
    np.testing.assert_allclose(single(out), single(sample_adapter), atol=1e-5)


def test_export_of_a_folder_with_an_awkward_name(cli, tmp_path, sample_adapter):
    folder = Path(shutil.copytree(sample_adapter, tmp_path / "a"))
    out = tmp_path / "export"
    result = cli("export", "--adapter", folder, "--output", out)
    assert result.code == 0, result.err
    assert json.loads((out / "export.json").read_text(encoding="utf-8"))["adapter"] == "a"
