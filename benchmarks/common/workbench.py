"""What several benchmarks build the same way: a tiny base with an adapter, rows of real Weibo texts, and a
report written as JSON beside its Markdown. Everything goes under the benchmark's --work folder, never the repo."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("WEIBO_SHARED", ROOT.parent / "shared")).resolve()
VOCAB = SHARED / "models" / "gpt2-chinese-cluecorpussmall" / "vocab.txt"


def cli(*args: str) -> None:
    """`python -m weibo_sentiment ARGS` in the repository, its stdout discarded (errors still show)."""
    subprocess.run([sys.executable, "-m", "weibo_sentiment", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def child_arguments(parser: argparse.ArgumentParser, *names: str) -> None:
    """`--child` and the hidden options with which a benchmark runs one measurement in a process of its own."""
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in names:
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)


def tiny_adapter(work: Path) -> tuple[Path, Path]:
    """(base, adapter) under `work`, built once: a tiny random-weight base with the real vocabulary and an adapter
    trained on examples/weibo_sample.csv for 20 steps."""
    base, adapter = work / "tiny", work / "adapter"
    if not base.exists():
        cli("init-model", "--preset", "tiny", "--vocab", str(VOCAB), "--output", str(base))
    if not adapter.exists():
        cli("train", "--data", str(ROOT / "examples" / "weibo_sample.csv"), "--base-model", str(base),
            "--output", str(adapter), "--max-steps", "20")
    return base, adapter


def weibo_rows(n: int) -> Iterator[list]:
    """`n` rows [id, label, review], the real texts of weibo_senti_100k/test.csv repeated."""
    with (SHARED / "data" / "weibo_senti_100k" / "test.csv").open(encoding="utf-8", newline="") as f:
        source = list(csv.reader(f))[1:]
    for i in range(n):
        yield [i, *source[i % len(source)][:2]]


def write_csv(path: Path, rows) -> None:
    """rows under the header id,label,review, written to a temporary file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "review"])
        writer.writerows(rows)
    tmp.rename(path)


def write_report(out: Path, report: dict, markdown: Callable[[dict], str]) -> None:
    """`out` (Markdown) and `out` with .json (the raw numbers); the Markdown is printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n",
                                        encoding="utf-8")
    out.write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
