"""Faithfulness of `predict --explain`, as the ERASER benchmark measures it (DeYoung et al. 2020), and its cost.

On emoticon-free test posts (weibo_senti_100k/test.csv, emoticons stripped, posts of at least 5 units), each post
is explained (weibo_sentiment.explanation, default settings), then predicted again:

- comprehensiveness: p(label | post) - p(label | post without its top 20% units), the units ranked by weight
  (most support for the predicted label first); against the same with a random 20% (mean of several draws);
- sufficiency: p(label | post) - p(label | its top 20% units alone), against a random 20% alone (lower is better).

A unit is what an explanation weighs: a character, a whole Latin/digit word, an emoticon. Deleting is cutting
the unit's characters out of the text. The cost per post of an explanation is put beside plain prediction's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tables/explanation_faithfulness.py --adapter ADAPTER
        # writes docs/explanations.json and docs/explanations.md
"""

from __future__ import annotations

import argparse
import math
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
from weibo_sentiment.emoticons import strip_emoticons
from weibo_sentiment.explanation import DEFAULT_STEPS, MAX_STEPS, TOLERANCE, explain
from weibo_sentiment.inference import Predictor

ROOT = Path(__file__).resolve().parents[2]
GOAL_RATIO = 2.0  # the goal: the top 20% lower the probability at least twice as much as a random 20%


def load_posts(test_csv: Path, n: int, seed: int, min_chars: int = 5) -> list[str]:
    """`n` posts of test.csv, emoticons stripped, with at least `min_chars` characters left (so that 20% of
    their units is at least one, and deleting it leaves some), sampled with `seed`."""
    texts = pd.read_csv(test_csv)["review"].astype(str).map(strip_emoticons)
    texts = texts[texts.map(lambda t: sum(not c.isspace() for c in t) >= min_chars)]
    return texts.sample(n=n, random_state=seed).tolist()


def without(text: str, units: list[tuple[int, int, float]], chosen: set[int]) -> str:
    """`text` with the characters of the units `chosen` (indices into `units`) cut out."""
    cut = sorted((units[i][0], units[i][1]) for i in chosen)
    pieces, at = [], 0
    for start, end in cut:
        pieces.append(text[at:start])
        at = end
    return "".join(pieces) + text[at:]


def only(text: str, units: list[tuple[int, int, float]], chosen: set[int]) -> str:
    """The characters of the units `chosen`, in text order, joined by spaces (which keep Latin words apart; the
    tokenizer reads Chinese characters one by one, spaces or not)."""
    return " ".join(text[s:e] for i, (s, e, _) in enumerate(units) if i in chosen)


def perturbations(explanations, fraction: float, draws: int, rng: np.random.Generator) -> list[dict]:
    """Per post: the texts to predict (its top units deleted or alone, random units deleted or alone)."""
    cases = []
    for e in explanations:
        k = max(1, round(fraction * len(e.units)))
        top = set(np.argsort([-w for *_, w in e.units], kind="stable")[:k].tolist())
        randoms = [set(rng.choice(len(e.units), size=k, replace=False).tolist()) for _ in range(draws)]
        cases.append({"k": k, "top_deleted": without(e.text, e.units, top), "top_alone": only(e.text, e.units, top),
                      "random_deleted": [without(e.text, e.units, r) for r in randoms],
                      "random_alone": [only(e.text, e.units, r) for r in randoms]})
    return cases


def probabilities(predictor: Predictor, texts: list[str], labels: list[int]) -> np.ndarray:
    """p(label | text) for each pair."""
    probs = predictor.predict_proba(texts, batch_size=64)
    return probs[np.arange(len(texts)), labels]


def summary(values: np.ndarray) -> dict:
    """Mean, standard deviation and the 95% interval of the mean (normal approximation)."""
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    return {"mean": round(float(values.mean()), 4), "std": round(float(values.std(ddof=1)), 4),
            "ci95": [round(float(values.mean() - half), 4), round(float(values.mean() + half), 4)]}


def faithfulness(predictor: Predictor, explanations, fraction: float, draws: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    cases = perturbations(explanations, fraction, draws, rng)
    labels = [e.label for e in explanations]
    full = np.array([e.probability for e in explanations])
    top_deleted = probabilities(predictor, [c["top_deleted"] for c in cases], labels)
    top_alone = probabilities(predictor, [c["top_alone"] for c in cases], labels)
    flat_labels = [label for label in labels for _ in range(draws)]
    random_deleted = probabilities(predictor, [t for c in cases for t in c["random_deleted"]], flat_labels)
    random_alone = probabilities(predictor, [t for c in cases for t in c["random_alone"]], flat_labels)
    comp_top, comp_rand = full - top_deleted, full - random_deleted.reshape(-1, draws).mean(1)
    suff_top, suff_rand = full - top_alone, full - random_alone.reshape(-1, draws).mean(1)
    ratio = float(comp_top.mean() / comp_rand.mean())
    return {
        "comprehensiveness": {"top": summary(comp_top), "random": summary(comp_rand),
                              "ratio": round(ratio, 2),
                              "top_minus_goal_x_random": summary(comp_top - GOAL_RATIO * comp_rand),
                              "posts_top_beats_random": round(float((comp_top > comp_rand).mean()), 3)},
        "sufficiency": {"top": summary(suff_top), "random": summary(suff_rand),
                        "posts_top_beats_random": round(float((suff_top < suff_rand).mean()), 3)},
        "units_per_post": summary(np.array([len(e.units) for e in explanations], dtype=float)),
        "goal": {"ratio": GOAL_RATIO, "met": ratio >= GOAL_RATIO},
    }


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def cost(predictor: Predictor, texts: list[str], explanations, explain_s: float, steps_sample: int) -> dict:
    """ms per post of prediction and of explanation (default settings), and a sample at fixed step counts."""
    _, predict_s = timed(predictor.predict, texts, batch_size=32)
    deltas = np.abs([e.delta for e in explanations])
    out = {"predict_ms_per_post": round(1000 * predict_s / len(texts), 1),
           "explain_ms_per_post": round(1000 * explain_s / len(texts), 1),
           "steps_used": {str(s): int(n) for s, n in zip(*np.unique([e.n_steps for e in explanations],
                                                                    return_counts=True))},
           "completeness_error": {"median": float(np.median(deltas)), "p90": float(np.quantile(deltas, 0.9)),
                                  "max": float(deltas.max())},
           "baseline_probability_mean": round(float(np.mean([e.baseline_probability for e in explanations])), 4),
           "fixed_steps": []}
    sample = texts[:steps_sample]
    for steps in (8, 16, 32, 64):
        fixed, seconds = timed(explain, predictor, sample, n_steps=steps, max_steps=steps)
        d = np.abs([e.delta for e in fixed])
        out["fixed_steps"].append({"n_steps": steps, "ms_per_post": round(1000 * seconds / len(sample), 1),
                                   "median_error": float(np.median(d)), "p90_error": float(np.quantile(d, 0.9)),
                                   "max_error": float(d.max())})
    return out


def fmt(s: dict) -> str:
    return f"{s['mean']:.4f} (sd {s['std']:.4f}; 95% CI {s['ci95'][0]:.4f} to {s['ci95'][1]:.4f})"


def load_note(report: dict) -> str:
    """What else the machine was doing: the times below are as slow as that made them."""
    load = report.get("load_average")
    if not load:
        return ""
    return (f"the machine was shared: load average {load[0]:g} / {load[1]:g} / {load[2]:g} (1 / 5 / 15 minutes) "
            f"at the end of the run, so the times below are slower than on an idle machine.")


def markdown(report: dict) -> str:
    f, c, s = report["faithfulness"], report["cost"], report["setup"]
    comp, suff = f["comprehensiveness"], f["sufficiency"]
    margin = comp["top_minus_goal_x_random"]
    steps = "\n".join(f"| {r['n_steps']} | {r['ms_per_post']:.0f} | {r['median_error']:.2g} | {r['p90_error']:.2g} "
                      f"| {r['max_error']:.2g} |" for r in c["fixed_steps"])
    used = ", ".join(f"{n} posts {k} steps" for k, n in c["steps_used"].items())
    return "\n".join([
        "# Explanations (`predict --explain`): faithfulness and cost",
        "",
        f"Generated by `benchmarks/tables/explanation_faithfulness.py` (`{report['command']}`); raw numbers in "
        f"`docs/explanations.json`. CPU: {report['cpu']} ({report['threads']} torch thread(s)); "
        f"{load_note(report)}",
        "",
        f"Setup: the adapter `{s['adapter']}` (the README recipe on the tiny random base: 1 epoch on 20,000 rows of "
        f"train.csv), {s['posts']} posts of test.csv with emoticons stripped (at least 5 characters left; pandas "
        f"`sample(random_state={s['seed']})`), {s['units_mean']:.1f} units per post on average. Each post's "
        f"predicted label is explained with the default settings ({DEFAULT_STEPS} steps, doubled up to "
        f"{MAX_STEPS} while the completeness error exceeds {TOLERANCE}), then its top {s['fraction']:.0%} units "
        f"by weight (at least one) are deleted, or kept alone, and the post predicted again; the random "
        f"comparison averages {s['draws']} draws of as many units per post. Means over posts:",
        "",
        "| ERASER measure | top 20% by attribution | random 20% |",
        "| --- | --- | --- |",
        f"| comprehensiveness (higher: the units mattered) | {fmt(comp['top'])} | {fmt(comp['random'])} |",
        f"| sufficiency (lower: the units suffice) | {fmt(suff['top'])} | {fmt(suff['random'])} |",
        "",
        f"Deleting the top 20% lowers the predicted label's probability {comp['ratio']:.2f} times as much as "
        f"deleting a random 20%; the paired difference top - {GOAL_RATIO:g} x random is {fmt(margin)}, and in "
        f"{comp['posts_top_beats_random']:.0%} of the posts the top 20% lowered it more than the random 20%. "
        f"Goal (at least {GOAL_RATIO:g} times): **{'met' if f['goal']['met'] else 'not met'}**. The top 20% alone "
        f"keep the probability better than a random 20% alone in {suff['posts_top_beats_random']:.0%} of the posts.",
        "",
        "## Cost",
        "",
        f"Per post, on this CPU: plain prediction {c['predict_ms_per_post']:.1f} ms (batches of 32), explanation "
        f"{c['explain_ms_per_post']:.0f} ms (batches of 8; {used}). Completeness error (|sum of weights - "
        f"(p(post) - p(baseline))|, in probability): median {c['completeness_error']['median']:.2g}, 90th "
        f"percentile {c['completeness_error']['p90']:.2g}, max {c['completeness_error']['max']:.2g}. The [PAD] "
        f"baseline's mean probability of the predicted label: {c['baseline_probability_mean']:.3f}.",
        "",
        f"Fixed step counts on the first {s['steps_sample']} posts (no doubling):",
        "",
        "| steps | ms per post | median error | 90th percentile | max |",
        "| --- | --- | --- | --- | --- |",
        steps,
        "",
        "## Reading the weights",
        "",
        "A weight is the share of the predicted label's calibrated probability that integrated gradients give "
        "a unit, on the way from the baseline (the post with every word replaced by [PAD], [CLS], [SEP] and the "
        "positions kept) to the post: the weights of all units add up to p(post) - p(baseline), up to the "
        "completeness error. Positive weights support the predicted label, negative ones speak against it. A "
        "post whose label the baseline already favours gets small weights, some of them negative (the post is "
        "less sure of its label than no words at all); the ranking, which ERASER measures above, still holds.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="the adapter to explain (e.g. the README recipe's)")
    parser.add_argument("--shared", default=os.environ.get("WEIBO_SHARED", str(ROOT.parent / "shared")))
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--draws", type=int, default=5, help="random subsets per post")
    parser.add_argument("--steps-sample", type=int, default=50, help="posts timed at fixed step counts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "docs" / "explanations.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    texts = load_posts(Path(args.shared, "data", "weibo_senti_100k", "test.csv"), args.posts, args.seed)
    predictor = Predictor.from_adapters([args.adapter], device="cpu")
    explanations, explain_s = timed(explain, predictor, texts)
    report = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(["benchmarks/tables/explanation_faithfulness.py",
                                                                      *(argv or sys.argv[1:])]),
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "versions": package_versions(),
        "setup": {"adapter": Path(args.adapter).name, "posts": len(texts), "seed": args.seed,
                  "fraction": args.fraction, "draws": args.draws, "steps_sample": args.steps_sample,
                  "units_mean": float(np.mean([len(e.units) for e in explanations]))},
        "faithfulness": faithfulness(predictor, explanations, args.fraction, args.draws, args.seed),
        "cost": cost(predictor, texts, explanations, explain_s, args.steps_sample),
        "examples": [{"text": e.text, "label": e.label_name, "probability": round(e.probability, 4),
                      "spans": e.top(5), "completeness_error": e.delta} for e in explanations[:5]],
    }
    report["load_average"] = [round(x, 1) for x in os.getloadavg()]  # of the last 1, 5, 15 minutes
    write_report(Path(args.output), report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
