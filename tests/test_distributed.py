"""Data-parallel training: `torchrun --nproc_per_node 2 -m weibo_sentiment train` on the CPU (gloo).

Two processes on the shipped sample (423 training rows), batch 8 per process: an effective batch of 16, as the
single-process recipe; 27 steps an epoch per rank, 54 in all.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from weibo_sentiment.checkpoints import MARKER_FILE, last_complete_checkpoint

from .conftest import ROOT, SAMPLE

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

HELDOUT = ROOT / "examples" / "weibo_sample_heldout.csv"
RECIPE = ["--epochs", "2", "--max-length", "32", "--lr", "0.002", "--save-steps", "5"]
STEPS_PER_EPOCH = 27  # ceil(423 / 8) = 53 batches, dealt to 2 ranks: 27 each (the last one wraps around)

# The CLI with probes, launched by torchrun: each rank records the training batches it ran and, after every
# step, whether its trainable parameters equal the other rank's (all-gathered); PROBE_STALL stops it at that
# step (checkpoint-30 written) until it is killed. Rank r writes $PROBE_OUT/rank{r}.json at the end.
PROBE = """
import json, os, sys, time
import torch, torch.distributed as dist
from transformers import TrainerCallback
import weibo_sentiment.sampling as sampling
import weibo_sentiment.training as training
from weibo_sentiment.cli import main

rank, out = int(os.environ["RANK"]), os.environ["PROBE_OUT"]
stall = int(os.environ.get("PROBE_STALL", 0))
record = {"batches": [], "orders": [], "max_rank_difference": [], "changed": False}

class Probe(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])
        with open(f"{out}/pid{rank}", "w") as f:
            f.write(str(os.getpid()))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        mine = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        record["max_rank_difference"].append(max(float((e - mine).abs().max()) for e in every))
        record["changed"] = record["changed"] or bool((mine != self.start).any())
        if stall and state.global_step >= stall:
            time.sleep(600)

real_step = training._SentimentTrainer.training_step
def training_step(self, model, inputs, *args, **kwargs):
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    record["batches"].append([row[m.bool()].tolist() for row, m in zip(ids, mask)])
    return real_step(self, model, inputs, *args, **kwargs)
training._SentimentTrainer.training_step = training_step

real_iter = sampling.EpochSeededLengthSampler.__iter__
def sampler_iter(self):
    order = list(real_iter(self))
    record["orders"].append({"epoch": self.epoch, "texts": [self.dataset[i]["input_ids"] for i in order]})
    return iter(order)
sampling.EpochSeededLengthSampler.__iter__ = sampler_iter

real_train = training.train
training.train = lambda config, callbacks=None: real_train(config, [Probe(), *(callbacks or [])])
code = main(sys.argv[1:])
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(record, f)
sys.exit(code)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{free_port()}", *map(str, args)]


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def train_args(tiny_base: Path, out: Path, *extra) -> list:
    return ["train", "--data", SAMPLE, "--base-model", tiny_base, "--output", out, "--batch-size", "8", *RECIPE,
            *extra]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_base) -> tuple[Path, subprocess.CompletedProcess, list[dict]]:
    """The CLI with probes (PROBE) on two processes, uninterrupted; the resumed run (the plain entry point,
    `-m weibo_sentiment`) must reproduce its adapter."""
    root = tmp_path_factory.mktemp("ddp")
    probes = tmp_path_factory.mktemp("probes")
    (probes / "probe.py").write_text(PROBE)
    run = subprocess.run(torchrun(probes / "probe.py", *train_args(tiny_base, root / "out")), cwd=root,
                         env=env(PROBE_OUT=str(probes)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    return root, run, [json.loads((probes / f"rank{r}.json").read_text()) for r in (0, 1)]


def validation_split():
    from weibo_sentiment.data import load_labelled, stratified_split

    return stratified_split(load_labelled(SAMPLE), 0.1, 42)[1]


def test_two_processes_write_one_adapter_with_the_runs_scores(two_process_run, tiny_base, cli):
    from weibo_sentiment.inference import Predictor

    root, run, _ = two_process_run
    # Exactly one adapter, no checkpoint directory and no temporary directory left behind.
    assert sorted(p.name for p in root.iterdir()) == ["out"]
    # Printed once: rank 1 logs warnings only and prints nothing.
    assert run.stdout.count("Best validation") == 1 and run.stdout.count("Adapter saved to") == 1, run.stdout
    assert run.stdout.count("trainable params") == 1
    result = json.loads((root / "out" / "run.json").read_text())
    assert result["training"]["world_size"] == 2 and result["training"]["batch_size"] == 8
    assert result["training"]["effective_batch_size"] == 16 and result["training"]["gradient_accumulation_steps"] == 1
    assert [e["epoch"] for e in result["epochs"]] == [1.0, 2.0]

    # The validation scores are the run's: every validation row scored once (gathered from both ranks).
    texts, labels = validation_split()
    assert result["rows"]["validation"] == len(texts) == 47
    predictor = Predictor.from_adapters({"a": root / "out"}, base_model=tiny_base, device="cpu")
    predicted = predictor.predict_proba(texts, "a").argmax(axis=1)
    accuracy = float(np.mean(predicted == np.array(labels)))
    assert abs(accuracy - result["best"]["accuracy"]) <= 1 / len(texts) + 1e-9, (accuracy, result["best"])

    # One process with the same effective batch reaches a similar score.
    single = cli(*train_args(tiny_base, root.with_name("single") / "out", "--batch-size", "16"))
    assert single.code == 0, single.err
    one = json.loads((root.with_name("single") / "out" / "run.json").read_text())
    assert one["training"]["world_size"] == 1 and one["training"]["effective_batch_size"] == 16
    print(f"validation accuracy: 2 processes {result['best']['accuracy']:.4f}, 1 process {one['best']['accuracy']:.4f}")
    assert abs(one["best"]["accuracy"] - result["best"]["accuracy"]) <= 0.15


def test_ranks_train_in_step_on_their_own_shards(two_process_run):
    _, _, ranks = two_process_run
    for r, record in enumerate(ranks):
        # Gradients are all-reduced: after every step both ranks hold the same parameters, and they moved.
        assert len(record["max_rank_difference"]) == 2 * STEPS_PER_EPOCH
        assert max(record["max_rank_difference"]) == 0.0 and record["changed"]
        # Both ranks draw the same seed + epoch order; rank r runs its batches r, r + 2, r + 4 ... (batches of 8).
        assert [o["epoch"] for o in record["orders"]] == [0, 1]
        assert record["orders"][0]["texts"] != record["orders"][1]["texts"]
        assert record["orders"] == ranks[0]["orders"]
        for epoch, order in enumerate(record["orders"]):
            texts = order["texts"]
            dealt = [texts[i:i + 8] for i in range(0, len(texts), 8)]
            missing = 8 - len(dealt[-1])  # the uneven 53rd batch is filled from the start of the order, and
            dealt[-1] += texts[:missing]  # a 54th follows it, so that both ranks take 27 steps
            dealt.append(texts[missing:missing + 8])
            ran = record["batches"][epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH]
            assert ran == dealt[r::2], f"rank {r}, epoch {epoch}"
    # Between them the ranks see every training example each epoch.
    seen = sorted(map(tuple, (t for record in ranks for batch in record["batches"][:STEPS_PER_EPOCH] for t in batch)))
    assert set(seen) == set(map(tuple, ranks[0]["orders"][0]["texts"]))


def test_kill_9_then_resume_under_two_processes(two_process_run, tmp_path, tiny_base, cli):
    from weibo_sentiment.data import load_labelled
    from weibo_sentiment.inference import Predictor

    reference_root, _, _ = two_process_run
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    ck = tmp_path / "out.checkpoints"
    log = (tmp_path / "killed.log").open("w")
    killed = subprocess.Popen(torchrun(probe, *train_args(tiny_base, tmp_path / "out")), cwd=tmp_path,
                              env=env(PROBE_OUT=str(tmp_path), PROBE_STALL="33"), stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while (last := last_complete_checkpoint(ck)) is None or last.name != "checkpoint-30":
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint-30 after 120 s"
            time.sleep(0.05)
        while not all((tmp_path / f"pid{r}").is_file() for r in (0, 1)):
            time.sleep(0.05)
        workers = [int((tmp_path / f"pid{r}").read_text()) for r in (0, 1)]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        os.killpg(killed.pid, signal.SIGKILL) if killed.poll() is None else None
        log.close()
    assert not (tmp_path / "out").exists() and (ck / MARKER_FILE).is_file()
    files = sorted(p.name for p in (ck / "checkpoint-30").iterdir())
    assert "rng_state_0.pth" in files and "rng_state_1.pth" in files

    # A different number of processes is refused: the batches would not be the same ones.
    refused = cli(*train_args(tiny_base, tmp_path / "out", "--resume"))
    assert refused.code == 2 and "number of processes was 2, now 1" in refused.err, refused.err

    resumed = subprocess.run(torchrun("-m", "weibo_sentiment", *train_args(tiny_base, tmp_path / "out", "--resume")),
                             cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed.stderr.count(f"resuming from {ck / 'checkpoint-30'}") == 1
    assert resumed.stdout.count("Best validation") == 1 and resumed.stdout.count("Adapter saved to") == 1
    assert not ck.exists()
    ref_run, resumed_run = (json.loads((d / "out" / "run.json").read_text()) for d in (reference_root, tmp_path))
    assert resumed_run["epochs"] == ref_run["epochs"]
    texts = load_labelled(HELDOUT).texts
    predictor = Predictor.from_adapters({"ref": reference_root / "out", "resumed": tmp_path / "out"},
                                        base_model=tiny_base, device="cpu")
    diff = np.abs(predictor.predict_proba(texts, "ref") - predictor.predict_proba(texts, "resumed")).max()
    print(f"max |probability difference| resumed vs uninterrupted (2 processes): {diff:.3g}")
    assert diff < 1e-4


def test_adapt_base_on_two_processes_writes_one_base(tmp_path, tiny_base):
    """adapt-base under torchrun: rank 0 alone claims the checkpoint directory and writes the base; the Trainer
    runs DDP over gloo (each rank its half of the blocks), and the source marker records the world size."""
    from weibo_sentiment.output import SOURCE_FILE

    out = tmp_path / "adapted"
    command = torchrun("-m", "weibo_sentiment", "adapt-base", "--texts", SAMPLE, "--base-model", tiny_base,
                       "--output", out, "--max-steps", 6, "--block-size", 64, "--batch-size", 4,
                       "--validation-split", 0.1, "--lr", 3e-3, "--save-steps", 3)
    # A refusal found by rank 0 stops both processes, and is said once.
    refused = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env(), capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0
    assert refused.stderr.count("error: --resume: no checkpoint in") == 1, refused.stderr[-4000:]
    run = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    source = json.loads((out / SOURCE_FILE).read_text(encoding="utf-8"))
    assert source["world_size"] == 2 and source["effective_batch_size"] == 8 and source["steps"] == 6
    assert source["perplexity_after"] < source["perplexity_before"]
    assert run.stdout.count("Held-out perplexity:") == 1  # printed by rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted"]  # checkpoints released, nothing else written
