"""Training: the saved adapter, its run.json, atomic output, resume, and a plain-PEFT round trip."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from weibo_sentiment.batches import PaddedBatches
from weibo_sentiment.training import TrainConfig, train

from .conftest import SAMPLE, run_subprocess


def test_adapter_directory_is_standard_peft(sample_adapter):
    names = {p.name for p in sample_adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "run.json", "tokenizer.json"} <= names
    config = json.loads((sample_adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 32, 0.1)
    assert sorted(config["target_modules"]) == ["c_attn", "c_proj"]
    assert config["task_type"] == "SEQ_CLS"
    with safe_open(str(sample_adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.endswith("score.weight") for k in keys), "the classifier head must travel with the adapter"
    assert any("lora_A" in k for k in keys)


def test_run_json_records_the_run(sample_adapter, tiny_base):
    run = json.loads((sample_adapter / "run.json").read_text())
    assert run["base_model"] == str(tiny_base.resolve())
    assert run["label_names"] == ["negative", "positive"]
    assert run["max_length"] == 128
    assert run["lora"] == {"r": 8, "alpha": 32, "dropout": 0.1, "target_modules": ["c_attn", "c_proj"]}
    assert run["training"]["lr"] == 2e-3 and run["training"]["batch_size"] == 16
    data = run["data"]["train"]
    assert len(data["sha256"]) == 64 and data["rows_kept"] == data["rows_read"]
    assert run["rows"]["train"] + run["rows"]["validation"] == data["rows_kept"]
    assert [e["epoch"] for e in run["epochs"]] == [1.0, 2.0]
    assert run["best"] == max(run["epochs"], key=lambda e: e["macro_f1"])
    assert 0 < run["tokens"]["padding_share"] < 0.5
    assert {"torch", "transformers", "peft"} <= set(run["versions"])


def test_no_temporary_or_checkpoint_dirs_left(sample_adapter):
    siblings = [p.name for p in sample_adapter.parent.iterdir()]
    assert siblings == ["sample"], siblings


def test_per_batch_padding_counts_tokens(tiny_base):
    from weibo_sentiment.modeling import load_tokenizer

    collate = PaddedBatches(load_tokenizer(tiny_base))
    batch = collate([{"input_ids": [101, 5, 102], "labels": 0}, {"input_ids": [101, 102], "labels": 1}])
    assert batch["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert (collate.real_tokens, collate.padded_tokens) == (5, 6)


def test_resume_continues_from_last_checkpoint(tmp_path, tiny_base, cli):
    out = tmp_path / "adapter"
    common = ["train", "--data", SAMPLE, "--base-model", tiny_base, "--output", out, "--epochs", "2",
              "--max-length", "32"]
    first = cli(*common, "--keep-checkpoints")
    assert first.code == 0, first.err
    checkpoints = tmp_path / "adapter.checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint-"))
    # Ask for one more epoch: resuming must start from the saved step, not from zero.
    resumed = cli(*common[:-4], "--epochs", "3", "--max-length", "32", "--resume")
    assert resumed.code == 0, resumed.err
    run = json.loads((out / "run.json").read_text())
    assert [e["epoch"] for e in run["epochs"]] == [1.0, 2.0, 3.0]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_base, cli):
    result = cli("train", "--data", SAMPLE, "--base-model", tiny_base, "--output", tmp_path / "a", "--resume")
    assert result.code == 2
    assert result.err.strip() == f"error: --resume: no checkpoint in {tmp_path / 'a.checkpoints'} to resume from"


def test_bf16_on_the_cpu_trains_and_predicts(tmp_path, tiny_base, cli):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # the CI machine has AMX; a laptop may not
        result = cli("train", "--data", SAMPLE, "--base-model", tiny_base, "--output", tmp_path / "a",
                     "--precision", "bf16")
        assert (result.code, result.err) == (2, "error: --precision bf16: this CPU has no bf16 support (oneDNN "
                                                "needs AVX512 or AMX); use fp32\n")
        return
    out = tmp_path / "bf16"
    result = cli("train", "--data", SAMPLE, "--base-model", tiny_base, "--output", out, "--epochs", "1",
                 "--max-length", "32", "--precision", "bf16")
    assert result.code == 0, result.err
    run = json.loads((out / "run.json").read_text())
    assert run["precision"] == "bf16"
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:  # autocast: the weights stay fp32
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    predicted = cli("predict", "--adapter", out, "--text", "今天真开心[哈哈]")
    assert predicted.code == 0, predicted.err


def test_fp16_needs_a_gpu(tmp_path, tiny_base, cli):
    if torch.cuda.is_available():
        return
    result = cli("train", "--data", SAMPLE, "--base-model", tiny_base, "--output", tmp_path / "a",
                 "--precision", "fp16")
    assert (result.code, result.err) == (2, "error: --precision fp16 needs a CUDA GPU; use fp32 (or bf16 on a CPU "
                                            "with bf16 support) on the CPU\n")


PLAIN_PEFT = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoTokenizer, GPT2ForSequenceClassification
base, adapter = sys.argv[1], sys.argv[2]
texts = json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(adapter)
model = GPT2ForSequenceClassification.from_pretrained(base, num_labels=2, pad_token_id=0)
model = PeftModel.from_pretrained(model, adapter).eval()
out = []
with torch.no_grad():
    for t in texts:
        enc = tok(t, return_tensors="pt", truncation=True, max_length=128, return_token_type_ids=False)
        out.append(torch.softmax(model(**enc).logits, -1)[0].tolist())
print(json.dumps(out))
"""


def test_plain_peft_in_a_fresh_process_matches_predict(sample_adapter, tiny_base, tmp_path):
    import subprocess
    import sys

    texts = ["这部电影太好看了，我非常喜欢！[哈哈]", "服务态度差，价格又贵，完全不推荐[怒]", "一般般吧"]
    proc = subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(tiny_base), str(sample_adapter)],
                          input=json.dumps(texts), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plain = json.loads(proc.stdout.strip().splitlines()[-1])

    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(texts), encoding="utf-8")
    # Plain PEFT gives the raw probabilities; predict calibrates them unless told not to.
    pred = run_subprocess("predict", "--adapter", sample_adapter, "--input", inp, "--no-calibration")
    assert pred.returncode == 0, pred.stderr
    rows = [json.loads(line) for line in pred.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts
    for row, probs in zip(rows, plain):
        assert abs(row["prob_negative"] - probs[0]) < 1e-5
        assert abs(row["prob_positive"] - probs[1]) < 1e-5


def test_uer_shape_trains_and_predicts(tmp_path, real_vocab, cli, capsys):
    """The production shape: 812,544 trainable parameters (0.79%), through the same code path."""
    from weibo_sentiment.modeling import init_model

    base = init_model(tmp_path / "uer", "uer", vocab_file=real_vocab)
    data = tmp_path / "d.csv"
    data.write_text("label,review\n" + "".join(
        line for line in Path(SAMPLE).read_text(encoding="utf-8").splitlines(keepends=True)[1:41]), encoding="utf-8")
    result = train(TrainConfig(data=str(data), base_model=str(base), output=str(tmp_path / "a"), max_steps=2,
                               batch_size=4, max_length=32))
    assert "trainable params: 812,544 || all params: 102,882,816 || trainable%: 0.7898" in capsys.readouterr().out
    assert result.run["trainable_parameters"] == 812_544
    assert round(100 * 812_544 / result.run["total_parameters"], 2) == 0.79
    assert round(result.run["total_parameters"] / 1e6, 1) == 102.9
    predicted = cli("predict", "--adapter", tmp_path / "a", "--text", "今天真开心[哈哈]")
    assert predicted.code == 0, predicted.err
    assert predicted.out.splitlines()[-2:][0] == "今天真开心[哈哈]"
    assert predicted.out.splitlines()[-1].startswith("Prediction: ")
