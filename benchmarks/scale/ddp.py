"""Data-parallel training throughput: `torchrun --nproc_per_node N -m weibo_sentiment train` for N = 1, 2, ...

Each run trains a fixed number of optimizer steps on rows of weibo_senti_100k/train.csv with a random-weight
base (`--preset uer` on a GPU: the real model's shape; `--preset tiny` for a quick CPU check) and the same batch
per process, so N processes take N times the samples per step. Samples/s = steps x batch x N / the Trainer's
train_runtime (model loading, evaluation and saving are outside it). Prints a table and writes
OUT/ddp.json when --out is given.

    benchmarks/scale/ddp.py --device cuda --nprocs 1 2 --preset uer --steps 200       # benchmarks/speed/gpu.sh
    OMP_NUM_THREADS=1 benchmarks/scale/ddp.py --device cpu --nprocs 1 2 --preset tiny  # one core per process
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/ and the groups
from common.machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("WEIBO_SHARED", ROOT.parent / "shared"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def trainer_metrics(stdout: str) -> dict:
    """The Trainer's closing log line ({'train_runtime': ..., 'train_samples_per_second': ...})."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and "train_runtime" in line:
            return {k: float(v) for k, v in ast.literal_eval(line).items()}
    raise RuntimeError("no train_runtime in the output:\n" + stdout[-2000:])


def run(nproc: int, args, work: Path, base: Path, data: Path) -> dict:
    out = work / f"adapter-{nproc}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{free_port()}",
               "-m", "weibo_sentiment", "train", "--data", str(data), "--base-model", str(base), "--output", str(out),
               "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", "128",
               "--save-steps", str(10 * args.steps), "--validation-split", "0.02"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{nproc} process(es) failed:\n{done.stderr[-3000:]}")
    metrics = trainer_metrics(done.stdout)
    trained = json.loads((out / "run.json").read_text())["training"]
    samples = args.steps * trained["effective_batch_size"]
    return {"processes": nproc, "world_size": trained["world_size"], "steps": args.steps,
            "effective_batch_size": trained["effective_batch_size"], "train_runtime_s": metrics["train_runtime"],
            "samples_per_s": round(samples / metrics["train_runtime"], 2), "wall_s": round(wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="uer", help="init-model preset of the random base (default: uer)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run (default: 200)")
    parser.add_argument("--batch-size", type=int, default=16, help="per process (default: 16)")
    parser.add_argument("--rows", type=int, default=20000, help="training rows taken from train.csv")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per run (default: 240)")
    parser.add_argument("--out", help="write ddp.json here")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from weibo_sentiment.modeling import init_model

    if args.device == "cuda":
        available = torch.cuda.device_count()
        skipped = [n for n in args.nprocs if n > available]
        if skipped:
            print(f"{available} CUDA device(s): skipping {skipped} processes", flush=True)
        args.nprocs = [n for n in args.nprocs if n <= available]
        device = torch.cuda.get_device_name() if available else None
    else:
        device = f"{cpu_name()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    vocab = SHARED / "models" / "gpt2-chinese-cluecorpussmall" / "vocab.txt"
    source = SHARED / "data" / "weibo_senti_100k" / "train.csv"
    results = []
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        work = Path(tmp)
        base = init_model(work / "base", args.preset, vocab_file=vocab, seed=0)
        pd.read_csv(source).sample(n=args.rows, random_state=0).to_csv(work / "train.csv", index=False)
        for nproc in args.nprocs:
            results.append(run(nproc, args, work, base, work / "train.csv"))
            print(json.dumps(results[-1]), flush=True)
    one = next((r["samples_per_s"] for r in results if r["processes"] == 1), None)
    print(f"\n{args.device}: {device}; base --preset {args.preset}, batch {args.batch_size} per process, "
          f"{args.steps} steps, max length 128")
    print("| processes | samples/s | speedup |\n|---|---|---|")
    for r in results:
        print(f"| {r['processes']} | {r['samples_per_s']:.1f} | "
              f"{r['samples_per_s'] / one:.2f}x |" if one else f"| {r['processes']} | {r['samples_per_s']:.1f} | - |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "ddp.json").write_text(json.dumps({"device": device, "settings": vars(args),
                                                             "load_average_end": [round(x, 2) for x in os.getloadavg()],
                                                             "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
