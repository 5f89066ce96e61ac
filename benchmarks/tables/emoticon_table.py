"""Emoticon-robust training on real data: `train --emoticon-dropout P` for several P, scored on test.csv with and
without emoticons.

weibo_senti_100k's labels were derived from emoticons, so a model can lean on them; dropping them from training
texts at random (a different subset each epoch) should make it read the words. The recipe is the README's
measurement: the tiny random base (2 layers, 128 wide, the real vocabulary), LoRA as the original recipe (r 8, alpha
32, dropout 0.1 on c_attn c_proj; lr 5e-4, batch 16, max length 128, 10% warm-up, 10% validation split), 1 epoch
on a seeded sample of 20,000 rows of weibo_senti_100k/train.csv; held-out: all 9,940 rows of test.csv, scored as
`evaluate` and `evaluate --strip-emoticons` score them. Calibration columns (ECE before/after temperature scaling,
on test.csv with emoticons) appear when the evaluation reports them.

    .venv/bin/python benchmarks/tables/emoticon_table.py     # writes docs/emoticons.json and docs/emoticons.md

The base model, the training sample and the adapters go to --work (default: a new temporary directory), never into
the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/ and the groups
from common.machine import cpu_name  # noqa: E402
from common.workbench import write_report  # noqa: E402

from weibo_sentiment.adapter_io import package_versions
from weibo_sentiment.data import load_labelled
from weibo_sentiment.emoticons import strip_emoticons
from weibo_sentiment.evaluation import evaluate
from weibo_sentiment.inference import Predictor
from weibo_sentiment.modeling import init_model
from weibo_sentiment.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
GOAL_GAIN, GOAL_LOSS = 0.05, 0.01  # the goal at P=0.5: stripped +5 points, with emoticons at most -1
logger = logging.getLogger("emoticon_table")


def _shown_path(path: str) -> str:
    """`path` relative to the repository when it is inside it (.venv/bin/python)."""
    try:
        return str(Path(path).absolute().relative_to(ROOT))
    except ValueError:
        return path


def run_one(p: float, args, base: Path, subset: Path, test, work: Path) -> dict:
    out = work / f"adapter-p{p:g}"
    start = time.perf_counter()
    result = train(TrainConfig(data=str(subset), base_model=str(base), output=str(out), epochs=args.epochs,
                               emoticon_dropout=p, seed=args.seed, logging_steps=10_000))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    predictor = Predictor.from_adapters([out], device="cpu")
    with_emoticons = evaluate(predictor, test, batch_size=64)
    stripped = evaluate(predictor, test, strip=True, batch_size=64)
    eval_s = time.perf_counter() - start
    run = result.run
    row = {
        "emoticon_dropout": p,
        "test": {"accuracy": with_emoticons["accuracy"], "macro_f1": with_emoticons["macro_f1"]},
        "test_stripped": {"accuracy": stripped["accuracy"], "macro_f1": stripped["macro_f1"],
                          "texts_only_emoticons": stripped.get("texts_only_emoticons")},
        "validation": {"accuracy": run["best"]["accuracy"], "macro_f1": run["best"]["macro_f1"]},
        "validation_stripped": run.get("validation_stripped"),
        "train_seconds": round(train_s, 1),
        "evaluate_seconds": round(eval_s, 1),
        "rows": run["rows"],
    }
    for key in ("ece", "ece_raw"):  # calibration (when the evaluation reports it): on test.csv with emoticons
        if key in with_emoticons:
            row["test"][key] = with_emoticons[key]
    if "temperature" in run:
        row["temperature"] = run["temperature"]
    logger.info("P=%g: test %.4f, stripped %.4f (train %.0f s, evaluate %.0f s)", p, row["test"]["accuracy"],
                row["test_stripped"]["accuracy"], train_s, eval_s)
    return row


def decide(rows: list[dict]) -> tuple[float, str]:
    """The default P and why: the original recipe's 0 unless a P > 0 costs no accuracy with emoticons; among those
    that cost none, the one most accurate without emoticons."""
    base = next(r for r in rows if r["emoticon_dropout"] == 0)
    free = [r for r in rows if r["emoticon_dropout"] > 0 and r["test"]["accuracy"] >= base["test"]["accuracy"]]
    if not free:
        costs = ", ".join(f"P={r['emoticon_dropout']:g} {100 * (r['test']['accuracy'] - base['test']['accuracy']):+.1f}"
                          for r in rows if r["emoticon_dropout"] > 0)
        return 0.0, (f"The default stays 0, the original recipe's: every P > 0 costs accuracy with emoticons "
                     f"({costs} points on test.csv), the figure the original recipe and its users report (every "
                     f"post of weibo_senti_100k has an emoticon)." + within_tolerance(rows) + CAVEAT)
    best = max(free, key=lambda r: r["test_stripped"]["accuracy"])
    p = best["emoticon_dropout"]
    return p, (f"The default becomes {p:g}: it costs no accuracy with emoticons "
               f"({100 * (best['test']['accuracy'] - base['test']['accuracy']):+.1f} points on test.csv) and gains "
               f"{100 * (best['test_stripped']['accuracy'] - base['test_stripped']['accuracy']):+.1f} points "
               f"without them." + CAVEAT)


def within_tolerance(rows: list[dict]) -> str:
    """Which P > 0 to pass for posts without emoticons: the most accurate without them among those that lose at
    most the issue's tolerance with them."""
    base = next(r for r in rows if r["emoticon_dropout"] == 0)
    ok = [r for r in rows if r["emoticon_dropout"] > 0 and r["test"]["accuracy"] >= base["test"]["accuracy"] - GOAL_LOSS
          and r["test_stripped"]["accuracy"] > base["test_stripped"]["accuracy"]]
    if not ok:
        return f" No P > 0 here stays within {GOAL_LOSS * 100:.0f} point of P=0 with emoticons and gains without."
    r = max(ok, key=lambda r: r["test_stripped"]["accuracy"])
    gain = r["test_stripped"]["accuracy"] - base["test_stripped"]["accuracy"]
    change = r["test"]["accuracy"] - base["test"]["accuracy"]
    return (f" For posts that come without emoticons, pass `--emoticon-dropout {r['emoticon_dropout']:g}`: the most "
            f"accuracy without emoticons here ({100 * gain:+.1f} points) for at most {GOAL_LOSS * 100:.0f} point "
            f"with them ({100 * change:+.1f}).")


CAVEAT = (" One training seed and one run per P: differences of a point or less may be within what another seed "
          "would give (not measured).")


def markdown(report: dict) -> str:
    rows = report["runs"]
    calibrated = any("ece" in r["test"] for r in rows)
    head = ["P", "test acc", "test macro-F1", "stripped acc", "stripped macro-F1", "validation stripped acc"]
    if calibrated:
        head += ["ECE before", "ECE after", "temperature"]
    head += ["train s", "evaluate s"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        vs = r.get("validation_stripped") or {}
        cells = [f"{r['emoticon_dropout']:g}", f"{r['test']['accuracy']:.3f}", f"{r['test']['macro_f1']:.3f}",
                 f"{r['test_stripped']['accuracy']:.3f}", f"{r['test_stripped']['macro_f1']:.3f}",
                 f"{vs['accuracy']:.3f}" if vs else "–"]
        if calibrated:
            cells += [f"{r['test']['ece_raw']:.4f}" if "ece_raw" in r["test"] else "–",
                      f"{r['test']['ece']:.4f}" if "ece" in r["test"] else "–",
                      f"{r['temperature']:.3f}" if "temperature" in r else "–"]
        cells += [f"{r['train_seconds']:.0f}", f"{r['evaluate_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    base = next(r for r in rows if r["emoticon_dropout"] == 0)
    deltas = [f"- P={r['emoticon_dropout']:g}: with emoticons "
              f"{100 * (r['test']['accuracy'] - base['test']['accuracy']):+.1f} points, stripped "
              f"{100 * (r['test_stripped']['accuracy'] - base['test_stripped']['accuracy']):+.1f} points"
              for r in rows if r["emoticon_dropout"] > 0]
    goal = report["goal"]
    setup = report["setup"]
    return "\n".join([
        "# Emoticon-robust training (`train --emoticon-dropout P`)",
        "",
        f"Generated by `benchmarks/tables/emoticon_table.py` (`{report['command']}`); "
        "raw numbers in `docs/emoticons.json`.",
        "",
        "weibo_senti_100k's labels were derived from emoticons such as `[哈哈]` and `[泪]`, and every post has one, so "
        "a model can score well by reading emoticons alone. `--emoticon-dropout P` removes a training text's "
        "emoticons with probability P each time it is drawn (a different subset each epoch; validation untouched; "
        "a post that would be empty keeps them). What counts as an emoticon is what `evaluate --strip-emoticons` "
        "removes: Weibo bracket emoticons and Unicode emoji (see `strip_emoticons` in weibo_sentiment/data.py).",
        "",
        f"Setup: the tiny random base (2 layers, 128 wide, the real vocabulary), LoRA and optimiser as the original "
        f"recipe, {setup['epochs']:g} epoch on {setup['rows']:,} rows of weibo_senti_100k/train.csv (pandas "
        f"`sample(random_state={setup['sample_seed']})`; {setup['validation_split']:.0%} of them held out for "
        f"validation), training seed {setup['seed']}. Test: all {setup['test_rows']:,} rows of test.csv "
        f"({setup['test_texts_only_emoticons']} of them are nothing but emoticons and are read as \"。\" when "
        f"stripped). CPU: {report['cpu']} ({report['threads']} torch thread(s)); time per run in the table.",
        "",
        *lines,
        "",
        "Against P=0:",
        "",
        *deltas,
        "",
        f"Goal (P=0.5: stripped accuracy +{GOAL_GAIN * 100:.0f} points or more, accuracy with emoticons "
        f"-{GOAL_LOSS * 100:.0f} point at most): **{'met' if goal['met'] else 'not met'}** "
        f"({goal['stripped_gain'] * 100:+.1f} and {goal['emoticon_change'] * 100:+.1f} points).",
        "",
        "## Default",
        "",
        report["decision"]["why"],
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("WEIBO_SHARED", str(ROOT.parent / "shared")),
                        help="the shared data and models directory (default: ../shared or $WEIBO_SHARED)")
    parser.add_argument("--work", help="where the base, the sample and the adapters go (default: a temporary dir)")
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--rows", type=int, default=20_000, help="training rows sampled from train.csv")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the training-row sample")
    parser.add_argument("--seed", type=int, default=42, help="training seed")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the tiny model runs faster on one, see the Makefile)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "emoticons.md"),
                        help="Markdown table; the JSON goes beside it (default: docs/emoticons.md)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="train nothing: rewrite the Markdown (and the decision) from the JSON beside --output")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if args.markdown_only:
        report = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
        default, why = decide(report["runs"])
        report["decision"] = {"default": default, "why": why}
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        out.write_text(markdown(report), encoding="utf-8")
        print(markdown(report))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if 0.0 not in args.dropouts:
        parser.error("--dropouts must include 0 (the baseline)")
    torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    data_dir = shared / "data" / "weibo_senti_100k"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="weibo-emoticon-table-"))
    work.mkdir(parents=True, exist_ok=True)

    vocab = shared / "models" / "gpt2-chinese-cluecorpussmall" / "vocab.txt"
    base = init_model(work / "tiny", "tiny", vocab_file=vocab, seed=0)
    subset = work / f"train{args.rows}.csv"
    pd.read_csv(data_dir / "train.csv").sample(n=args.rows, random_state=args.sample_seed).to_csv(subset, index=False)
    test = load_labelled(data_dir / "test.csv", deduplicate=False, min_classes=1)

    rows = [run_one(p, args, base, subset, test, work) for p in sorted(set(args.dropouts))]
    by_p = {r["emoticon_dropout"]: r for r in rows}
    goal = {}
    if 0.5 in by_p:
        gain = by_p[0.5]["test_stripped"]["accuracy"] - by_p[0.0]["test_stripped"]["accuracy"]
        change = by_p[0.5]["test"]["accuracy"] - by_p[0.0]["test"]["accuracy"]
        goal = {"stripped_gain": gain, "emoticon_change": change, "met": gain >= GOAL_GAIN and change >= -GOAL_LOSS}
    default, why = decide(rows)
    report = {
        "command": " ".join([*([f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if "OMP_NUM_THREADS" in os.environ
                               else []), _shown_path(sys.executable), "benchmarks/tables/emoticon_table.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "setup": {"base": "tiny (init-model --preset tiny, real vocab, seed 0)", "rows": args.rows,
                  "sample_seed": args.sample_seed, "seed": args.seed, "epochs": args.epochs,
                  "validation_split": TrainConfig.validation_split, "test_rows": len(test.texts),
                  "test_texts_only_emoticons": sum(1 for t in test.texts if not strip_emoticons(t))},
        "runs": rows,
        "goal": goal,
        "decision": {"default": default, "why": why},
        "versions": package_versions(),
    }
    write_report(out, report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
