"""One writer at a time: a second run on the same streaming output or the same checkpoint directory is refused,
naming the process that holds it, and the first run's result is complete; a killed holder blocks nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, SAMPLE
from tests.test_streaming import sample_texts, write_csv
from weibo_sentiment.checkpoints import last_complete_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

# The CLI in a fresh process, stopped at one step of its work until the file GO exists (at most 120 s).
PAUSED_CLI = """
import os, sys, time
from weibo_sentiment.cli import main
where, go = sys.argv[1], sys.argv[2]

def wait():
    deadline = time.monotonic() + 120
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)

if where == "predict":
    import weibo_sentiment.streaming.run as run
    real, calls = run._predict_chunk, []
    def predict(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            wait()
        return real(*a, **k)
    run._predict_chunk = predict
else:
    from transformers import TrainerCallback
    import weibo_sentiment.training as training
    class Pause(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                wait()
    real_train = training.train
    training.train = lambda config, callbacks=None: real_train(config, [Pause(), *(callbacks or [])])
sys.exit(main(sys.argv[3:]))
"""


def holder_line(pid: int) -> str:
    return f"another run is writing it (process {pid} on {socket.gethostname()}, writing since "


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the first run ended before {what}: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.02)


def start_paused(tmp_path: Path, where: str, *args) -> tuple[subprocess.Popen, Path, Path]:
    go, log = tmp_path / "go", tmp_path / f"{where}.log"
    with log.open("w") as f:  # a file, not a pipe: a full pipe would stop the run
        proc = subprocess.Popen([sys.executable, "-c", PAUSED_CLI, where, str(go), *map(str, args)], cwd=ROOT,
                                env=ENV, stdout=f, stderr=subprocess.STDOUT)
    return proc, go, log


def test_a_second_run_on_one_output_is_refused_and_the_first_completes(tmp_path, sample_adapter, cli):
    source = write_csv(tmp_path / "in.csv", sample_texts(30))
    out, reference = tmp_path / "out.jsonl", tmp_path / "reference.jsonl"
    args = ["predict", "--adapter", sample_adapter, "--input", source, "--chunk-size", "4", "--id-column", "id"]
    first, go, log = start_paused(tmp_path, "predict", *args, "--output", out)
    try:
        record = out.with_name(f".{out.name}.progress.json")

        def paused() -> bool:  # at its third chunk, two recorded
            try:
                return json.loads(record.read_text())["chunks"] >= 2
            except (OSError, ValueError):
                return False

        wait_for(paused, first, log, "its second chunk")
        for extra in ([], ["--resume"]):  # --resume would append to the first run's partial output
            second = cli(*args, "--output", out, *extra)
            assert second.code == 2
            lines = second.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: --output {out}: " + holder_line(first.pid))
        go.touch()
        assert first.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        first.kill()
    assert "30 predictions written" in log.read_text()
    assert cli(*args, "--output", reference).code == 0
    assert out.read_bytes() == reference.read_bytes()
    assert len(out.read_text(encoding="utf-8").strip("\n").split("\n")) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "in.csv", "out.jsonl", "predict.log",
                                                          "reference.jsonl"]


def test_a_second_run_on_one_checkpoint_dir_is_refused_and_the_first_completes(tmp_path, tiny_base, cli):
    from weibo_sentiment.inference import Predictor

    ck = tmp_path / "ck"
    recipe = ["--data", SAMPLE, "--base-model", tiny_base, "--max-length", "32", "--lr", "0.002", "--max-steps",
              "6", "--save-steps", "2", "--checkpoint-dir", ck]
    first, go, log = start_paused(tmp_path, "train", "train", *recipe, "--output", tmp_path / "first")
    try:
        wait_for(lambda: (last := last_complete_checkpoint(ck)) is not None and last.name == "checkpoint-2",
                 first, log, "checkpoint-2")
        before = sorted(str(p.relative_to(ck)) for p in ck.rglob("*"))
        for extra in ([], ["--restart"], ["--resume"]):  # --restart would delete the first run's checkpoints
            second = cli("train", *recipe, "--output", tmp_path / "second", *extra)
            assert second.code == 2
            lines = second.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: --checkpoint-dir {ck}: "
                                                           + holder_line(first.pid)), second.err
        assert sorted(str(p.relative_to(ck)) for p in ck.rglob("*")) == before
        assert not (tmp_path / "second").exists()
        go.touch()
        assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        first.kill()
    run = json.loads((tmp_path / "first" / "run.json").read_text())
    assert run["epochs"] and run["training"]["max_steps"] == 6
    predictor = Predictor.from_adapters([tmp_path / "first"], base_model=tiny_base, device="cpu")
    assert len(predictor.predict(["今天心情很好"])) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "go", "train.log"]  # checkpoints released
