"""adapt-base: causal-LM training of the base on unlabelled texts, packed into full blocks; the result is a base."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from transformers import TrainerCallback

from tests.conftest import SAMPLE
from weibo_sentiment.adaptation import AdaptConfig, adapt_base
from weibo_sentiment.corpus import encode_blocks, pack, read_corpus, split_texts
from weibo_sentiment.errors import UserError
from weibo_sentiment.inference import Predictor
from weibo_sentiment.modeling import load_tokenizer
from weibo_sentiment.output import SOURCE_FILE

FAST = dict(block_size=64, batch_size=8, validation_split=0.1, lr=3e-3, logging_steps=2, progress=False)


def test_pack_is_run_clm_group_texts():
    ids = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    blocks = pack(ids, sep_id=102, block_size=4)
    stream = [5, 6, 7, 102, 8, 102, 9, 10, 11, 12, 13, 102, 14, 15, 102]  # 15 tokens: 3 blocks, 3 dropped
    assert blocks.shape == (3, 4)
    assert blocks.ravel().tolist() == stream[:12]


def test_real_texts_pack_in_order_without_padding(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    texts = [line.split(",", 1)[1] for line in SAMPLE.read_text(encoding="utf-8").splitlines()[1:40]]
    blocks = encode_blocks(tokenizer, texts, 32)
    assert blocks.shape[1] == 32 and len(blocks) > 5
    assert tokenizer.pad_token_id not in blocks and tokenizer.cls_token_id not in blocks
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    expected = [t for x in ids for t in [*x, tokenizer.sep_token_id]]
    assert len(expected) - blocks.size < 32  # only the remainder is dropped
    assert blocks.ravel().tolist() == expected[:blocks.size]  # every text once, in order, [SEP] after each


def test_split_holds_out_texts_before_packing():
    texts = [f"t{i}" for i in range(200)]
    train_texts, val = split_texts(texts, 0.1, seed=1)
    assert len(val) == 20 and sorted(train_texts + val) == sorted(texts) and not set(train_texts) & set(val)
    assert split_texts(texts, 0.1, seed=1) == (train_texts, val)


def test_corpus_reads_the_text_of_jsonl_and_parquet_not_their_lines(tmp_path):
    texts = ["第一条微博", "带逗号, 和\"引号\"", "😀 表情"]
    lines = tmp_path / "corpus.jsonl"
    lines.write_text("".join(json.dumps({"id": i, "review": t}, ensure_ascii=False) + "\n\n"
                             for i, t in enumerate(texts)), encoding="utf-8")
    table = tmp_path / "corpus.parquet"
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pytest.importorskip("pyarrow").table({"review": texts, "label": [0, 1, 0]}), table)
    got, files = read_corpus([str(lines), str(table), str(SAMPLE)], text_column="review", encoding="utf-8")
    sample, _ = read_corpus([str(SAMPLE)], text_column="review", encoding="utf-8")
    assert got == texts + texts + sample  # (before: the JSON lines themselves, `{"id": 0, "review": ...}`)
    assert [f["texts"] for f in files] == [3, 3, len(sample)]
    with pytest.raises(UserError, match=rf"^{lines}: line 1: no key 'text'"):
        read_corpus([str(lines)], text_column="text", encoding="utf-8")


def test_adapt_lowers_perplexity_and_output_is_a_base(tmp_path, tiny_base, cli, caplog):
    out = tmp_path / "adapted"
    result = cli("adapt-base", "--texts", SAMPLE, "--base-model", tiny_base, "--output", out, "--max-steps", 12,
                 "--block-size", 64, "--batch-size", 8, "--validation-split", 0.1, "--lr", 3e-3,
                 "--logging-steps", 4)
    assert result.code == 0, result.err
    assert "Held-out perplexity:" in result.out and f"--base-model {out}" in result.out
    source = json.loads((out / SOURCE_FILE).read_text(encoding="utf-8"))
    assert source["perplexity_after"] < source["perplexity_before"] * 0.8
    assert "base_model" not in source  # that key means "downloaded hub id" to resolve_base_model
    assert source["adapted_from"] == str(tiny_base.resolve()) and len(source["adapted_from_fingerprint"]) == 16
    assert source["steps"] == 12 and source["block_size"] == 64 and source["method"] == "full"
    assert source["texts"][0]["sha256"] and source["texts"][0]["texts"] == 470
    config = json.loads((out / "config.json").read_text())
    assert config["pad_token_id"] == 0 and config["architectures"] == ["GPT2LMHeadModel"]

    # an adapter trained on it carries its fingerprint ...
    adapter = tmp_path / "adapter"
    assert cli("train", "--data", SAMPLE, "--base-model", out, "--output", adapter, "--max-steps", 2).code == 0
    run = json.loads((adapter / "run.json").read_text())
    assert run["base_model"] == str(out.resolve())
    # ... and is refused on the parent base, even when the parent is named explicitly
    refused = cli("predict", "--adapter", adapter, "--base-model", tiny_base, "--text", "好开心")
    assert refused.code == 2
    assert refused.err.startswith("error: adapter 'adapter' (") and "--allow-other-base" in refused.err
    assert "adapters on one base must share it" in refused.err
    with caplog.at_level(logging.WARNING):
        forced = Predictor.from_adapters([adapter], base_model=tiny_base, device="cpu", allow_other_base=True)
    assert forced.predict(["好开心"])[0].label_name in ("negative", "positive")
    assert "--allow-other-base: adapter 'adapter' was trained on base model" in caplog.text
    assert cli("predict", "--adapter", adapter, "--base-model", out, "--text", "好开心").code == 0


def test_lora_method_merges_into_an_ordinary_base(tmp_path, tiny_base):
    result = adapt_base(AdaptConfig(texts=[str(SAMPLE)], base_model=str(tiny_base), output=str(tmp_path / "b"),
                                    method="lora", max_steps=4, **FAST))
    files = {p.name for p in (tmp_path / "b").iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt", SOURCE_FILE} <= files
    assert not any("adapter" in name for name in files)
    assert result.source["lora"]["merged"] and result.source["perplexity_after"] < result.source["perplexity_before"]


class _StopAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt


def test_interrupt_then_resume(tmp_path, tiny_base):
    config = AdaptConfig(texts=[str(SAMPLE)], base_model=str(tiny_base), output=str(tmp_path / "b"), max_steps=6,
                         save_steps=2, **FAST)
    with pytest.raises(UserError, match=r"interrupted; checkpoints are in .*b\.checkpoints, continue with --resume"):
        adapt_base(config, callbacks=[_StopAfterSave()])
    assert (tmp_path / "b.checkpoints" / "checkpoint-4").is_dir() and not (tmp_path / "b").exists()
    with pytest.raises(UserError, match="pass --resume to continue it or --restart"):
        adapt_base(config)
    with pytest.raises(UserError, match=r"different run \(--block-size was 64, now 32\)"):
        adapt_base(AdaptConfig(**{**config.__dict__, "block_size": 32, "resume": True}))
    result = adapt_base(AdaptConfig(**{**config.__dict__, "resume": True}))
    assert result.source["steps"] == 6 and (tmp_path / "b" / "model.safetensors").is_file()
    assert not (tmp_path / "b.checkpoints").exists()  # removed after success, as train does


@pytest.mark.parametrize("case", ["missing", "empty", "foreign", "parent"])
def test_bad_input_is_one_clear_line(tmp_path, tiny_base, cli, case):
    output = tmp_path / "out"
    texts = SAMPLE
    if case == "missing":
        texts = tmp_path / "nope.csv"
    elif case == "empty":
        texts = tmp_path / "blank.txt"
        texts.write_text("\n  \n", encoding="utf-8")
    elif case == "foreign":
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    elif case == "parent":
        output = tiny_base
    result = cli("adapt-base", "--texts", texts, "--base-model", tiny_base, "--output", output, "--max-steps", 1)
    expected = {
        "missing": f"error: {texts}: ",
        "empty": f"error: {texts}: contains no text",
        "foreign": f"error: {output}: already exists and is not a base model written by weibo-sentiment",
        "parent": f"error: {output}: is this command's input (the --base-model directory)",
    }[case]
    assert result.code == 2 and result.err.strip().splitlines()[-1].startswith(expected), result.err
    assert len(result.err.strip().splitlines()) == 1
    if case == "foreign":
        assert (output / "notes.txt").read_text() == "mine"


def test_adapted_base_counts_blocks(tmp_path, tiny_base):
    with pytest.raises(UserError, match="fewer tokens than one --block-size 512 block"):
        adapt_base(AdaptConfig(texts=[str(SAMPLE)], base_model=str(tiny_base), output=str(tmp_path / "b"),
                               max_steps=1, **{**FAST, "block_size": 512, "validation_split": 0.002}))
    with pytest.raises(UserError, match="exceeds the base model's 512 positions"):
        adapt_base(AdaptConfig(texts=[str(SAMPLE)], base_model=str(tiny_base), output=str(tmp_path / "b"),
                               max_steps=1, **{**FAST, "block_size": 1024}))
    assert np.asarray(pack([[1, 2]], 3, 4)).shape == (0, 4)
