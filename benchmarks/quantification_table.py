"""Corrected shares on real posts (issue 18): how far counted and corrected positive shares fall from the true ones,
and how often the intervals cover them.

Adapters: the README recipe's tiny adapter and the best one the project makes here (adapted base + emoticon dropout
0.5, docs/adaptation.md), both trained on the same 20,000 train.csv rows. Domains: 1,000 other train.csv rows (none
of those 20,000), with emoticons and emoticon-free (weibo_sentiment.strip_emoticons), and the default domain train
stores (its validation split, with emoticons). Samples: test.csv at positive shares 0.05, 0.10, ..., 0.95, 500
posts each, 30 samples per share, with and without emoticons; every sample is scored by every method, with the
domain of its kind (own) and with the validation domain. Each post is scored once (logits cached); a sample is an
index into the cache. Then `report` on 1,000,000 scored rows vs 10,000: peak RSS and time, each in a child process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quantification_table.py --plain A --adapted B --train-sample C

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
from machine import cpu_name  # benchmarks/machine.py: the script folder is on sys.path
from quantification_docs import write_docs  # benchmarks/quantification_docs.py

from weibo_sentiment.adapter_io import package_versions, read_run
from weibo_sentiment.calibration import softmax
from weibo_sentiment.data import load_labelled, stratified_split, strip_emoticons
from weibo_sentiment.domains import DEFAULT_DOMAIN, adapter_fingerprint, fit_domain, save_domain
from weibo_sentiment.quantification import DEFAULT_BOOTSTRAP, METHODS, Quantifier

ROOT = Path(__file__).resolve().parents[1]
SHARES = np.round(np.arange(0.05, 0.951, 0.05), 2)
SAMPLE_SIZE, SAMPLES_PER_SHARE, DOMAIN_ROWS, SEED = 500, 30, 1000, 0
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
    pool = pool[pool["review"].str.strip().astype(bool)].sample(n=DOMAIN_ROWS, random_state=SEED)
    test = pd.read_csv(data / "test.csv").dropna(subset=["review"])
    (_, _), (val_texts, val_labels) = stratified_split(seen, 0.1, 42)  # train's split of the same rows
    return {"domain": (pool["review"].tolist(), pool["label"].to_numpy()),
            "test": (test["review"].tolist(), test["label"].to_numpy()),
            "validation": (val_texts, np.asarray(val_labels))}


def score(name: str, adapter: Path, texts: dict, cache: Path) -> dict:
    """Raw logits of every text of `texts` by `adapter`, with and without emoticons, cached in cache/NAME.npz."""
    path = cache / f"logits-{name}.npz"
    if path.is_file():
        return dict(np.load(path))
    from weibo_sentiment.inference import Predictor

    predictor = Predictor.from_adapters([adapter], device="cpu")
    out, start = {}, time.perf_counter()
    for part, (items, labels) in texts.items():
        out[f"{part}_labels"] = labels
        out[f"{part}_with"] = predictor.predict_logits(items, batch_size=64)
        if part != "validation":
            out[f"{part}_without"] = predictor.predict_logits(stripped(items), batch_size=64)
        logger.info("%s: %s scored (%.0f s so far)", name, part, time.perf_counter() - start)
    np.savez(path, **out)
    return out


def draw_samples(test_labels: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(true positive share, test row indices) for 30 samples of 500 at each share, drawn without replacement
    within a sample, seeded."""
    rng = np.random.default_rng(SEED)
    positives, negatives = np.flatnonzero(test_labels == 1), np.flatnonzero(test_labels == 0)
    samples = []
    for share in SHARES:
        k = int(round(share * SAMPLE_SIZE))
        for _ in range(SAMPLES_PER_SHARE):
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
        errors, covered, widths, clipped = [], [], [], 0
        start = time.perf_counter()
        for true, index in samples:
            e = quantifier.estimate(test[index], 0.95)
            errors.append(abs(float(e.corrected[1]) - true))
            covered.append(bool(e.low[1] - 1e-9 <= true <= e.high[1] + 1e-9))
            widths.append(float(e.high[1] - e.low[1]))
            clipped += e.clipped
        per_bucket = (time.perf_counter() - start) / len(samples)
        by_share = pd.Series(errors).groupby([s for s, _ in samples]).mean()
        out["methods"][method] = {
            "mean_abs_error": round(float(np.mean(errors)), 4), "worst_abs_error": round(float(np.max(errors)), 4),
            "coverage": round(float(np.mean(covered)), 4), "mean_width": round(float(np.mean(widths)), 4),
            "clipped": clipped, "fit_s": round(fit_s, 2), "ms_per_bucket": round(per_bucket * 1000, 1),
            "mean_abs_error_by_share": {f"{s:.2f}": round(float(v), 4) for s, v in by_share.items()}}
        logger.info("  %s: error %.3f (worst %.3f), coverage %.2f, width %.3f, %.0f ms/bucket", method,
                    np.mean(errors), np.max(errors), np.mean(covered), np.mean(widths), per_bucket * 1000)
    return out


def measure_accuracy(args, adapters: dict, cache: Path, texts: dict) -> dict:
    results_path = cache / f"results-b{args.bootstrap}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name, adapter in adapters.items():
        logits = score(name, adapter, texts, cache)
        samples = draw_samples(logits["test_labels"])
        for emoticons in ("with", "without"):
            for domain in ("own", DEFAULT_DOMAIN):
                key = f"{name}/{emoticons}/{domain}"
                if key in results:
                    continue
                logger.info("%s (%d samples of %d)", key, len(samples), SAMPLE_SIZE)
                results[key] = run_setting(logits, emoticons, domain, samples, args.bootstrap)
                results_path.write_text(json.dumps(results, indent=1))  # a rerun continues here
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


def measure_scale(cache: Path, adapter: Path, logits: dict) -> dict:
    copy, files = scale_files(cache, adapter, logits)
    out = {}
    for rows, path in files.items():
        target = cache / f"report-{rows}.csv"
        code = ("from weibo_sentiment import report; import sys; "
                f"report({str(path)!r}, {str(copy)!r}, domain='weibo1000', time_column='time', every='1d', "
                f"output={str(target)!r})")
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        if status:
            raise SystemExit(f"report on {path} failed (status {status})")
        out[str(rows)] = {"rows": rows, "buckets": 30, "seconds": round(seconds, 1),
                          "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                          "file_mb": round(path.stat().st_size / 2**20, 1)}
        logger.info("report on %d rows: %.1f s, peak RSS %.0f MB", rows, seconds, usage.ru_maxrss / 1024)
    return out


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpus = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("CPU(s):")), "?")
    return {"cpu": cpu_name(), "cpus": cpus, "load_average": [round(x, 2) for x in os.getloadavg()],
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plain", required=True, type=Path, help="the README recipe's tiny adapter")
    parser.add_argument("--adapted", type=Path, help="the adapted-base adapter with emoticon dropout 0.5")
    parser.add_argument("--train-sample", required=True, type=Path, help="the 20,000 rows the adapters trained on")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("WEIBO_SHARED", ROOT.parent / "shared"))
                        / "data" / "weibo_senti_100k", help="folder with train.csv and test.csv")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/quantification-bench"))
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP)
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)
    adapters = {"plain": args.plain, **({"adapted": args.adapted} if args.adapted else {})}
    start = time.perf_counter()
    load_start = machine()
    texts = posts(args)
    results = measure_accuracy(args, adapters, args.cache, texts)
    scale = {} if args.skip_scale else measure_scale(args.cache, args.plain, score("plain", args.plain, texts,
                                                                                   args.cache))
    record = {"command": "OMP_NUM_THREADS=1 python benchmarks/quantification_table.py " + " ".join(sys.argv[1:]),
              "machine_at_start": load_start, "machine_at_end": machine(),
              "seconds": round(time.perf_counter() - start),
              "bootstrap": args.bootstrap, "shares": SHARES.tolist(), "sample_size": SAMPLE_SIZE,
              "samples_per_share": SAMPLES_PER_SHARE, "domain_rows": DOMAIN_ROWS,
              "validation_rows": int(len(texts["validation"][1])), "test_rows": int(len(texts["test"][1])),
              "adapters": {k: str(v) for k, v in adapters.items()}, "results": results, "scale": scale,
              "versions": package_versions()}
    write_docs(record, ROOT / "docs")


if __name__ == "__main__":
    main()
