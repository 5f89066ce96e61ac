"""Checkpoints: a directory owned by one run, kill -9 and an exact resume, and the refusals that protect both."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from weibo_sentiment.checkpoints import COMPLETE_FILE, MARKER_FILE, checkpoint_complete, last_complete_checkpoint
from weibo_sentiment.errors import UserError
from weibo_sentiment.training import TrainConfig, train

from .conftest import ROOT, SAMPLE

HELDOUT = ROOT / "examples" / "weibo_sample_heldout.csv"
# 423 training rows, batch 16: 27 steps an epoch, 54 in all; a checkpoint every 5 steps and after each epoch.
RECIPE = ["--epochs", "2", "--max-length", "32", "--lr", "0.002", "--save-steps", "5"]

# The CLI in a fresh process; it stops after step 33 (checkpoint-30 written) and waits there to be killed.
STALLING_CLI = """
import sys, time
from transformers import TrainerCallback
import weibo_sentiment.training as training
from weibo_sentiment.cli import main

class Stall(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= 33:
            time.sleep(600)

real = training.train
training.train = lambda config, callbacks=None: real(config, [Stall(), *(callbacks or [])])
sys.exit(main(sys.argv[1:]))
"""


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def train_args(tiny_base: Path, out: Path, checkpoints: Path | str, *extra) -> list:
    return ["train", "--data", SAMPLE, "--base-model", tiny_base, "--output", out, "--checkpoint-dir", checkpoints,
            *RECIPE, *extra]


@contextmanager
def one_thread():
    """Training in this process with one thread, as the subprocess (OMP_NUM_THREADS=1): the same arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# With --emoticon-dropout the texts drawn in the second epoch must be the same ones, emoticons stripped or not.
@pytest.mark.parametrize("dropout", ["0", "0.5"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_base, cli, caplog, dropout):
    from weibo_sentiment.data import load_labelled
    from weibo_sentiment.inference import Predictor

    ck = tmp_path / "killed.ck"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = ("--emoticon-dropout", dropout)
    args = [sys.executable, "-c", STALLING_CLI, *map(str, train_args(tiny_base, tmp_path / "resumed", ck, *p))]
    log = (tmp_path / "killed.log").open("w")  # a file, not a pipe: a full pipe would stop the run
    killed = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with one_thread():  # the uninterrupted run, meanwhile
            reference = cli(*train_args(tiny_base, tmp_path / "ref", tmp_path / "ref.ck", *p))
        assert reference.code == 0, reference.err
        # A complete checkpoint in the second epoch (after step 27): the resumed run must reproduce the second
        # epoch's batch order and the dropout masks from the middle of it.
        deadline = time.monotonic() + 120
        while (last := last_complete_checkpoint(ck)) is None or last.name != "checkpoint-30":
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint-30 after 120 s"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        killed.kill()
        log.close()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed").exists() and (ck / MARKER_FILE).is_file()

    caplog.clear()
    caplog.set_level(logging.INFO, logger="weibo_sentiment")
    with one_thread():
        resumed = cli(*train_args(tiny_base, tmp_path / "resumed", ck, *p, "--resume"))
    assert resumed.code == 0, resumed.err
    assert f"resuming from {ck / 'checkpoint-30'}" in caplog.messages
    assert not ck.exists() and not (tmp_path / "ref.ck").exists()  # both runs created their checkpoint dirs

    ref_run, resumed_run = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("ref", "resumed"))
    assert resumed_run["epochs"] == ref_run["epochs"]
    assert [e["epoch"] for e in resumed_run["epochs"]] == [1.0, 2.0]
    assert resumed_run["training"]["emoticon_dropout"] == ref_run["training"]["emoticon_dropout"] == float(dropout)
    assert resumed_run["validation_stripped"] == ref_run["validation_stripped"]
    texts = load_labelled(HELDOUT).texts
    predictor = Predictor.from_adapters({"ref": tmp_path / "ref", "resumed": tmp_path / "resumed"},
                                        base_model=tiny_base, device="cpu")
    diff = np.abs(predictor.predict_proba(texts, "ref") - predictor.predict_proba(texts, "resumed")).max()
    print(f"max |probability difference| resumed vs uninterrupted on {len(texts)} held-out texts: {diff:.3g}")
    assert diff < 1e-4


# ---- an interrupted run (Ctrl-C after step 12: checkpoint-10 is its last), made once and copied per test -------
class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, tiny_base) -> Path:
    root = tmp_path_factory.mktemp("interrupted")
    config = TrainConfig(data=str(SAMPLE), base_model=str(tiny_base), output=str(root / "out"),
                         checkpoint_dir=str(root / "ck"), epochs=2, max_length=32, lr=0.002, save_steps=5,
                         logging_steps=1000)
    with pytest.raises(UserError, match="interrupted; checkpoints are in"):
        train(config, callbacks=[StopAt(12)])
    assert sorted(p.name for p in (root / "ck").iterdir()) == ["checkpoint-10", MARKER_FILE]
    return root / "ck"


@pytest.fixture
def ck(tmp_path, interrupted_run) -> Path:
    return Path(shutil.copytree(interrupted_run, tmp_path / "ck"))


def test_rerun_without_resume_is_refused(tmp_path, tiny_base, ck, cli):
    before = snapshot(ck)
    result = cli(*train_args(tiny_base, tmp_path / "out", ck))
    assert (result.code, result.err) == (2, f"error: --checkpoint-dir {ck} holds checkpoints of an interrupted run "
                                            f"(up to checkpoint-10); pass --resume to continue it or --restart to "
                                            f"discard them and start afresh\n")
    assert snapshot(ck) == before and not (tmp_path / "out").exists()


def test_resume_with_other_data_or_settings_is_refused(tmp_path, tiny_base, ck, cli):
    before = snapshot(ck)
    result = cli(*train_args(tiny_base, tmp_path / "out", ck, "--resume", "--lr", "0.001"))
    assert (result.code, result.err) == (2, f"error: --resume: the checkpoints in {ck} are of a different run (--lr "
                                            f"was 0.002, now 0.001); resume with the same data and settings, or "
                                            f"pass --restart to discard them\n")
    lines = SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    other = tmp_path / "other.csv"
    other.write_text("".join(lines[:-1]), encoding="utf-8")
    args = train_args(tiny_base, tmp_path / "out", ck, "--resume", "--max-length", "64", "--seed", "1")
    args[args.index("--data") + 1] = other
    result = cli(*args)
    marker = json.loads((ck / MARKER_FILE).read_text())["identity"]
    from weibo_sentiment.data import load_labelled

    new_sha = load_labelled(other).sha256
    assert (result.code, result.err) == (2, f"error: --resume: the checkpoints in {ck} are of a different run "
                                            f"(training data (sha256) was {marker['data_sha256'][:12]}, now "
                                            f"{new_sha[:12]}; --seed was 42, now 1; --max-length was 32, now 64); "
                                            f"resume with the same data and settings, or pass --restart to discard "
                                            f"them\n")
    assert snapshot(ck) == before


def test_restart_discards_the_interrupted_run(tmp_path, tiny_base, ck, cli, caplog):
    result = cli(*train_args(tiny_base, tmp_path / "out", ck, "--restart"))
    assert result.code == 0, result.err
    assert f"--restart: discarding the checkpoints in {ck}" in caplog.messages
    assert not ck.exists()  # the interrupted run created it, and nothing else is in it
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [e["epoch"] for e in run["epochs"]] == [1.0, 2.0]


def test_an_incomplete_checkpoint_is_skipped(tmp_path, tiny_base, ck, cli, caplog):
    caplog.set_level(logging.INFO, logger="weibo_sentiment")
    # What a kill in the middle of writing checkpoint-15 leaves: some files, one of them cut short, no record.
    partial = Path(shutil.copytree(ck / "checkpoint-10", ck / "checkpoint-15"))
    (partial / COMPLETE_FILE).unlink()
    optimizer = (partial / "optimizer.pt").read_bytes()
    (partial / "optimizer.pt").write_bytes(optimizer[: len(optimizer) // 2])
    assert not checkpoint_complete(partial) and checkpoint_complete(ck / "checkpoint-10")
    # A record whose sizes do not match (a file rewritten after it) does not count either.
    torn = Path(shutil.copytree(ck / "checkpoint-10", tmp_path / "torn"))
    (torn / "scheduler.pt").write_bytes(b"")
    assert not checkpoint_complete(torn)
    assert last_complete_checkpoint(ck) == ck / "checkpoint-10"

    result = cli(*train_args(tiny_base, tmp_path / "out", ck, "--resume"))
    assert result.code == 0, result.err
    assert f"{partial} is incomplete (the run was stopped while writing it); removing it" in caplog.messages
    assert f"resuming from {ck / 'checkpoint-10'}" in caplog.messages
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [e["epoch"] for e in run["epochs"]] == [1.0, 2.0]
    assert not ck.exists()


# ---- a checkpoint dir holds one run's checkpoints and nothing else --------------------------------------------
def test_a_checkpoint_dir_with_other_files_is_refused_untouched(tmp_path, tiny_base, cli):
    ck = tmp_path / "ck"
    (ck / "checkpoint-3").mkdir(parents=True)
    (ck / "checkpoint-3" / "model.safetensors").write_bytes(b"another program's checkpoint")
    before = snapshot(ck)
    result = cli(*train_args(tiny_base, tmp_path / "out", ck))
    assert (result.code, result.err) == (2, f"error: --checkpoint-dir {ck} holds files that are not this run's "
                                            f"checkpoints (checkpoint-3); checkpoints need a directory of their "
                                            f"own: choose a new or empty one\n")
    (ck / "notes.txt").write_text("mine", encoding="utf-8")
    before = snapshot(ck)
    for extra in ([], ["--resume"], ["--restart"]):
        result = cli(*train_args(tiny_base, tmp_path / "out", ck, *extra))
        assert (result.code, result.err) == (2, f"error: --checkpoint-dir {ck} holds files that are not this run's "
                                                f"checkpoints (notes.txt); checkpoints need a directory of their "
                                                f"own: choose a new or empty one\n")
    assert snapshot(ck) == before and not (tmp_path / "out").exists()


def test_the_current_directory_as_checkpoint_dir_is_refused(tmp_path, tiny_base, cli, monkeypatch):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "notes.txt").write_text("mine", encoding="utf-8")
    (work / "data" / "train.csv").write_bytes(SAMPLE.read_bytes())
    before = snapshot(work)
    monkeypatch.chdir(work)
    result = cli(*train_args(tiny_base, tmp_path / "out", "."))
    assert (result.code, result.err) == (2, "error: --checkpoint-dir . holds files that are not this run's "
                                            "checkpoints (data, notes.txt); checkpoints need a directory of their "
                                            "own: choose a new or empty one\n")
    assert snapshot(work) == before


def test_other_runs_in_a_shared_directory_are_untouched(tmp_path, tiny_base, interrupted_run, cli):
    runs = tmp_path / "runs"
    shutil.copytree(interrupted_run, runs / "other")
    (runs / "README").write_text("our team's runs", encoding="utf-8")
    before = snapshot(runs)
    result = cli(*train_args(tiny_base, tmp_path / "out", runs))
    assert result.code == 2 and result.err.startswith(f"error: --checkpoint-dir {runs} holds files that are not this "
                                                      f"run's checkpoints (README, other)")
    args = train_args(tiny_base, tmp_path / "out", runs / "mine")
    args[args.index("--epochs") + 1] = "1"
    result = cli(*args)
    assert result.code == 0, result.err
    assert snapshot(runs) == before  # runs/mine was created by this run and removed after it
