"""Long posts read whole: `--long-text window` against truncation, on long posts built from real test posts.

Each long post joins test.csv posts of one label, drawn without replacement, until it reaches a length drawn
uniformly from 500 to 2,000 characters (the last post cut there); it carries their label. Two sets: posts as they
are, and posts with their emoticons stripped first (`strip_emoticons`), since weibo_senti_100k's labels came from
emoticons. Every set is read by truncation (the first max-length tokens) and in windows at each stride; the
windows' logits are combined by every rule (`COMBINE_RULES`) from one forward pass. The cost is timed per reading
(texts/s, one torch thread). test.csv's own posts are read both ways too: windows change only the posts longer
than the max length.

    # writes docs/long-text.md and docs/long-text.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tables/long_text_table.py --adapter ADAPTER
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/ and the groups
from common.machine import cpu_name  # noqa: E402
from common.workbench import write_report  # noqa: E402

from weibo_sentiment.adapter_io import package_versions
from weibo_sentiment.calibration import ece
from weibo_sentiment.emoticons import strip_emoticons
from weibo_sentiment.inference import COMBINE_RULES, LongText, Predictor, WindowScores, count_truncated
from weibo_sentiment.inference.windows import window_width

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger("long_text_table")


def build_long_posts(texts: list[str], labels: list[int], per_label: int, shortest: int, longest: int,
                     seed: int) -> tuple[list[str], list[int], list[int]]:
    """`per_label` long posts of each label (texts, labels, how many posts each joins), each of a length drawn
    from [shortest, longest] characters, from posts of that label drawn without replacement."""
    rng = np.random.default_rng(seed)
    out_texts, out_labels, parts = [], [], []
    for label in sorted(set(labels)):
        pool = [t for t, y in zip(texts, labels) if y == label]
        order = iter(rng.permutation(len(pool)))
        for _ in range(per_label):
            target = int(rng.integers(shortest, longest + 1))
            joined, n = "", 0
            while len(joined) < target:
                joined += ("" if not joined else " ") + pool[next(order)]
                n += 1
            out_texts.append(joined[:target])
            out_labels.append(label)
            parts.append(n)
    return out_texts, out_labels, parts


def read(predictor: Predictor, texts: list[str], long_text: LongText, batch_size: int) -> tuple[WindowScores, float]:
    start = time.perf_counter()
    scores = predictor.predict_windows(texts, batch_size=batch_size, long_text=long_text)
    return scores, time.perf_counter() - start


def rule_figures(scores: WindowScores, labels: np.ndarray, temperature: float) -> dict:
    figures = {}
    for rule in COMBINE_RULES:
        probs = WindowScores(scores.logits, scores.owner, scores.texts, rule).probabilities(temperature)
        figures[rule] = {"accuracy": float((probs.argmax(axis=1) == labels).mean()), "ece": ece(probs, labels),
                         "confidence": float(probs.max(axis=1).mean())}
    return figures


def measure_set(predictor: Predictor, name: str, texts: list[str], labels: list[int], strides: list[int | None],
                batch_size: int) -> dict:
    y = np.asarray(labels)
    temperature = predictor.temperature()
    info = predictor.adapters[predictor.default]
    width = window_width(predictor.tokenizer, info.max_length)
    truncated, seconds = read(predictor, texts, LongText(), batch_size)
    probs = truncated.probabilities(temperature)
    result = {"set": name, "posts": len(texts), "mean_chars": float(np.mean([len(t) for t in texts])),
              "longer_than_max_length": count_truncated(predictor.tokenizer, texts, info.max_length),
              "truncate": {"accuracy": float((probs.argmax(axis=1) == y).mean()), "ece": ece(probs, y),
                           "confidence": float(probs.max(axis=1).mean()),
                           "seconds": seconds, "texts_per_s": len(texts) / seconds},
              "windows": []}
    logger.info("%s: truncate %.4f (%.1f texts/s)", name, result["truncate"]["accuracy"],
                result["truncate"]["texts_per_s"])
    for stride in strides:
        long_text = LongText("window", stride=stride)
        scores, seconds = read(predictor, texts, long_text, batch_size)
        row = {"stride": long_text.step(width), "windows": int(len(scores.owner)),
               "windows_per_post": float(len(scores.owner) / len(texts)), "seconds": seconds,
               "texts_per_s": len(texts) / seconds, "windows_per_s": len(scores.owner) / seconds,
               "rules": rule_figures(scores, y, temperature)}
        result["windows"].append(row)
        logger.info("%s: stride %d, %s (%.1f texts/s)", name, row["stride"],
                    ", ".join(f"{r} {f['accuracy']:.4f}" for r, f in row["rules"].items()), row["texts_per_s"])
    return result


def decide(long_sets: list[dict], default_stride: int) -> dict:
    """The rule with the best mean accuracy over the long sets at the default stride; `mean` (the issue's
    starting point) unless another beats it by more than half a point."""
    rows = [next(w for w in s["windows"] if w["stride"] == default_stride) for s in long_sets]
    means = {rule: float(np.mean([r["rules"][rule]["accuracy"] for r in rows])) for rule in COMBINE_RULES}
    best = max(means, key=means.get)
    rule = best if means[best] > means["mean"] + 0.005 else "mean"
    return {"rule": rule, "mean_accuracy": means}


def table(result: dict) -> list[str]:
    head = ["reading", "stride", "windows/post", *[f"acc {r}" for r in COMBINE_RULES], "ECE (mean)", "texts/s"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    t = result["truncate"]
    lines.append(f"| truncate | – | 1 | {t['accuracy']:.3f} (all rules) | | | {t['ece']:.3f} | "
                 f"{t['texts_per_s']:.1f} |")
    for w in result["windows"]:
        accs = " | ".join(f"{w['rules'][r]['accuracy']:.3f}" for r in COMBINE_RULES)
        lines.append(f"| window | {w['stride']} | {w['windows_per_post']:.1f} | {accs} | "
                     f"{w['rules']['mean']['ece']:.3f} | {w['texts_per_s']:.1f} |")
    return lines


def markdown(report: dict) -> str:
    setup, decision = report["setup"], report["decision"]
    parts = [
        "# Long posts read whole (`--long-text window`)",
        "",
        f"Generated by `benchmarks/tables/long_text_table.py` (`{report['command']}`); raw numbers in "
        f"`docs/long-text.json`.",
        "",
        f"Adapter: {setup['adapter']} (max length {setup['max_length']} tokens, temperature "
        f"{setup['temperature']:.3f}). CPU: {report['cpu']} ({report['threads']} torch thread, batch size "
        f"{setup['batch_size']}; the machine was shared with other jobs, load average "
        f"{report['load_average_start'][0]} at the start and {report['load_average_end'][0]} at the end on "
        f"{report['cores']} cores, so the texts/s are low and indicative; their ratios hold better).",
        "",
        f"Long posts: {setup['per_label']} per label, each test.csv posts of one label joined (drawn without "
        f"replacement, seed {setup['seed']}) up to a length drawn from {setup['shortest']}–{setup['longest']} "
        f"characters. Stripped: the same built from posts whose emoticons were removed first. Accuracy of the "
        f"calibrated probabilities' argmax; ECE of the `mean` rule's (10 bins). Rules: `mean` (of the windows' "
        f"calibrated probabilities), `mean-logits` (softmax of the mean logits / T), `max-confidence` (the "
        f"probabilities of the window surest of its label).",
        "",
    ]
    for result in report["long"]:
        parts += [f"## {result['set']}: {result['posts']} posts, {result['mean_chars']:.0f} characters on average "
                  f"({result['posts_joined_per_long_post']:.1f} test posts each), {result['longer_than_max_length']} "
                  f"longer than {setup['max_length']} tokens", "",
                  *table(result), ""]
    parts += ["## test.csv's own posts", ""]
    for r in report["short"]:
        parts += [f"- {r['set']}: {r['longer_than_max_length']} of {r['posts']} longer than {setup['max_length']} "
                  f"tokens. Accuracy: truncate {r['truncate']['accuracy']:.4f} ({r['truncate']['texts_per_s']:.0f} "
                  f"texts/s), window {r['window']['accuracy']:.4f} ({r['window']['texts_per_s']:.0f} texts/s, "
                  f"{r['window']['windows']} windows); {r['changed']} label(s) changed. The posts that fit, read on "
                  f"their own: probabilities {'identical' if r['fitting_identical'] else 'NOT identical'}; batched "
                  f"beside the longer posts' windows they differ by at most {r['fitting_max_difference_batched']:.1e} "
                  f"(other batch partners, other padding: float rounding, as between batch sizes)."]
    means = ", ".join(f"`{r}` {a:.4f}" for r, a in decision["mean_accuracy"].items())
    parts += ["", "## Combining rule", "",
              f"Mean accuracy over the two long sets at the default stride: {means}. The default rule is "
              f"`{decision['rule']}` (`mean` stays unless another rule is more than half a point better). "
              f"{setup['per_label'] * 2} posts per set: one standard error of an accuracy near 0.8 is about "
              f"{100 * (0.8 * 0.2 / (setup['per_label'] * 2)) ** 0.5:.1f} points, so smaller differences between "
              f"rules are within noise.", "", "## Findings", "", *findings(report), ""]
    return "\n".join(parts)


def findings(report: dict) -> list[str]:
    """What the tables say, in figures: the gain of windows, the stride, the cost and the calibration."""
    default = report["decision"]["default_stride"]
    lines = []
    for r in report["long"]:
        t = r["truncate"]
        by_stride = {w["stride"]: w for w in r["windows"]}
        w = by_stride[default]
        mean = w["rules"]["mean"]
        line = (f"- {r['set']}: windows (stride {default}, `mean`) {100 * (mean['accuracy'] - t['accuracy']):+.1f} "
                f"points over truncation ({t['accuracy']:.3f} → {mean['accuracy']:.3f}), at "
                f"{t['texts_per_s'] / w['texts_per_s']:.1f}x truncation's time ({w['windows_per_post']:.1f} windows "
                f"a post); mean confidence {mean['confidence']:.3f} for accuracy {mean['accuracy']:.3f} "
                f"(truncation: {t['confidence']:.3f} for {t['accuracy']:.3f})")
        others = [o for s, o in by_stride.items() if s != default]
        for o in others:
            line += (f"; stride {o['stride']} ({o['windows_per_post']:.1f} windows) "
                     f"{100 * (o['rules']['mean']['accuracy'] - w['rules']['mean']['accuracy']):+.1f} points against "
                     f"stride {default}")
        lines.append(line + ".")
    lines.append("- Calibration: the temperature was fitted on single posts; the mean of a long post's windows' "
                 "probabilities is not fitted to long posts (ECE in the tables, confidence against accuracy above), "
                 "so a --min-confidence threshold chosen on short posts keeps another share of long ones.")
    return lines


def short_posts(predictor: Predictor, name: str, texts: list[str], labels: list[int], batch_size: int) -> dict:
    """test.csv's posts as they are, read by truncation and in windows (default stride and rule): the posts that
    fit get identical probabilities when read on their own, and within float rounding when batched beside the
    windows of longer posts (other batch partners, other padding)."""
    y = np.asarray(labels)
    temperature = predictor.temperature()
    truncated, truncate_s = read(predictor, texts, LongText(), batch_size)
    windowed, window_s = read(predictor, texts, LongText("window"), batch_size)
    pt, pw = truncated.probabilities(temperature), windowed.probabilities(temperature)
    fits = windowed.windows == 1
    fitting = [texts[i] for i in np.flatnonzero(fits)]
    alone_t = predictor.predict_proba(fitting, batch_size=batch_size)
    alone_w = predictor.predict_proba(fitting, batch_size=batch_size, long_text="window")
    return {"set": name, "posts": len(texts), "longer_than_max_length": int((~fits).sum()),
            "truncate": {"accuracy": float((pt.argmax(axis=1) == y).mean()), "texts_per_s": len(texts) / truncate_s},
            "window": {"accuracy": float((pw.argmax(axis=1) == y).mean()), "texts_per_s": len(texts) / window_s,
                       "windows": int(len(windowed.owner))},
            "changed": int((pt.argmax(axis=1) != pw.argmax(axis=1)).sum()),
            "fitting_identical": bool(np.array_equal(alone_t, alone_w)),
            "fitting_max_difference_batched": float(np.abs(pt[fits] - pw[fits]).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="the adapter to read with (the README recipe's)")
    parser.add_argument("--shared", default=os.environ.get("WEIBO_SHARED", str(ROOT.parent / "shared")))
    parser.add_argument("--per-label", type=int, default=150, help="long posts of each label per set")
    parser.add_argument("--shortest", type=int, default=500)
    parser.add_argument("--longest", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strides", type=int, nargs="*", default=[0, 125],
                        help="window strides in tokens (0: the default, half a window)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--short", type=int, default=1000, help="test.csv posts read both ways (0: none)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "long-text.md"))
    parser.add_argument("--markdown-only", action="store_true",
                        help="measure nothing: rewrite the Markdown from the JSON beside --output")
    args = parser.parse_args(argv)
    if args.markdown_only:
        report = json.loads(Path(args.output).with_suffix(".json").read_text(encoding="utf-8"))
        write_report(Path(args.output), report, markdown)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    load_start = [round(x, 2) for x in os.getloadavg()]
    predictor = Predictor.from_adapters([args.adapter], device="cpu")
    info = predictor.adapters[predictor.default]
    width = window_width(predictor.tokenizer, info.max_length)
    strides = [s or None for s in args.strides]
    test = pd.read_csv(Path(args.shared) / "data" / "weibo_senti_100k" / "test.csv")
    texts, labels = test["review"].astype(str).tolist(), test["label"].astype(int).tolist()
    stripped = [(strip_emoticons(t), y) for t, y in zip(texts, labels)]
    stripped = [(t, y) for t, y in stripped if t.strip()]
    long_sets = []
    for name, (pool, pool_labels) in (("with emoticons", (texts, labels)),
                                      ("emoticons stripped", ([t for t, _ in stripped], [y for _, y in stripped]))):
        posts, post_labels, parts = build_long_posts(pool, pool_labels, args.per_label, args.shortest, args.longest,
                                                     args.seed)
        result = measure_set(predictor, name, posts, post_labels, strides, args.batch_size)
        result["posts_joined_per_long_post"] = float(np.mean(parts))
        long_sets.append(result)
    short = []
    if args.short:
        rng = np.random.default_rng(args.seed)
        pick = sorted(rng.choice(len(texts), size=min(args.short, len(texts)), replace=False))
        short.append(short_posts(predictor, f"{len(pick)} test.csv posts", [texts[i] for i in pick],
                                 [labels[i] for i in pick], args.batch_size))
    decision = {**decide(long_sets, LongText("window").step(width)), "default_stride": LongText("window").step(width)}
    report = {
        "command": " ".join([*([f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if "OMP_NUM_THREADS" in os.environ
                               else []), "python", "benchmarks/tables/long_text_table.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "setup": {"adapter": args.adapter, "max_length": info.max_length, "temperature": info.temperature,
                  "per_label": args.per_label, "shortest": args.shortest, "longest": args.longest, "seed": args.seed,
                  "batch_size": args.batch_size},
        "long": long_sets, "short": short, "decision": decision, "versions": package_versions(),
    }
    write_report(Path(args.output), report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
