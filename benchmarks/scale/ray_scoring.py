"""Throughput of `predict --engine ray` (2 actors on a local Ray) vs the single-process streaming path.

    python benchmarks/scale/ray_scoring.py [--rows 20000] [--workers 2] [--work /tmp/weibo-ray]

Builds (once, under --work, never in the repository) a tiny random-weight base with the real vocabulary and an
adapter trained on examples/weibo_sample.csv for 20 steps, and --rows rows of the real Weibo texts of
../shared/data/weibo_senti_100k/test.csv, as one CSV and as 4 CSV shards. Each engine runs once in a subprocess
of its own (the torch backend): the single-process path as `streaming.run.predict_file` (model load excluded), and
the Ray path as `cluster.score_files` end to end (Ray start, actors loading the model, writing Parquet
included; also reported without the Ray start). Writes benchmarks/results/ray.json with the CPU's name. The
machine may be shared, so the figures are rough.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # common/
from common.workbench import child_arguments, tiny_adapter, weibo_rows, write_csv  # noqa: E402


def child(args: argparse.Namespace) -> None:
    if args.mode == "local":
        from weibo_sentiment.inference import load_predictor
        from weibo_sentiment.streaming.run import predict_file

        predictor = load_predictor([args.adapter], device="cpu")
        out = Path(args.output) / "local.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        rows = predict_file(predictor, args.input, out, id_column="id", progress=False).rows
        seconds = time.perf_counter() - start
        result = {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1)}
    else:
        import ray

        from weibo_sentiment.cluster import score_files

        start = time.perf_counter()
        ray.init(num_cpus=max(os.cpu_count() or 1, args.workers + 1), include_dashboard=False,
                 log_to_driver=False)
        ready = time.perf_counter()
        marker = score_files(args.input, args.output, [args.adapter], quiet=True, workers=args.workers,
                             cpus_per_worker=1, id_column="id")
        end = time.perf_counter()
        ray.shutdown()
        rows = marker["rows"]
        result = {"rows": rows, "seconds": round(end - start, 2), "rows_per_s": round(rows / (end - start), 1),
                  "seconds_without_ray_start": round(end - ready, 2),
                  "rows_per_s_without_ray_start": round(rows / (end - ready), 1)}
    print(json.dumps(result))


def make_rows(n: int, work: Path, shards: int = 4) -> tuple[Path, Path]:
    """`n` rows as one CSV and as `shards` CSV shards (every shards-th row each)."""
    whole, parts = work / f"rows-{n}.csv", work / f"shards-{n}"
    if whole.exists() and parts.exists():
        return whole, parts
    rows = list(weibo_rows(n))
    parts.mkdir(parents=True, exist_ok=True)
    for path, chunk in [(whole, rows)] + [(parts / f"part-{s}.csv", rows[s::shards]) for s in range(shards)]:
        write_csv(path, chunk)
    return whole, parts


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, cwd=ROOT, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", default="/tmp/weibo-ray", help="where models and inputs go (not the repo)")
    child_arguments(parser, "mode", "adapter", "input", "output")
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from machine import cpu_name

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    _, adapter = tiny_adapter(work)
    whole, parts = make_rows(args.rows, work)
    local = run_child("--mode", "local", "--adapter", str(adapter), "--input", str(whole),
                      "--output", str(work / "out-local"))
    print("local", local, flush=True)
    clustered = run_child("--mode", "ray", "--adapter", str(adapter), "--input", str(parts),
                          "--output", str(work / "out-ray"), "--workers", str(args.workers))
    print("ray", clustered, flush=True)
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "rows": args.rows, "model": "tiny (2 layers, 128 wide)",
              "backend": "torch", "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "single_process_streaming": local, f"ray_{args.workers}_workers": clustered}
    out = ROOT / "benchmarks" / "results" / "ray.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
