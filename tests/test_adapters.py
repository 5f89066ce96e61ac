"""Many adapters on one base: load, switch, route per row, hot-swap, combine, merge, inspect, small files."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from weibo_sentiment.adapter_io import WEIGHTS_FILE, cast_weights, read_run
from weibo_sentiment.adapters import combine, info, merge
from weibo_sentiment.cli import main
from weibo_sentiment.cli.predict import interactive
from weibo_sentiment.data import read_texts
from weibo_sentiment.errors import UserError
from weibo_sentiment.inference import Predictor
from weibo_sentiment.training import TrainConfig, train

from .conftest import SAMPLE, shared, write

TEXTS = [
    "这部电影太好看了，我非常喜欢！[哈哈]",
    "服务态度差，价格又贵，完全不推荐[怒]",
    "手机电池不耐用，充一次电用半天",
    "酒店位置很好，早餐丰富，下次还来",
    "这本书的印刷质量一般",
    "苹果很新鲜，甜",
]
CATS = ["书籍", "平板", "手机", "水果", "洗发水", "热水器", "蒙牛", "衣服", "计算机", "酒店"]


# ---- fixtures: a second binary adapter and a 10-class adapter on the session's tiny base -------------------
@pytest.fixture(scope="module")
def second_adapter(tmp_path_factory, tiny_base):
    """Another binary adapter (other seed, few steps): weights unlike the sample adapter's."""
    out = tmp_path_factory.mktemp("adapters") / "second"
    train(TrainConfig(data=str(SAMPLE), base_model=str(tiny_base), output=str(out), max_steps=4, lr=5e-3,
                      seed=7, logging_steps=1000))
    return out


@pytest.fixture(scope="module")
def cats_csv(tmp_path_factory):
    """10 reviews of each of the 10 product categories of online_shopping_10_cats, `cat` column as text."""
    source = shared("data", "chinese_reviews", "online_shopping_10_cats.csv")
    taken: dict[str, int] = {}
    rows = []
    with source.open(encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            if row["review"].strip() and taken.get(row["cat"], 0) < 10:
                taken[row["cat"]] = taken.get(row["cat"], 0) + 1
                rows.append((row["cat"], row["review"]))
    path = tmp_path_factory.mktemp("data") / "cats.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("cat", "review"), *rows])
    return path


@pytest.fixture(scope="module")
def cats_adapter(tmp_path_factory, tiny_base, cats_csv):
    """A 10-class adapter, trained through the CLI with text labels (`--label-names auto`)."""
    out = tmp_path_factory.mktemp("adapters") / "cats"
    code = main(["train", "--data", str(cats_csv), "--label-column", "cat", "--label-names", "auto",
                 "--base-model", str(tiny_base), "--output", str(out), "--max-steps", "3", "--lr", "5e-3",
                 "--validation-split", "0.2"])
    assert code == 0
    return out


def single(adapter, texts=TEXTS) -> np.ndarray:
    return Predictor.from_adapters([adapter], device="cpu").predict_proba(texts)


# ---- 1. many adapters, one base, one process ---------------------------------------------------------------
def test_adapters_with_different_label_counts_share_one_base(sample_adapter, cats_adapter):
    predictor = Predictor.from_adapters({"sentiment": sample_adapter, "cats": cats_adapter}, device="cpu")
    assert read_run(cats_adapter)["label_names"] == CATS and read_run(cats_adapter)["text_labels"]
    sentiment = predictor.predict_proba(TEXTS, "sentiment")
    cats = predictor.predict_proba(TEXTS, "cats")
    assert sentiment.shape == (len(TEXTS), 2) and cats.shape == (len(TEXTS), 10)
    np.testing.assert_allclose(sentiment, single(sample_adapter), atol=1e-5)
    np.testing.assert_allclose(cats, single(cats_adapter), atol=1e-5)
    assert {p.label_name for p in predictor.predict(TEXTS, "cats")} <= set(CATS)


def test_predict_cli_loads_several_adapters_and_uses_one(cli, sample_adapter, cats_adapter):
    # A bare DIR is named after its folder: `cats`.
    result = cli("predict", "--adapter", f"sent={sample_adapter}", "--adapter", cats_adapter, "--use", "cats",
                 "--device", "cpu", "--text", TEXTS[2])
    assert result.code == 0, result.err
    expected = Predictor.from_adapters([cats_adapter], device="cpu").predict([TEXTS[2]])[0]
    assert f"Prediction: {expected.label_name} (Confidence: {expected.confidence:.4f})" in result.out

    result = cli("predict", "--adapter", f"sent={sample_adapter}", "--use", "nope", "--text", TEXTS[0])
    assert result.code == 2
    assert result.err.strip() == "error: unknown adapter 'nope' (loaded: sent)"


def test_text_labels_need_the_flag(cli, cats_csv):
    result = cli("train", "--data", cats_csv, "--label-column", "cat", "--base-model", "/nonexistent/base")
    assert result.code == 2
    assert result.err.strip() == (f"error: {cats_csv}: line 2: label '书籍' is not an integer "
                                  "(labels are 0..N-1; for text labels pass --label-names auto)")


@pytest.fixture(scope="module")
def other_base_adapter(tmp_path_factory, real_vocab):
    """A binary adapter on another random tiny base of the same shape (seed 1)."""
    from weibo_sentiment.modeling import init_model

    base = init_model(tmp_path_factory.mktemp("bases") / "tiny-seed1", "tiny", vocab_file=real_vocab, seed=1)
    out = tmp_path_factory.mktemp("adapters") / "other-base"
    train(TrainConfig(data=str(SAMPLE), base_model=str(base), output=str(out), max_steps=1,
                      logging_steps=1000))
    return out


def test_adapters_of_another_base_are_refused(cli, sample_adapter, other_base_adapter):
    message = (r"adapter 'other' \(.*\) was trained on base model '.*tiny-seed1', not on the loaded base "
               r"'.*tiny'; adapters on one base must share it")
    with pytest.raises(UserError, match=message):
        Predictor.from_adapters({"sent": sample_adapter, "other": other_base_adapter}, device="cpu")
    result = cli("combine", "--adapter", f"one={sample_adapter}", "--adapter", f"two={other_base_adapter}",
                 "--output", sample_adapter.parent / "never")
    assert result.code == 2
    assert result.err.startswith("error: cannot combine adapters trained on different base models: 'one' on ")
    assert not (sample_adapter.parent / "never").exists()


def test_interactive_lists_and_switches_adapters_without_reloading(sample_adapter, cats_adapter):
    predictor = Predictor.from_adapters({"sent": sample_adapter, "cats": cats_adapter}, device="cpu")
    model, base_weight = predictor.model, predictor.model.base_model.model.transformer.wte.weight
    stdin = io.StringIO(f"{TEXTS[2]}\n:adapters\n:use cats\n{TEXTS[2]}\n:use nope\n:adapters\nq\n")
    stdout = io.StringIO()
    assert interactive(predictor, stdin=stdin, stdout=stdout) == 0
    out = stdout.getvalue()
    sent = single(sample_adapter, [TEXTS[2]])[0]
    cats = single(cats_adapter, [TEXTS[2]])[0]
    names = ["negative", "positive"]
    first = f"Prediction: {names[sent.argmax()].capitalize()} sentiment (Confidence: {sent.max():.4f})"
    second = f"Prediction: {CATS[cats.argmax()]} (Confidence: {cats.max():.4f})"
    assert out.index(first) < out.index("Now using adapter 'cats'.") < out.index(second)
    assert f"* sent: {sample_adapter} (labels: negative, positive)" in out
    assert f"* cats: {cats_adapter} (labels: {', '.join(CATS)})" in out
    assert "unknown adapter 'nope' (loaded: sent, cats)" in out
    assert predictor.model is model and predictor.model.base_model.model.transformer.wte.weight is base_weight


# ---- 2. route per row --------------------------------------------------------------------------------------
def test_per_row_routing_equals_single_adapter_runs(sample_adapter, second_adapter, cats_adapter):
    predictor = Predictor.from_adapters({"one": sample_adapter, "two": second_adapter, "cats": cats_adapter},
                                        device="cpu")
    routes = ["two", "cats", None, "one", "cats", "two"]  # None: the default adapter, `one`
    calls = []
    forward = predictor.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs.get("adapter_names"))
        return forward(*args, **kwargs)

    predictor.model.forward = counting_forward
    preds = predictor.predict_routed(TEXTS, routes, batch_size=64)
    del predictor.model.forward

    expected = {"one": single(sample_adapter), "two": single(second_adapter), "cats": single(cats_adapter)}
    assert [p.text for p in preds] == TEXTS
    for i, (pred, route) in enumerate(zip(preds, routes, strict=True)):
        name = route or "one"
        assert pred.adapter == name
        np.testing.assert_allclose(list(pred.probabilities.values()), expected[name][i], atol=1e-5)
    # The four binary rows of two adapters share one mixed-batch pass; the 10-class rows, of one adapter,
    # get a plain pass of their own.
    assert len(calls) == 2
    # PEFT sees each adapter's internal key, not the user's name.
    assert sorted(calls[0]) == sorted(predictor.key(n) for n in ["one", "one", "two", "two"])
    assert calls[1] is None

    with pytest.raises(UserError, match=r"^row 2: unknown adapter 'x' \(loaded: one, two, cats\)$"):
        predictor.predict_routed(TEXTS[:2], ["one", "x"])


def test_predict_cli_routes_rows_by_adapter_column(cli, tmp_path, sample_adapter, cats_adapter):
    rows = [("review", "adapter"), (TEXTS[0], "sent"), (TEXTS[2], "cats"), (TEXTS[1], ""), (TEXTS[4], "cats")]
    data = tmp_path / "in.csv"
    with data.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "out.jsonl"
    result = cli("predict", "--adapter", f"sent={sample_adapter}", "--adapter", f"cats={cats_adapter}",
                 "--device", "cpu", "--input", data, "--output", out)
    assert result.code == 0, result.err
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [g["text"] for g in got] == [r[0] for r in rows[1:]]
    assert [g["adapter"] for g in got] == ["sent", "cats", "sent", "cats"]
    cats = single(cats_adapter, [TEXTS[2], TEXTS[4]])
    assert got[1]["label_name"] == CATS[cats[0].argmax()] and got[3]["label_name"] == CATS[cats[1].argmax()]
    assert got[1][f"prob_{CATS[0]}"] == pytest.approx(cats[0][0], abs=1e-5)
    assert got[0]["prob_negative"] == pytest.approx(single(sample_adapter, [TEXTS[0]])[0][0], abs=1e-5)

    csv_out = tmp_path / "out.csv"
    assert cli("predict", "--adapter", f"sent={sample_adapter}", "--adapter", f"cats={cats_adapter}",
               "--device", "cpu", "--input", data, "--output", csv_out).code == 0
    table = list(csv.DictReader(csv_out.open(encoding="utf-8")))
    assert len(table) == 4 and table[0]["prob_positive"] and table[0][f"prob_{CATS[0]}"] == ""

    write(data, f"review,adapter\n{TEXTS[0]},sent\n{TEXTS[1]},typo\n")
    result = cli("predict", "--adapter", f"sent={sample_adapter}", "--input", data,
                 "--output", tmp_path / "x.jsonl")
    assert result.code == 2
    assert result.err.strip() == f"error: {data}: line 3: unknown adapter 'typo' (loaded: sent)"
    assert not (tmp_path / "x.jsonl").exists()


# ---- 3. load, unload, hot-swap at runtime ------------------------------------------------------------------
def test_add_remove_and_hot_swap_without_reloading_the_base(sample_adapter, second_adapter, cats_adapter):
    predictor = Predictor.from_adapters({"sent": sample_adapter}, device="cpu")
    model, base_weight = predictor.model, predictor.model.base_model.model.transformer.h[0].mlp.c_fc.weight

    predictor.add_adapter("task", cats_adapter)
    np.testing.assert_allclose(predictor.predict_proba(TEXTS, "task"), single(cats_adapter), atol=1e-5)
    predictor.use("task")
    assert predictor.predict(TEXTS[:1])[0].label_name in CATS

    # Replace `task` in place by an adapter with another label count; the default stays `task`.
    predictor.add_adapter("task", second_adapter)
    assert predictor.default == "task" and list(predictor.adapters) == ["sent", "task"]
    np.testing.assert_allclose(predictor.predict_proba(TEXTS), single(second_adapter), atol=1e-5)
    np.testing.assert_allclose(predictor.predict_proba(TEXTS, "sent"), single(sample_adapter), atol=1e-5)

    predictor.remove_adapter("task")
    assert predictor.default == "sent" and list(predictor.adapters) == ["sent"]
    assert set(predictor.model.peft_config) == {predictor.key("sent")}
    with pytest.raises(UserError, match=r"^unknown adapter 'task' \(loaded: sent\)$"):
        predictor.predict(TEXTS, "task")
    for name in ("half", "a.b", "lo"):  # PyTorch attributes, dots, parts of `lora_`: PEFT never sees them
        predictor.add_adapter(name, second_adapter)
        np.testing.assert_allclose(predictor.predict_proba(TEXTS, name), single(second_adapter), atol=1e-5)
        predictor.remove_adapter(name)
    with pytest.raises(UserError, match=r"^cannot remove 'sent': it is the only adapter loaded$"):
        predictor.remove_adapter("sent")
    np.testing.assert_allclose(predictor.predict_proba(TEXTS), single(sample_adapter), atol=1e-5)
    assert predictor.model is model
    assert predictor.model.base_model.model.transformer.h[0].mlp.c_fc.weight is base_weight


# ---- 4. combine --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["cat", "svd"])
def test_combining_an_adapter_with_itself_is_exact(tmp_path, sample_adapter, method):
    # cat and svd are exact: 0.5·Δ + 0.5·Δ = Δ (rank 8 fits the svd), and 0.5·head + 0.5·head = head.
    out = combine({"one": sample_adapter, "two": sample_adapter}, tmp_path / "c", method=method)
    np.testing.assert_allclose(single(out), single(sample_adapter), atol=1e-5)
    run = read_run(out)
    assert run["combination"]["method"] == method
    assert run["lora"]["r"] == (16 if method == "cat" else 8)


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "svd", "cat"])
def test_combine_writes_an_adapter_every_command_accepts(cli, tmp_path, sample_adapter, second_adapter,
                                                         method):
    out = tmp_path / "combined"
    result = cli("combine", "--adapter", f"one={sample_adapter}", "--adapter", f"two={second_adapter}",
                 "--weights", "0.7", "0.3", "--method", method, "--output", out)
    assert result.code == 0, result.err
    run = read_run(out)
    assert run["label_names"] == ["negative", "positive"]
    assert run["base_fingerprint"] == read_run(sample_adapter)["base_fingerprint"]
    assert [(a["name"], a["weight"]) for a in run["combination"]["adapters"]] == [("one", 0.7), ("two", 0.3)]
    assert "weighted sum" in run["combination"]["head"]
    # The head is the weighted sum of the heads, whatever the method does to the LoRA matrices.
    head = {name: load_file(str(path / WEIGHTS_FILE))["base_model.model.score.weight"]
            for name, path in (("one", sample_adapter), ("two", second_adapter), ("new", out))}
    expected = 0.7 * head["one"] + 0.3 * head["two"]
    np.testing.assert_allclose(head["new"].numpy(), expected.numpy(), atol=1e-6)

    if method != "cat":
        return
    heldout = SAMPLE.with_name("weibo_sample_heldout.csv")
    assert cli("evaluate", "--adapter", out, "--data", heldout, "--device", "cpu").code == 0
    assert cli("predict", "--adapter", out, "--adapter", f"one={sample_adapter}",
               "--text", TEXTS[0]).code == 0
    assert cli("adapters", "info", out).code == 0


def test_combine_refuses_different_label_sets(cli, tmp_path, sample_adapter, cats_adapter):
    result = cli("combine", "--adapter", f"sent={sample_adapter}", "--adapter", f"cats={cats_adapter}",
                 "--output", tmp_path / "never")
    assert result.code == 2
    assert result.err.strip() == (
        "error: cannot combine adapters with different label sets: 'sent' has (negative, positive) "
        f"but 'cats' has ({', '.join(CATS)}); their classifier heads do not match")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--weights", "1"], "--weights: 1 weight(s) for 2 adapters; give one per adapter"),
    (["--method", "ties", "--density", "0"], "--density must be in (0, 1], got 0.0"),
])
def test_combine_rejects_bad_options(cli, tmp_path, sample_adapter, second_adapter, args, message):
    result = cli("combine", "--adapter", f"one={sample_adapter}", "--adapter", f"two={second_adapter}", *args,
                 "--output", tmp_path / "never")
    assert (result.code, result.err.strip()) == (2, f"error: {message}")


def test_combine_refuses_rank_mismatch_for_element_wise_methods(tmp_path, sample_adapter, tiny_base):
    r4 = tmp_path / "r4"
    train(TrainConfig(data=str(SAMPLE), base_model=str(tiny_base), output=str(r4), max_steps=1, lora_r=4,
                      logging_steps=1000))
    message = r"^--method ties needs adapters of the same LoRA rank \(one: r=8, two: r=4\); use cat or svd$"
    with pytest.raises(UserError, match=message):
        combine({"one": sample_adapter, "two": r4}, tmp_path / "never", method="ties")
    out = combine({"one": sample_adapter, "two": r4}, tmp_path / "cat", method="cat")
    assert read_run(out)["lora"]["r"] == 12


# ---- 5. merge into the base --------------------------------------------------------------------------------
def test_merged_model_loads_in_a_plain_pipeline_with_the_same_probabilities(cli, tmp_path, cats_adapter):
    from transformers import AutoTokenizer, pipeline

    out = tmp_path / "merged"
    result = cli("merge", "--adapter", cats_adapter, "--output", out)
    assert result.code == 0, result.err
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["id2label"] == {str(i): name for i, name in enumerate(CATS)}
    assert config["label2id"] == {name: i for i, name in enumerate(CATS)}
    # GPT-2 would add token_type_ids through its word embedding; the saved tokenizer must not produce them.
    assert "token_type_ids" not in AutoTokenizer.from_pretrained(str(out))(TEXTS[0])

    classify = pipeline("text-classification", model=str(out), top_k=None, device="cpu")
    scores = [{d["label"]: d["score"] for d in row} for row in classify(TEXTS)]
    got = np.array([[row[name] for name in CATS] for row in scores])
    np.testing.assert_allclose(got, single(cats_adapter), atol=1e-4)


def test_merged_model_is_a_base_for_further_training(cli, tmp_path, sample_adapter):
    merged = merge(sample_adapter, tmp_path / "merged")
    out = tmp_path / "on-merged"
    result = cli("train", "--data", SAMPLE, "--base-model", merged, "--output", out, "--max-steps", "1")
    assert result.code == 0, result.err
    assert read_run(out)["base_model_dir"] == str(merged.resolve())
    result = cli("predict", "--adapter", out, "--device", "cpu", "--text", TEXTS[0])
    assert result.code == 0 and "Prediction:" in result.out, result.err
    # An adapter of the merged base is not an adapter of the original base.
    with pytest.raises(UserError, match="adapters on one base must share it"):
        Predictor.from_adapters({"orig": sample_adapter, "new": out}, device="cpu")


def test_merged_model_is_a_base_for_a_task_with_another_label_count(cli, tmp_path, cats_adapter):
    merged = merge(cats_adapter, tmp_path / "merged-cats")
    out = tmp_path / "binary-on-cats"
    result = cli("train", "--data", SAMPLE, "--base-model", merged, "--output", out, "--max-steps", "1")
    assert result.code == 0, result.err
    assert read_run(out)["label_names"] == ["negative", "positive"]


# ---- 6. inspect --------------------------------------------------------------------------------------------
def test_adapters_info(cli, sample_adapter, tiny_base):
    run = read_run(sample_adapter)
    details = info(sample_adapter)
    assert details["parameters"]["total"] == run["trainable_parameters"]
    assert details["parameters"]["head"] == 2 * 128
    result = cli("adapters", "info", sample_adapter)
    assert result.code == 0, result.err
    best = run["best"]
    size = (sample_adapter / WEIGHTS_FILE).stat().st_size
    assert result.out.splitlines() == [
        f"adapter     {sample_adapter}",
        f"base model  {tiny_base.resolve()} (fingerprint {run['base_fingerprint']})",
        "labels      2: negative, positive",
        "LoRA        r=8, alpha=32, dropout=0.1, targets c_attn, c_proj",
        f"parameters  {run['trainable_parameters']:,} trainable "
        f"({run['trainable_parameters'] - 256:,} LoRA + 256 head)",
        f"file size   {size / 1e3:.1f} kB (adapter_model.safetensors, F32)",
        "max length  128 tokens",
        f"best        accuracy {best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f} "
        f"(validation, epoch {best['epoch']:g})",
        # What the model card (README.md) also shows, when run.json has it.
        *([f"stripped    accuracy {run['validation_stripped']['accuracy']:.4f}, macro-F1 "
           f"{run['validation_stripped']['macro_f1']:.4f} (validation, emoticons removed)"]
          if run.get("validation_stripped") else []),
        *([f"calibrated  temperature {run['temperature']:.4g} (predict, evaluate and serve divide the logits by it)"]
          if run.get("temperature") is not None else []),
    ]
    as_json = json.loads(cli("adapters", "info", sample_adapter, "--json").out)
    assert as_json["label_names"] == ["negative", "positive"] and as_json["file_bytes"] == size

    result = cli("adapters", "info", sample_adapter.parent / "missing")
    assert (result.code, result.err.strip()) == (2, f"error: {sample_adapter.parent / 'missing'}: "
                                                    "no such adapter directory")


# ---- 7. small files ----------------------------------------------------------------------------------------
def test_float16_adapters_are_half_the_size_and_predict_the_same_labels(cli, tmp_path, tiny_base,
                                                                        sample_adapter, second_adapter):
    half = Path(shutil.copytree(sample_adapter, tmp_path / "sixteen"))
    cast_weights(half, "float16")  # what --save-dtype float16 does to the trained weights
    assert (half / WEIGHTS_FILE).stat().st_size < 0.55 * (sample_adapter / WEIGHTS_FILE).stat().st_size
    texts = TEXTS + read_texts(SAMPLE.with_name("weibo_sample_heldout.csv"))[0]
    full_probs, half_probs = single(sample_adapter, texts), single(half, texts)
    assert (half_probs.argmax(1) == full_probs.argmax(1)).all()
    np.testing.assert_allclose(half_probs, full_probs, atol=1e-3)

    out = tmp_path / "trained16"
    result = cli("train", "--data", SAMPLE, "--base-model", tiny_base, "--output", out, "--max-steps", "1",
                 "--save-dtype", "float16")
    assert result.code == 0, result.err
    assert {t.dtype for t in load_file(str(out / WEIGHTS_FILE)).values()} == {torch.float16}
    assert read_run(out)["save_dtype"] == "float16" and info(out)["weights_dtype"] == "F16"

    out = tmp_path / "combined16"
    assert cli("combine", "--adapter", f"one={sample_adapter}", "--adapter", f"two={second_adapter}",
               "--save-dtype", "float16", "--output", out).code == 0
    assert {t.dtype for t in load_file(str(out / WEIGHTS_FILE)).values()} == {torch.float16}
    assert read_run(out)["save_dtype"] == "float16"
    full = combine({"one": sample_adapter, "two": second_adapter}, tmp_path / "combined32")
    assert (single(out, texts).argmax(1) == single(full, texts).argmax(1)).all()


def test_hot_swap_picks_up_new_files_under_the_same_name(adapter_copy, sample_adapter, second_adapter):
    # Replacing the files of a loaded adapter and adding it again under its name picks up the new weights.
    predictor = Predictor.from_adapters({"live": adapter_copy, "other": second_adapter}, device="cpu")
    shutil.rmtree(adapter_copy)
    shutil.copytree(second_adapter, adapter_copy)
    predictor.add_adapter("live", adapter_copy)
    np.testing.assert_allclose(predictor.predict_proba(TEXTS, "live"), single(second_adapter), atol=1e-5)
