"""Output directories (init-model, train, combine, merge, export): an existing directory is replaced only when it
is this package's own output of the same kind and none of the command's inputs, never the current directory;
anything else is refused with one line and every file stays byte-identical."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from weibo_sentiment.errors import UserError
from weibo_sentiment.exporters.onnx import export_onnx, quantize_export
from weibo_sentiment.modeling import init_model, resolve_base_model
from weibo_sentiment.output import SOURCE_FILE, check_output_dir

from .conftest import SAMPLE, write

TRAIN_FAST = ["--max-steps", "1", "--max-length", "32", "--epochs", "1"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under `root` (relative path → sha256, or "dir"), hidden ones included."""
    tree = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            tree[rel] = "link:" + str(path.readlink())
        elif path.is_dir():
            tree[rel] = "dir"
        else:
            tree[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def refused(result, message: str) -> None:
    assert result.code == 2, (result.code, result.err)
    assert result.err.strip() == f"error: {message}"
    assert "Traceback" not in result.err


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, sample_adapter) -> Path:
    return export_onnx(sample_adapter, tmp_path_factory.mktemp("exports") / "fp32")


@pytest.fixture
def foreign(tmp_path) -> Path:
    """A directory of the user's: neither empty nor written by weibo-sentiment."""
    folder = tmp_path / "mine"
    folder.mkdir()
    write(folder / "notes.txt", "my own notes\n")
    return folder


# ---- a command's own input -----------------------------------------------------------------------------------
def test_train_into_the_folder_of_its_data_is_refused(tmp_path, cli, tiny_base):
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    data = run / "train.csv"
    shutil.copy(SAMPLE, data)
    before = snapshot(tmp_path)
    r = cli("train", "--data", data, "--base-model", tiny_base, "--output", run, *TRAIN_FAST)
    refused(r, f"{run}: holds this command's input {data} (the --data file) and will not be overwritten; "
               "choose another --output")
    assert snapshot(tmp_path) == before


def test_train_refuses_before_reading_data_or_training(tmp_path, cli, foreign):
    # The output is checked first: a wrong --output costs no minutes of training (nor needs valid data).
    r = cli("train", "--data", tmp_path / "missing.csv", "--base-model", "/nonexistent/base", "--output", foreign)
    refused(r, f"{foreign}: already exists and is not an adapter directory written by weibo-sentiment; "
               "choose another --output, or remove it yourself")


@pytest.mark.parametrize("command", ["merge", "export"])
def test_merge_or_export_onto_its_own_adapter_is_refused(tmp_path, cli, adapter_copy, command):
    before = snapshot(tmp_path)
    r = cli(command, "--adapter", adapter_copy, "--output", adapter_copy)
    refused(r, f"{adapter_copy}: is this command's input (the --adapter directory) and will not be overwritten; "
               "choose another --output")
    assert snapshot(tmp_path) == before


def test_combine_onto_one_of_its_adapters_is_refused(tmp_path, cli, sample_adapter, adapter_copy):
    before = snapshot(tmp_path)
    r = cli("combine", "--adapter", f"one={sample_adapter}", "--adapter", f"two={adapter_copy}",
            "--output", adapter_copy)
    refused(r, f"{adapter_copy}: is this command's input (the --adapter directory) and will not be overwritten; "
               "choose another --output")
    assert snapshot(tmp_path) == before


def test_output_holding_an_input_is_refused(tmp_path, cli, adapter_copy):
    # adapter_copy lives in tmp_path: writing the merged model over tmp_path would take the adapter with it.
    write(tmp_path / "notes.txt", "keep me\n")
    before = snapshot(tmp_path)
    r = cli("merge", "--adapter", adapter_copy, "--output", tmp_path)
    refused(r, f"{tmp_path}: holds this command's input {adapter_copy} (the --adapter directory) and will not be "
               "overwritten; choose another --output")
    assert snapshot(tmp_path) == before


def test_output_holding_the_base_model_is_refused(tmp_path, cli, tiny_base):
    base = Path(shutil.copytree(tiny_base, tmp_path / "models" / "tiny"))
    before = snapshot(tmp_path)
    r = cli("train", "--data", SAMPLE, "--base-model", base, "--output", tmp_path / "models", *TRAIN_FAST)
    refused(r, f"{tmp_path / 'models'}: holds this command's input {base} (the --base-model directory) and will "
               "not be overwritten; choose another --output")
    assert snapshot(tmp_path) == before


def test_init_model_into_the_folder_of_its_vocabulary_data_is_refused(tmp_path, cli):
    data = shutil.copy(SAMPLE, tmp_path / "posts.csv")
    before = snapshot(tmp_path)
    r = cli("init-model", "--vocab-from-data", data, "--output", tmp_path)
    refused(r, f"{tmp_path}: holds this command's input {data} (the --vocab-from-data file) and will not be "
               "overwritten; choose another --output")
    assert snapshot(tmp_path) == before


# ---- the current directory -----------------------------------------------------------------------------------
def _args(command, real_vocab, tiny_base, sample_adapter):
    return {
        "init-model": ["--vocab", real_vocab],
        "train": ["--data", SAMPLE, "--base-model", tiny_base, *TRAIN_FAST],
        "combine": ["--adapter", f"one={sample_adapter}", "--adapter", f"two={sample_adapter}"],
        "merge": ["--adapter", sample_adapter],
        "export": ["--adapter", sample_adapter],
    }[command]


@pytest.mark.parametrize("command", ["init-model", "train", "combine", "merge", "export"])
def test_output_dot_is_refused(tmp_path, cli, monkeypatch, real_vocab, tiny_base, sample_adapter, command):
    work = tmp_path / "work"
    work.mkdir()
    write(work / "notes.txt", "keep me\n")
    monkeypatch.chdir(work)
    args = _args(command, real_vocab, tiny_base, sample_adapter)
    before = snapshot(tmp_path)
    r = cli(command, *args, "--output", ".")
    refused(r, ".: is the current directory and will not be overwritten; choose another --output")
    r = cli(command, *args, "--output", "..")
    refused(r, "..: holds the current directory and will not be overwritten; choose another --output")
    assert snapshot(tmp_path) == before


# ---- someone else's directory or file, or our own output of another kind -------------------------------------
WHAT = {"init-model": "a base model", "train": "an adapter directory", "combine": "an adapter directory",
        "merge": "a merged model", "export": "an ONNX export"}


@pytest.mark.parametrize("command", ["init-model", "train", "combine", "merge", "export"])
def test_a_users_directory_is_refused(tmp_path, cli, foreign, real_vocab, tiny_base, sample_adapter, command):
    before = snapshot(tmp_path)
    r = cli(command, *_args(command, real_vocab, tiny_base, sample_adapter), "--output", foreign)
    refused(r, f"{foreign}: already exists and is not {WHAT[command]} written by weibo-sentiment; "
               "choose another --output, or remove it yourself")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["init-model", "merge", "export"])
def test_a_file_at_the_output_path_is_refused(tmp_path, cli, real_vocab, tiny_base, sample_adapter, command):
    target = write(tmp_path / "model.bin", "not a directory\n")
    before = snapshot(tmp_path)
    r = cli(command, *_args(command, real_vocab, tiny_base, sample_adapter), "--output", target)
    refused(r, f"{target}: already exists and is not a directory; choose another --output, or remove it yourself")
    assert snapshot(tmp_path) == before


def test_merge_onto_an_adapter_directory_is_refused(tmp_path, cli, sample_adapter, adapter_copy):
    # adapter_copy is ours, but an adapter, not a merged model: merge must not replace it.
    before = snapshot(tmp_path)
    r = cli("merge", "--adapter", sample_adapter, "--output", adapter_copy)
    refused(r, f"{adapter_copy}: already exists and is not a merged model written by weibo-sentiment; "
               "choose another --output, or remove it yourself")
    assert snapshot(tmp_path) == before


def test_train_onto_an_export_or_a_base_is_refused(tmp_path, cli, tiny_base, export_dir):
    exported = Path(shutil.copytree(export_dir, tmp_path / "export"))
    base = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    before = snapshot(tmp_path)
    for target in (exported, base):
        r = cli("train", "--data", SAMPLE, "--base-model", tiny_base, "--output", target, *TRAIN_FAST)
        refused(r, f"{target}: already exists and is not an adapter directory written by weibo-sentiment; "
                   "choose another --output, or remove it yourself")
    assert snapshot(tmp_path) == before


def test_quantize_export_onto_its_source_is_refused(tmp_path, export_dir):
    source = Path(shutil.copytree(export_dir, tmp_path / "fp32"))
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as e:
        quantize_export(source, source)
    assert str(e.value) == (f"{source}: is this command's input (the source export) and will not be overwritten; "
                            "choose another --output")
    assert snapshot(tmp_path) == before


def test_a_symbolic_link_is_refused(tmp_path, cli, sample_adapter, adapter_copy):
    link = tmp_path / "link"
    link.symlink_to(adapter_copy)
    before = snapshot(tmp_path)
    r = cli("train", "--data", SAMPLE, "--base-model", "/nonexistent/base", "--output", link)
    refused(r, f"{link}: is a symbolic link and will not be replaced; choose another --output, "
               "or remove it yourself")
    assert snapshot(tmp_path) == before


def test_the_download_target_names_model_dir(tmp_path, foreign):
    with pytest.raises(UserError) as e:
        check_output_dir(foreign, "base", option="--model-dir")
    assert str(e.value) == (f"{foreign}: already exists and is not a base model written by weibo-sentiment; "
                            "choose another --model-dir, or remove it yourself")


# ---- our own output of the same kind is replaced, atomically -------------------------------------------------
def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_train_replaces_its_own_earlier_adapter(tmp_path, cli, tiny_base):
    out = tmp_path / "adapter"
    for seed in ("1", "2"):
        r = cli("train", "--data", SAMPLE, "--base-model", tiny_base, "--output", out, *TRAIN_FAST, "--seed", seed)
        assert r.code == 0, r.err
        assert json.loads((out / "run.json").read_text())["training"]["seed"] == int(seed)
    assert _siblings(out) == ["adapter"]  # no temporary or old copy left


def test_merge_and_export_replace_their_own_earlier_output(tmp_path, cli, sample_adapter):
    for command, name, marker in (("merge", "merged", "weibo_sentiment_merge.json"),
                                  ("export", "export", "export.json")):
        out = tmp_path / name
        for _ in range(2):
            r = cli(command, "--adapter", sample_adapter, "--output", out)
            assert r.code == 0, r.err
            assert (out / marker).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "merged"]


def test_init_model_marks_and_replaces_its_own_base(tmp_path, cli, real_vocab):
    out = tmp_path / "base"
    for seed in ("0", "1"):
        r = cli("init-model", "--vocab", real_vocab, "--output", out, "--seed", seed)
        assert r.code == 0, r.err
        assert json.loads((out / SOURCE_FILE).read_text()) == {"init_model": "tiny", "seed": int(seed)}
    assert _siblings(out) == ["base"]
    # The mark records no hub id: the directory still serves as --model-dir for the default base model.
    assert resolve_base_model("uer/gpt2-chinese-cluecorpussmall", out) == out


def test_an_empty_directory_is_used(tmp_path, cli, sample_adapter):
    out = tmp_path / "merged"
    out.mkdir()
    r = cli("merge", "--adapter", sample_adapter, "--output", out)
    assert r.code == 0, r.err
    assert (out / "weibo_sentiment_merge.json").is_file()


def test_api_writers_check_too(tmp_path, foreign, real_vocab):
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="is not a base model written by weibo-sentiment"):
        init_model(foreign, "tiny", vocab_file=real_vocab)
    assert snapshot(tmp_path) == before
