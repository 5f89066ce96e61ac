"""ONNX export of a merged adapter, the ONNX Runtime predictor, and the merged single-adapter torch path."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import onnx
import pytest
from safetensors.torch import load_file

from weibo_sentiment.errors import UserError
from weibo_sentiment.exporters.onnx import export_onnx, quantize_export
from weibo_sentiment.inference import OnnxPredictor, Predictor
from weibo_sentiment.inference.onnx_predictor import MODEL_FILE, read_export
from weibo_sentiment.output import EXPORT_FILE

from .conftest import SAMPLE

# Real Weibo posts from the shipped sample, plus one longer than max_length (truncated the same way).
with SAMPLE.open(encoding="utf-8", newline="") as f:
    TEXTS = [row["review"] for row in csv.DictReader(f)][:40]
TEXTS.append("好" * 300)


@pytest.fixture(scope="module")
def unmerged(sample_adapter):
    predictor = Predictor.from_adapters([sample_adapter])
    predictor.merge_single = False
    return predictor


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sample_adapter):
    out = tmp_path_factory.mktemp("exports")
    return export_onnx(sample_adapter, out / "fp32"), export_onnx(sample_adapter, out / "int8", int8=True)


def test_fp32_export_equals_torch(exported, unmerged):
    reference = unmerged.predict_proba(TEXTS)
    onnx_probs = OnnxPredictor(exported[0]).predict_proba(TEXTS, batch_size=8)
    assert onnx_probs.shape == reference.shape
    assert np.abs(onnx_probs - reference).max() < 1e-5


def test_int8_export_is_quantized_and_agrees(exported, unmerged):
    fp32, int8 = exported
    ops = [node.op_type for node in onnx.load(str(int8 / MODEL_FILE)).graph.node]
    assert ops.count("MatMulInteger") == 2 * 4  # c_attn, attn c_proj, c_fc, mlp c_proj of both tiny blocks
    reference = unmerged.predict_proba(TEXTS)
    probs = OnnxPredictor(int8).predict_proba(TEXTS)
    assert np.abs(probs - reference).max() < 0.1
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= 0.95


def test_int8_keeps_embeddings_head_and_first_blocks_in_fp32(tmp_path, exported):
    fp32, int8 = exported
    assert read_export(int8)["quantization"] == {"fp32_blocks": 0, "blocks": 2,
                                                 "fp32": ["embeddings", "no blocks", "classifier head"]}
    out = quantize_export(fp32, tmp_path / "int8-1", fp32_blocks=1)
    graph = onnx.load(str(out / MODEL_FILE)).graph
    integer = [n.name for n in graph.node if n.op_type == "MatMulInteger"]
    assert integer and all("/h.1/" in name for name in integer)  # block 0 and the head stay float
    float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert {"model.transformer.wte.weight", "model.transformer.wpe.weight"} <= float_weights
    assert read_export(out)["quantization"]["fp32"] == ["embeddings", "blocks 0-0", "classifier head"]
    with pytest.raises(UserError, match=r"^--int8-fp32-blocks 3: the model has 2 blocks$"):
        quantize_export(fp32, tmp_path / "int8-3", fp32_blocks=3)
    assert not (tmp_path / "int8-3").exists()


def test_export_is_self_contained(tmp_path, adapter_copy, unmerged):
    out = export_onnx(adapter_copy, tmp_path / "export")
    shutil.rmtree(adapter_copy)  # the export must not need the adapter (nor PEFT) any more
    meta = read_export(out)
    assert meta["label_names"] == ["negative", "positive"] and meta["precision"] == "fp32"
    assert meta["max_length"] == 128
    assert sorted(p.name for p in out.iterdir()) == sorted([EXPORT_FILE, MODEL_FILE, "README.md", "tokenizer.json",
                                                             "tokenizer_config.json"])
    preds = OnnxPredictor(out).predict(TEXTS[:3])
    expected = unmerged.predict(TEXTS[:3])
    assert [p.label_name for p in preds] == [p.label_name for p in expected]
    assert [p.text for p in preds] == TEXTS[:3]
    assert list(preds[0].as_row()) == list(expected[0].as_row())


def test_merged_single_adapter_equals_unmerged(sample_adapter, unmerged, tiny_base):
    merged = Predictor.from_adapters([sample_adapter])
    reference = unmerged.predict_proba(TEXTS)
    assert np.abs(merged.predict_proba(TEXTS) - reference).max() < 1e-5
    assert merged._merged == merged.default
    # A second adapter unmerges: both then run on the pure base, with results unchanged.
    merged.add_adapter("again", sample_adapter)
    assert merged._merged is None
    assert np.abs(merged.predict_proba(TEXTS, adapter="again") - reference).max() < 1e-5
    layer = merged.model.base_model.model.transformer.h[0].attn.c_attn.base_layer
    original = load_file(str(tiny_base / "model.safetensors"))["transformer.h.0.attn.c_attn.weight"]
    assert (layer.weight.detach() - original).abs().max() < 1e-6
    merged.remove_adapter("again")
    assert np.abs(merged.predict_proba(TEXTS) - reference).max() < 1e-5
    assert merged._merged == merged.default


def _parse(out: str) -> list[tuple[str, str, float]]:
    lines = out.splitlines()
    rows = []
    for text, result in zip(lines[::2], lines[1::2], strict=True):
        label, confidence = result.removeprefix("Prediction: ").split(" (Confidence: ")
        rows.append((text, label, float(confidence.rstrip(")"))))
    return rows


def test_cli_export_then_predict_model(cli, sample_adapter, tmp_path):
    out = tmp_path / "export"
    result = cli("export", "--adapter", sample_adapter, "--format", "onnx", "--output", out)
    assert result.code == 0, result.err
    assert json.loads((out / EXPORT_FILE).read_text())["precision"] == "fp32"
    torch_run = cli("predict", "--adapter", sample_adapter, "--text", TEXTS[0], "--text", TEXTS[1])
    onnx_run = cli("predict", "--model", out, "--text", TEXTS[0], "--text", TEXTS[1])
    assert onnx_run.code == 0, onnx_run.err
    for (t1, l1, c1), (t2, l2, c2) in zip(_parse(torch_run.out), _parse(onnx_run.out), strict=True):
        assert (t1, l1) == (t2, l2) and abs(c1 - c2) <= 1e-4


def test_cli_backend_exports_on_the_fly(cli, sample_adapter):
    torch_run = cli("predict", "--adapter", sample_adapter, "--text", TEXTS[0])
    int8_run = cli("predict", "--adapter", sample_adapter, "--backend", "onnx-int8", "--text", TEXTS[0])
    assert int8_run.code == 0, int8_run.err
    assert _parse(int8_run.out)[0][:2] == _parse(torch_run.out)[0][:2]


def test_cli_backend_errors(cli, exported, sample_adapter, tmp_path):
    result = cli("predict", "--model", exported[0], "--backend", "onnx-int8", "--text", "好")
    assert result.code == 2
    assert result.err == (f"error: {exported[0]} holds a fp32 export, not what --backend onnx-int8 asks for; "
                          "export it with --int8\n")
    result = cli("predict", "--model", tmp_path / "missing", "--text", "好")
    assert result.code == 2
    assert result.err == f"error: {tmp_path / 'missing'}: no such exported model directory\n"
    result = cli("predict", "--model", sample_adapter, "--text", "好")
    assert result.code == 2 and "not a weibo-sentiment export (model.onnx is missing)" in result.err
    result = cli("predict", "--adapter", sample_adapter, "--adapter", f"b={sample_adapter}",
                 "--backend", "onnx", "--text", "好")
    assert result.code == 2
    assert result.err == "error: --backend onnx runs one adapter merged into its base; pass one --adapter\n"
    result = cli("export", "--adapter", sample_adapter, "--output", tmp_path / "x", "--int8-fp32-blocks", "1")
    assert (result.code, result.err) == (2, "error: --int8-fp32-blocks applies to --int8 exports only\n")
    result = cli("export", "--adapter", sample_adapter, "--output", tmp_path / "x", "--int8", "--int8-fp32-blocks", "9")
    assert (result.code, result.err) == (2, "error: --int8-fp32-blocks 9: the model has 2 blocks\n")
    assert not (tmp_path / "x").exists()
