"""Model cards: a README.md in the Hugging Face format in every adapter, combined adapter, merged model and ONNX
export, whose loading code (plain PEFT, `pipeline()`, ONNX Runtime) reproduces `predict`'s probabilities."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

from weibo_sentiment.adapter_io import read_run, write_run
from weibo_sentiment.adapters import combine, merge
from weibo_sentiment.exporters.onnx import export_onnx, quantize_export
from weibo_sentiment.inference import OnnxPredictor, Predictor
from weibo_sentiment.model_card import CARD_FILE, adapter_card, write_card

PEFT_TEMPLATE = ("[More Information Needed]", "Model Card for Model ID", "base_model:adapter:")
CAVEAT = "labels were derived from emoticons"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, sample_adapter) -> dict[str, Path]:
    """One directory of each kind, all from the session's sample adapter."""
    root = tmp_path_factory.mktemp("cards")
    dirs = {"adapter": sample_adapter}
    dirs["combined"] = combine({"a": sample_adapter, "b": sample_adapter}, root / "combined", weights=[0.7, 0.3])
    dirs["merged"] = merge(sample_adapter, root / "merged")
    dirs["export"] = export_onnx(sample_adapter, root / "export")
    dirs["int8"] = quantize_export(dirs["export"], root / "int8")
    return dirs


def card(directory: Path) -> ModelCard:
    path = directory / CARD_FILE
    assert path.is_file(), f"no {CARD_FILE} in {directory}"
    return ModelCard.load(path)


def snippet(directory: Path) -> str:
    """The card's one python code block."""
    blocks = re.findall(r"```python\n(.*?)```", (directory / CARD_FILE).read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


@pytest.mark.parametrize("kind, library", [("adapter", "peft"), ("combined", "peft"), ("merged", "transformers"),
                                           ("export", "onnx"), ("int8", "onnx")])
def test_every_directory_has_a_hub_model_card(outputs, kind, library):
    loaded = card(outputs[kind])
    run = read_run(outputs["adapter"])
    data = loaded.data
    assert data.library_name == library
    assert data.base_model == run["base_model"]  # a local base: its directory (no hub id to name)
    assert (data.pipeline_tag, data.language) == ("text-classification", "zh")
    assert "license" not in data.to_dict()  # unknown, so left out
    text = loaded.text
    assert not any(marker in loaded.content for marker in PEFT_TEMPLATE)
    assert "| 0 | negative |" in text and "| 1 | positive |" in text
    assert CAVEAT in text
    assert f"T = {run['temperature']:.6g}" in text
    if kind != "combined":  # a combination has no training data or epochs of its own
        assert run["data"]["train"]["sha256"] in text and "`weibo_sample.csv`" in text
        assert "| epoch | loss | accuracy | macro-F1 |" in text
        for epoch in run["epochs"]:
            assert f"| {epoch['epoch']:.2f} | {epoch['loss']:.4f} | {epoch['accuracy']:.4f} |" in text
        assert f"accuracy {run['validation_stripped']['accuracy']:.4f}" in text
        assert "r 8, alpha 32, dropout 0.1" in text and "learning rate 0.002, batch size 16, 2 epochs" in text
    if kind == "int8":
        assert "int8" in data.tags and "Dynamic int8 quantization" in text
    if kind == "combined":
        assert "## Combination" in text and "| a | 0.7 |" in text


def test_card_without_stripped_figure_or_temperature_says_so(sample_adapter):
    run = read_run(sample_adapter)
    for key in ("validation_stripped", "temperature", "calibration"):
        run.pop(key, None)
    text = adapter_card(run, sample_adapter).text
    assert "The score with emoticons stripped is unknown" in text and "--strip-emoticons" in text
    assert "Not calibrated (temperature 1)" in text
    assert "torch.softmax(logits, dim=-1)" in text  # no division by a temperature in the snippet


def test_card_of_a_data_parallel_run_states_the_effective_batch(sample_adapter):
    run = read_run(sample_adapter)
    run["training"].update(batch_size=8, world_size=2, gradient_accumulation_steps=1, effective_batch_size=16)
    text = adapter_card(run, sample_adapter).text
    assert "batch size 8 per process × 2 process(es) × 1 accumulation step(s) = 16 per optimiser step" in text
    run["training"].update(batch_size=16, world_size=1, effective_batch_size=16)
    assert "batch size 16, " in adapter_card(run, sample_adapter).text


def test_hub_base_is_named_by_its_hub_id(sample_adapter):
    run = {**read_run(sample_adapter), "base_model": "uer/gpt2-chinese-cluecorpussmall", "base_model_dir": None}
    loaded = adapter_card(run, sample_adapter)
    assert loaded.data.base_model == "uer/gpt2-chinese-cluecorpussmall"
    assert 'base = "uer/gpt2-chinese-cluecorpussmall"' in loaded.text
    assert "not a Hugging Face Hub id" not in loaded.text


def test_saved_tokenizers_emit_no_token_type_ids(outputs):
    from transformers import AutoTokenizer

    for kind in ("adapter", "combined", "merged", "export"):
        encoded = AutoTokenizer.from_pretrained(str(outputs[kind]))("这部电影太好看了")
        assert "token_type_ids" not in encoded, kind


RUNNER = textwrap.dedent("""
    import json, sys
    out = []
    for path in sys.argv[1:]:
        scope = {}
        exec(open(path, encoding="utf-8").read(), scope)
        probs = scope["probs"]
        if isinstance(probs, list) and probs and isinstance(probs[0], dict):  # pipeline(): label -> probability
            labels = scope["classify"].model.config.id2label
            probs = [[row[labels[i]] for i in range(len(labels))] for row in probs]
        else:
            probs = [list(map(float, row)) for row in probs.tolist()]
        out.append({"texts": scope["texts"], "probs": probs})
    print(json.dumps(out, ensure_ascii=False))
""")


def test_card_snippets_reproduce_predict(tmp_path, outputs, adapter_copy):
    # An adapter whose temperature is not 1 (and a second one without any), for both code paths of the snippet.
    run = read_run(adapter_copy)
    run["temperature"] = 1.7
    write_run(adapter_copy, run)
    write_card(adapter_copy, adapter_card(run, adapter_copy, directory=adapter_copy))
    plain = Path(tmp_path / "plain")
    plain.mkdir()
    for f in adapter_copy.iterdir():
        if f.is_file():  # domains/ (train's default domain) plays no part in the snippet
            (plain / f.name).write_bytes(f.read_bytes())
    run.pop("temperature")
    write_run(plain, run)
    write_card(plain, adapter_card(run, plain, directory=plain))

    cases = {"calibrated": adapter_copy, "plain": plain, "merged": outputs["merged"], "export": outputs["export"]}
    files = []
    for name, directory in cases.items():
        files.append(tmp_path / f"{name}.py")
        files[-1].write_text(snippet(directory), encoding="utf-8")
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    done = subprocess.run([sys.executable, str(runner), *map(str, files)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = dict(zip(cases, json.loads(done.stdout.strip().splitlines()[-1]), strict=True))

    texts = results["plain"]["texts"]
    assert len(texts) >= 3 and len({len(t) for t in texts}) > 1  # texts of different lengths: padding matters
    expected = {
        "calibrated": Predictor.from_adapters([adapter_copy], device="cpu").predict_proba(texts),
        "plain": Predictor.from_adapters([plain], device="cpu").predict_proba(texts),
        "merged": Predictor.from_adapters([outputs["adapter"]], device="cpu").predict_proba(texts),
        "export": OnnxPredictor(outputs["export"]).predict_proba(texts),
    }
    assert not np.allclose(expected["calibrated"], expected["plain"], atol=1e-3)  # the temperature matters
    for name, probs in expected.items():
        assert results[name]["texts"] == texts
        np.testing.assert_allclose(np.array(results[name]["probs"]), probs, atol=1e-5, err_msg=name)


def test_adapters_info_shows_the_cards_calibration_and_stripped_figure(cli, sample_adapter):
    run = read_run(sample_adapter)
    out = cli("adapters", "info", sample_adapter).out
    assert f"temperature {run['temperature']:.4g}" in out
    assert f"accuracy {run['validation_stripped']['accuracy']:.4f}" in out and "emoticons removed" in out
