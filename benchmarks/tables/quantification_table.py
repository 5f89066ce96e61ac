"""Corrected shares on real posts (issue 18): how far counted and corrected positive shares fall from the true ones,
and how often the intervals cover them.

Adapters: the README recipe's tiny adapter and the same recipe with emoticon dropout 0.5 (the issue asks for the
adapted base + dropout of docs/adaptation.md; its 1,000 adaptation steps did not fit in this session's share of the
CPU), both trained on the same 20,000 train.csv rows. Domains: 1,000 other train.csv rows (none
of those 20,000), with emoticons and emoticon-free (weibo_sentiment.strip_emoticons), and the default domain train
stores (its validation split, with emoticons). Samples: test.csv at positive shares 0.05, 0.10, ..., 0.95, 500
posts each, 30 samples per share, with and without emoticons; every sample is scored by every method, with the
domain of its kind (own) and with the validation domain. Each post is scored once (logits cached); a sample is an
index into the cache. Then `report` on 1,000,000 scored rows vs 10,000: peak RSS and time, each in a child process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tables/quantification_table.py --plain A --dropout B --train-sample C

writes docs/quantification.json and docs/quantification.md; logits, results and the scale files go to --cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/ and the groups
from common.machine import cpu_name  # noqa: E402
from tables.quantification_docs import write_docs  # noqa: E402

from weibo_sentiment.adapter_io import package_versions, read_run
from weibo_sentiment.calibration import softmax
from weibo_sentiment.data import load_labelled, stratified_split
from weibo_sentiment.domains import DEFAULT_DOMAIN, adapter_fingerprint, fit_domain, save_domain
from weibo_sentiment.emoticons import strip_emoticons
from weibo_sentiment.quantification import DEFAULT_BOOTSTRAP, METHODS, Quantifier, method_input

ROOT = Path(__file__).resolve().parents[2]
SHARES = np.round(np.arange(0.05, 0.951, 0.05), 2)
SAMPLE_SIZE, SAMPLES_PER_SHARE, DOMAIN_ROWS, SEED = 500, 30, 1000, 0
# Coverage over labelled samples: a 95% interval that includes the labelled sample's noise promises coverage over
# repeated labelled samples, which one fixed domain cannot show. DOMAIN_DRAWS disjoint 1,000-post domains from the
# same pool (the first is the fixed one), DRAW_SAMPLES_PER_SHARE fresh samples per share for each.
DOMAIN_DRAWS, DRAW_SAMPLES_PER_SHARE = 10, 2
DRAW_METHODS = ("cc", "acc", "pacc")  # EMQ's seconds per bucket would double the run; its fixed-domain figures tell
# EMQ's EM loop takes 1-3 s per bucket for 300 resamples when the posteriors are weak: its errors are measured on
# every sample, its intervals on every EMQ_INTERVAL_EVERY-th (3 per share)
EMQ_INTERVAL_EVERY = 10
logger = logging.getLogger("quantification_table")


def stripped(texts: list[str]) -> list[str]:
    return [strip_emoticons(t) or "。" for t in texts]  # as evaluate --strip-emoticons scores an emptied post


def posts(args) -> dict:
    """The texts and labels every adapter scores: domain pool sample, test.csv, and the validation split."""
    data = Path(args.data)
    seen = load_labelled(args.train_sample)
    seen_texts = set(seen.texts)
    train = pd.read_csv(data / "train.csv")
    pool = train[~train["review"].isin(seen_texts)].dropna(subset=["review"])
    # numpy draws a sample without replacement as the head of a permutation: the first 1,000 of this sample are the
    # fixed domain, whatever DOMAIN_DRAWS is
    pool = pool[pool["review"].str.strip().astype(bool)].sample(n=DOMAIN_ROWS * DOMAIN_DRAWS, random_state=SEED)
    test = pd.read_csv(data / "test.csv").dropna(subset=["review"])
    (_, _), (val_texts, val_labels) = stratified_split(seen, 0.1, 42)  # train's split of the same rows
    return {"domain": (pool["review"].tolist()[:DOMAIN_ROWS], pool["label"].to_numpy()[:DOMAIN_ROWS]),
            "pool": (pool["review"].tolist()[DOMAIN_ROWS:], pool["label"].to_numpy()[DOMAIN_ROWS:]),
            "test": (test["review"].tolist(), test["label"].to_numpy()),
            "validation": (val_texts, np.asarray(val_labels))}


def score(name: str, adapter: Path, texts: dict, cache: Path) -> dict:
    """Raw logits of every text of `texts` by `adapter`, with and without emoticons, cached in cache/NAME.npz."""
    path = cache / f"logits-{name}.npz"
    out = dict(np.load(path)) if path.is_file() else {}
    for part, (_, labels) in texts.items():
        if f"{part}_labels" in out and not np.array_equal(out[f"{part}_labels"], labels):
            raise SystemExit(f"{path}: its {part} rows are not this run's; remove the cache")
    missing = {part: v for part, v in texts.items() if f"{part}_labels" not in out}
    if not missing:
        return out
    from weibo_sentiment.inference import Predictor

    predictor = Predictor.from_adapters([adapter], device="cpu")
    start = time.perf_counter()
    for part, (items, labels) in missing.items():
        out[f"{part}_labels"] = labels
        out[f"{part}_with"] = predictor.predict_logits(items, batch_size=64)
        if part != "validation":
            out[f"{part}_without"] = predictor.predict_logits(stripped(items), batch_size=64)
        logger.info("%s: %s scored (%.0f s so far)", name, part, time.perf_counter() - start)
    np.savez(path, **out)
    return out


def draw_samples(test_labels: np.ndarray, rng, per_share: int = SAMPLES_PER_SHARE) -> list[tuple[float, np.ndarray]]:
    """(true positive share, test row indices) for `per_share` samples of 500 at each share, drawn without
    replacement within a sample."""
    positives, negatives = np.flatnonzero(test_labels == 1), np.flatnonzero(test_labels == 0)
    samples = []
    for share in SHARES:
        k = int(round(share * SAMPLE_SIZE))
        for _ in range(per_share):
            index = np.concatenate([rng.choice(positives, k, replace=False),
                                    rng.choice(negatives, SAMPLE_SIZE - k, replace=False)])
            samples.append((k / SAMPLE_SIZE, index))
    return samples


def run_setting(logits: dict, emoticons: str, domain: str, samples, bootstrap: int) -> dict:
    """Every method on every sample for one (adapter, posts with/without emoticons, domain) setting."""
    if domain == DEFAULT_DOMAIN:
        d_logits, d_labels = logits["validation_with"], logits["validation_labels"]
    else:
        d_logits, d_labels = logits[f"domain_{emoticons}"], logits["domain_labels"]
    fitted = fit_domain("bench", d_logits, d_labels, ["negative", "positive"], "-", "benchmark")
    test = softmax(logits[f"test_{emoticons}"], fitted.temperature)
    test_accuracy = float((test.argmax(1) == logits["test_labels"]).mean())
    domain_accuracy = float((d_logits.argmax(1) == d_labels).mean())
    out = {"temperature": fitted.temperature, "test_accuracy": round(test_accuracy, 4),
           "domain_accuracy": round(domain_accuracy, 4), "domain_rows": int(len(d_labels)), "methods": {}}
    for method in METHODS:
        start = time.perf_counter()
        quantifier = Quantifier.fit(method, fitted.posteriors(), d_labels, n_bootstrap=bootstrap, seed=SEED)
        fit_s = time.perf_counter() - start
        every = EMQ_INTERVAL_EVERY if method == "emq" else 1
        start = time.perf_counter()
        errors, covered, widths, clipped = estimate_samples(quantifier, test, samples, every)
        per_bucket = (time.perf_counter() - start) / len(samples[::every])
        by_share = pd.Series(errors).groupby([s for s, _ in samples]).mean()
        out["methods"][method] = {
            "mean_abs_error": round(float(np.mean(errors)), 4), "worst_abs_error": round(float(np.max(errors)), 4),
            "coverage": round(float(np.mean(covered)), 4), "mean_width": round(float(np.mean(widths)), 4),
            "clipped": clipped, "fit_s": round(fit_s, 2), "ms_per_bucket": round(per_bucket * 1000, 1),
            "interval_estimates": len(covered),
            "mean_abs_error_by_share": {f"{s:.2f}": round(float(v), 4) for s, v in by_share.items()}}
        logger.info("  %s: error %.3f (worst %.3f), coverage %.2f, width %.3f, %.0f ms/bucket", method,
                    np.mean(errors), np.max(errors), np.mean(covered), np.mean(widths), per_bucket * 1000)
    return out


def estimate_samples(quantifier: Quantifier, test: np.ndarray, samples, every: int = 1) -> tuple[list, list, list, int]:
    """Absolute errors of the positive share over `samples`; whether the 95% interval covers it, interval widths
    and how many estimates were clipped over every `every`-th sample."""
    errors, covered, widths, clipped = [], [], [], 0
    for i, (true, index) in enumerate(samples):
        if i % every:
            point = quantifier.point.aggregate(method_input(quantifier.method, test[index].astype(np.float64)))
            errors.append(abs(float(point[1]) - true))
            continue
        e = quantifier.estimate(test[index], 0.95)
        errors.append(abs(float(e.corrected[1]) - true))
        covered.append(bool(e.low[1] - 1e-9 <= true <= e.high[1] + 1e-9))
        widths.append(float(e.high[1] - e.low[1]))
        clipped += e.clipped
    return errors, covered, widths, clipped


def run_draws(logits: dict, emoticons: str, bootstrap: int) -> dict:
    """Coverage over labelled samples: DOMAIN_DRAWS disjoint domains of the kind, each with fresh test samples."""
    d_logits = np.concatenate([logits[f"domain_{emoticons}"], logits[f"pool_{emoticons}"]])
    d_labels = np.concatenate([logits["domain_labels"], logits["pool_labels"]])
    rng = np.random.default_rng(SEED + 1)
    found: dict[str, list] = {m: [[], [], []] for m in DRAW_METHODS}
    for k in range(DOMAIN_DRAWS):
        rows = slice(k * DOMAIN_ROWS, (k + 1) * DOMAIN_ROWS)
        fitted = fit_domain("draw", d_logits[rows], d_labels[rows], ["negative", "positive"], "-", "benchmark")
        test = softmax(logits[f"test_{emoticons}"], fitted.temperature)
        samples = draw_samples(logits["test_labels"], rng, DRAW_SAMPLES_PER_SHARE)
        for method in DRAW_METHODS:
            quantifier = Quantifier.fit(method, fitted.posteriors(), d_labels[rows], n_bootstrap=bootstrap,
                                        seed=SEED + k)
            errors, covered, widths, _ = estimate_samples(quantifier, test, samples)
            for kept, new in zip(found[method], (errors, covered, widths)):
                kept.extend(new)
    out = {}
    for method, (errors, covered, widths) in found.items():
        out[method] = {"mean_abs_error": round(float(np.mean(errors)), 4),
                       "worst_abs_error": round(float(np.max(errors)), 4),
                       "coverage": round(float(np.mean(covered)), 4), "mean_width": round(float(np.mean(widths)), 4),
                       "estimates": len(errors)}
        logger.info("  draws %s: error %.3f, coverage %.2f, width %.3f", method, np.mean(errors), np.mean(covered),
                    np.mean(widths))
    return out


def measure_accuracy(args, adapters: dict, cache: Path, texts: dict) -> dict:
    results_path = cache / f"results-b{args.bootstrap}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    args.cached_settings = len(results)
    for name, adapter in adapters.items():
        logits = score(name, adapter, texts, cache)
        samples = draw_samples(logits["test_labels"], np.random.default_rng(SEED))
        for emoticons in ("with", "without"):
            for domain in ("own", DEFAULT_DOMAIN):
                key = f"{name}/{emoticons}/{domain}"
                if key in results:
                    continue
                logger.info("%s (%d samples of %d)", key, len(samples), SAMPLE_SIZE)
                results[key] = run_setting(logits, emoticons, domain, samples, args.bootstrap)
                results_path.write_text(json.dumps(results, indent=1))  # a rerun continues here
            key = f"{name}/{emoticons}/draws"
            if key not in results:
                logger.info("%s (%d domains of %d)", key, DOMAIN_DRAWS, DOMAIN_ROWS)
                results[key] = run_draws(logits, emoticons, args.bootstrap)
                results_path.write_text(json.dumps(results, indent=1))
    return results


# ---- report on many rows -----------------------------------------------------------------------------------
def scale_files(cache: Path, adapter: Path, logits: dict) -> tuple[Path, dict[int, Path]]:
    """A copy of the adapter with its domains, and predict-style scored CSVs of 10,000 and 1,000,000 rows
    (posteriors of test.csv posts drawn with replacement, times over 30 days)."""
    copy = cache / "scale-adapter"
    if not copy.is_dir():
        shutil.copytree(adapter, copy)
        for name, part in ((DEFAULT_DOMAIN, "validation"), ("weibo1000", "domain")):
            save_domain(copy, fit_domain(name, logits[f"{part}_with"], logits[f"{part}_labels"],
                                         ["negative", "positive"], adapter_fingerprint(copy), "benchmark"))
    probs = softmax(logits["test_with"], float(read_run(copy).get("temperature", 1.0)))
    files = {}
    for rows in (10_000, 1_000_000):
        path = cache / f"scored-{rows}.csv"
        files[rows] = path
        if path.is_file():
            continue
        rng = np.random.default_rng(rows)
        p = probs[rng.integers(0, len(probs), rows)]
        stamps = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 30 * 86400, rows), unit="s")
        frame = pd.DataFrame({"time": stamps.strftime("%Y-%m-%d %H:%M:%S"), "label": p.argmax(1),
                              "label_name": np.where(p.argmax(1) == 1, "positive", "negative"),
                              "confidence": p.max(1).round(6), "prob_negative": p[:, 0].round(6),
                              "prob_positive": p[:, 1].round(6)})
        frame.to_csv(path, index=False)
    return copy, files


SCALE_CHILD = """
import json, resource, sys, time
from weibo_sentiment import report
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
frame = report(sys.argv[1], sys.argv[2], domain="weibo1000", time_column="time", every="1d", output=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - start, "buckets": len(frame), "rss_after_import_mb": imported,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure_scale(cache: Path, adapter: Path, logits: dict) -> dict:
    """`report` on each scored file in a fresh process that measures itself: a forked child's ru_maxrss as seen
    by its parent starts at the parent's size (946 MB here), whatever the child does."""
    copy, files = scale_files(cache, adapter, logits)
    out = {}
    for rows, path in files.items():
        command = [sys.executable, "-c", SCALE_CHILD, str(path), str(copy), str(cache / f"report-{rows}.csv")]
        child = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
        if child.returncode:
            raise SystemExit(f"report on {path} failed: {child.stderr[-2000:]}")
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        out[str(rows)] = {"rows": rows, "file_mb": round(path.stat().st_size / 2**20, 1),
                          **{k: round(v, 1) if isinstance(v, float) else v for k, v in measured.items()}}
        logger.info("report on %d rows: %s", rows, out[str(rows)])
    return out


def trend_picture(cache: Path, name: str, adapter: Path, logits: dict, docs: Path) -> dict:
    """docs/report_trend.png: `report --plot` on 28 days of emoticon-free test posts (400 a day) whose true negative
    share rises from 0.25 to 0.75 and falls back, corrected with the emoticon-free domain, truth dotted."""
    from weibo_sentiment import report
    from weibo_sentiment.trend_plot import trend_figure

    copy = cache / f"picture-{name}"
    if not copy.is_dir():
        shutil.copytree(adapter, copy)
        save_domain(copy, fit_domain("weibo1000-noemo", logits["domain_without"], logits["domain_labels"],
                                     ["negative", "positive"], adapter_fingerprint(copy), "benchmark"))
    probs = softmax(logits["test_without"], float(read_run(copy).get("temperature", 1.0)))
    rng = np.random.default_rng(SEED)
    labels = logits["test_labels"]
    days = pd.date_range("2024-03-01", periods=28, freq="D")
    truth = 0.5 - 0.25 * np.cos(np.linspace(0, 2 * np.pi, len(days)))
    rows = []
    for day, share in zip(days, truth):
        k = int(round(share * 400))
        index = np.concatenate([rng.choice(np.flatnonzero(labels == 0), k, replace=False),
                                rng.choice(np.flatnonzero(labels == 1), 400 - k, replace=False)])
        rows.append(pd.DataFrame({"created_at": day + pd.to_timedelta(rng.integers(0, 86400, 400), unit="s"),
                                  "prob_negative": probs[index, 0], "prob_positive": probs[index, 1],
                                  "label_name": "", "confidence": probs[index].max(1)}))
    path = cache / f"picture-{name}.csv"
    pd.concat(rows).to_csv(path, index=False)
    frame = report(path, copy, domain="weibo1000-noemo", time_column="created_at", every="1d")
    true_negative = pd.Series([round(share * 400) / 400 for share in truth])
    title = (f"Negative share of emoticon-free Weibo posts (400 a day), {name} adapter: PACC-corrected with "
             "1,000 labelled posts vs counted")
    trend_figure(frame, docs / "report_trend.png", title=title, reference={"negative": true_negative})
    errors = {"counted": float((frame["counted_negative"] - true_negative).abs().mean()),
              "corrected": float((frame["share_negative"] - true_negative).abs().mean()),
              "covered": float(((frame["low_negative"] <= true_negative)
                                & (true_negative <= frame["high_negative"])).mean())}
    logger.info("picture: %s", errors)
    return {"adapter": name, **{k: round(v, 4) for k, v in errors.items()}}


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpus = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("CPU(s):")), "?")
    return {"cpu": cpu_name(), "cpus": cpus, "load_average": [round(x, 2) for x in os.getloadavg()],
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plain", required=True, type=Path, help="the README recipe's tiny adapter")
    parser.add_argument("--dropout", type=Path, help="the README recipe with --emoticon-dropout 0.5 (the best "
                        "adapter this session could train: an adapted base did not fit in its CPU time)")
    parser.add_argument("--train-sample", required=True, type=Path, help="the 20,000 rows the adapters trained on")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("WEIBO_SHARED", ROOT.parent / "shared"))
                        / "data" / "weibo_senti_100k", help="folder with train.csv and test.csv")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/quantification-bench"))
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP)
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    adapters = {"plain": args.plain, **({"dropout": args.dropout} if args.dropout else {})}
    start = time.perf_counter()
    load_start = machine()
    texts = posts(args)
    results = measure_accuracy(args, adapters, args.cache, texts)
    scale = {} if args.skip_scale else measure_scale(args.cache, args.plain, score("plain", args.plain, texts,
                                                                                   args.cache))
    name = "dropout" if args.dropout else "plain"
    picture = trend_picture(args.cache, name, adapters[name], score(name, adapters[name], texts, args.cache),
                            ROOT / "docs")
    record = {"command": "OMP_NUM_THREADS=1 python benchmarks/tables/quantification_table.py " + " ".join(sys.argv[1:]),
              "machine_at_start": load_start, "machine_at_end": machine(),
              "seconds": round(time.perf_counter() - start), "cached_settings": args.cached_settings,
              "bootstrap": args.bootstrap, "shares": SHARES.tolist(), "sample_size": SAMPLE_SIZE,
              "samples_per_share": SAMPLES_PER_SHARE, "domain_rows": DOMAIN_ROWS,
              "validation_rows": int(len(texts["validation"][1])), "test_rows": int(len(texts["test"][1])),
              "adapters": {k: str(v) for k, v in adapters.items()}, "results": results, "scale": scale,
              "picture": picture,
              "versions": package_versions()}
    write_docs(record, ROOT / "docs")


if __name__ == "__main__":
    main()
