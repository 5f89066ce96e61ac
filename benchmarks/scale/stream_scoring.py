"""Streaming prediction: peak memory on a big file vs a small one, and speed vs the in-memory path.

    python benchmarks/scale/stream_scoring.py [--rows 1000000] [--backend onnx-int8] [--work /tmp/weibo-streaming]

Builds (once, under --work, never in the repository) a tiny random-weight base with the real vocabulary, an
adapter trained on examples/weibo_sample.csv for 20 steps, and input files made by repeating the real Weibo texts
of ../shared/data/weibo_senti_100k/test.csv. Each measurement runs in a subprocess of its own and reports its
peak RSS (resource.getrusage ru_maxrss) and rows/s (prediction only, the model load excluded):

- memory-10k: the in-memory path (`read_texts` + `predict` + `write_table`, what `predict --input -` does);
- stream-10k: `streaming.run.predict_file` on the same 10,000 rows;
- stream-big: `streaming.run.predict_file` on --rows rows.

Writes benchmarks/results/streaming.json with the CPU's name.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # common/
from common.workbench import child_arguments, cli, tiny_adapter, weibo_rows, write_csv  # noqa: E402


def child(args: argparse.Namespace) -> None:
    from weibo_sentiment.inference import load_predictor

    if args.backend == "torch":
        predictor = load_predictor([args.adapter])
    else:
        predictor = load_predictor(model=args.model, backend=args.backend)
    output = Path(args.output)
    output.unlink(missing_ok=True)
    start = time.perf_counter()
    if args.mode == "memory":
        from weibo_sentiment.data import read_texts
        from weibo_sentiment.output import write_table
        from weibo_sentiment.streaming.rows import output_row

        texts, _ = read_texts(args.input)
        preds = predictor.predict(texts, batch_size=32)
        write_table((output_row(p, None) for p in preds), output)
        rows = len(preds)
    else:
        from weibo_sentiment.streaming.run import predict_file

        rows = predict_file(predictor, args.input, output, progress=False).rows
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"mode": args.mode, "rows": rows, "seconds": round(seconds, 2),
                      "rows_per_s": round(rows / seconds, 1), "peak_rss_mb": round(peak_mb, 1)}))


def make_rows(n: int, path: Path) -> Path:
    if not path.exists():
        write_csv(path, weibo_rows(n))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big file (default: 1,000,000)")
    parser.add_argument("--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--work", default="/tmp/weibo-streaming", help="where models and inputs go (not the repo)")
    child_arguments(parser, "mode", "adapter", "model", "input", "output")
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from machine import cpu_name

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    _, adapter = tiny_adapter(work)
    model = work / f"export-{args.backend}"
    if args.backend != "torch" and not model.exists():
        cli("export", "--adapter", str(adapter), "--output", str(model),
            *(["--int8"] if args.backend == "onnx-int8" else []))
    small = make_rows(10_000, work / "rows-10000.csv")
    big = make_rows(args.rows, work / f"rows-{args.rows}.csv")

    results = {}
    for name, mode, source in (("memory-10k", "memory", small), ("stream-10k", "stream", small),
                               ("stream-big", "stream", big)):
        out = subprocess.run([sys.executable, __file__, "--child", "--mode", mode, "--backend", args.backend,
                              "--adapter", str(adapter), "--model", str(model), "--input", str(source),
                              "--output", str(work / f"{name}.csv")],
                             check=True, capture_output=True, text=True, cwd=ROOT)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    report = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "backend": args.backend,
        "model": "tiny random-weight GPT-2 (2 layers, 128 wide, real vocabulary), adapter trained 20 steps",
        "rows_big": args.rows,
        "chunk_size": 4096,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "runs": results,
        "peak_rss_difference_mb": round(results["stream-big"]["peak_rss_mb"] - results["stream-10k"]["peak_rss_mb"], 1),
        "stream_vs_memory_rows_per_s": round(results["stream-10k"]["rows_per_s"] / results["memory-10k"]["rows_per_s"],
                                             3),
    }
    out = ROOT / "benchmarks" / "results" / "streaming.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
