"""Adapters on real data: one adapter per domain, their combinations, every one scored on every held-out set.

Trains LoRA adapters on small subsets of weibo_senti_100k, waimai_10k and ChnSentiCorp_htl_all on the tiny
random base (2 layers, 128 wide, the real vocabulary), combines them with each PEFT method, loads them all on
one base and evaluates each on the three held-out sets. Then checks the production-shape file size: a float16
adapter of the exact uer/gpt2-chinese-cluecorpussmall shape, against its float32 twin.

Held-out sets, never trained on: a fixed stratified subset of weibo test.csv; for waimai_10k and
ChnSentiCorp_htl_all a stratified 20% split (seed below) of the validated file, from which only the other 80%
feeds training. Training texts that also occur in a held-out set are dropped.

    .venv/bin/python benchmarks/tables/adapter_table.py            # writes docs/adapters.md and docs/adapters.json

Models and data subsets go to --work (default /tmp/weibo-adapter-table), never into the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/ and the groups
from common.machine import cpu_name  # noqa: E402
from common.workbench import write_report  # noqa: E402
from sklearn.model_selection import train_test_split

from weibo_sentiment.adapter_io import WEIGHTS_FILE, package_versions
from weibo_sentiment.adapters import COMBINE_METHODS, combine
from weibo_sentiment.data import LabelledData, load_labelled, stratified_split
from weibo_sentiment.evaluation import classification_report, evaluate
from weibo_sentiment.inference import Predictor
from weibo_sentiment.modeling import init_model
from weibo_sentiment.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["negative", "positive"]
SPLIT_SEED = 20261129
DOMAINS = {
    "weibo": ("weibo_senti_100k/train.csv", "weibo_senti_100k/test.csv"),
    "waimai": ("chinese_reviews/waimai_10k.csv", None),
    "hotel": ("chinese_reviews/ChnSentiCorp_htl_all.csv", None),
}
logger = logging.getLogger("adapter_table")


def _subset(texts: list[str], labels: list[int], n: int, seed: int) -> tuple[list[str], list[int]]:
    """A stratified subset of n rows (all rows when there are no more than n)."""
    if n >= len(texts):
        return list(texts), list(labels)
    kept, _, kept_labels, _ = train_test_split(texts, labels, train_size=n, stratify=labels,
                                               random_state=seed)
    return list(kept), list(kept_labels)


def _write(path: Path, texts: list[str], labels: list[int]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "review"])
        writer.writerows(zip(labels, texts, strict=True))
    return path


def prepare_data(data_dir: Path, work: Path, train_rows: int, eval_rows: int) -> dict[str, dict]:
    """Per domain: a training subset and a held-out subset, written as CSV under `work`."""
    splits = {}
    for domain, (train_file, test_file) in DOMAINS.items():
        data: LabelledData = load_labelled(data_dir / train_file)
        if test_file:
            test = load_labelled(data_dir / test_file, deduplicate=False, min_classes=1)
            pool, held = (data.texts, data.labels), (test.texts, test.labels)
        else:
            pool, held = stratified_split(data, 0.2, SPLIT_SEED)
        held_texts, held_labels = _subset(*held, eval_rows, SPLIT_SEED)
        unseen = set(held_texts)
        pool = [(t, y) for t, y in zip(*pool, strict=True) if t not in unseen]
        train_texts, train_labels = _subset([t for t, _ in pool], [y for _, y in pool], train_rows,
                                            SPLIT_SEED)
        splits[domain] = {
            "train": str(_write(work / f"{domain}-train.csv", train_texts, train_labels)),
            "heldout": str(_write(work / f"{domain}-heldout.csv", held_texts, held_labels)),
            "train_rows": len(train_texts),
            "heldout_rows": len(held_texts),
            "heldout_positive_share": round(sum(held_labels) / len(held_labels), 4),
            "source": train_file,
            "heldout_source": test_file or f"{train_file} (stratified 20% split, seed {SPLIT_SEED})",
        }
    return splits


def _trained_with(out: Path, config: TrainConfig, rows: int) -> bool:
    """Whether `out` holds an adapter trained with these settings on this many rows (for --reuse)."""
    try:
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (run["data"]["train"]["rows_read"] == rows and run["training"]["lr"] == config.lr
            and run["training"]["epochs"] == config.epochs)


def production_size_check(vocab: Path, work: Path, data_csv: str, texts: list[str], rows: int = 48) -> dict:
    """Float16 vs float32 adapter of the exact production shape: file sizes and predicted labels."""
    base = work / "uer-base"
    if not (base / "config.json").is_file():
        init_model(base, "uer", vocab_file=vocab, seed=0)
    with open(data_csv, encoding="utf-8", newline="") as f:
        reader = zip(csv.DictReader(f), range(rows), strict=False)
        picked = [(int(r["label"]), r["review"]) for r, _ in reader]
    subset = _write(work / "size-check.csv", [t for _, t in picked], [y for y, _ in picked])
    result: dict = {"base": "uer preset (uer/gpt2-chinese-cluecorpussmall shape, random weights)",
                    "train_rows": rows, "max_steps": 2}
    probs = {}
    for dtype in ("float32", "float16"):
        out = work / f"uer-adapter-{dtype}"
        run = train(TrainConfig(data=str(subset), base_model=str(base), output=str(out), max_steps=2,
                                save_dtype=dtype, logging_steps=10**6)).run
        result[dtype] = {"file_bytes": (out / WEIGHTS_FILE).stat().st_size,
                         "trainable_parameters": run["trainable_parameters"]}
        probs[dtype] = Predictor.from_adapters([out], device="cpu").predict_proba(texts, batch_size=32)
    same = (probs["float16"].argmax(1) == probs["float32"].argmax(1))
    result.update(compared_texts=len(texts), same_labels=int(same.sum()),
                  max_probability_difference=float(abs(probs["float16"] - probs["float32"]).max()))
    return result


def summary(results: dict[str, dict], domains: list[str]) -> list[str]:
    """What the table says, computed from it."""
    def mean(name: str) -> float:
        return sum(results[name][d]["accuracy"] for d in domains) / len(domains)

    combos = [name for name in results if name.startswith("combined")]
    routed = next((name for name in results if name.startswith("routed")), None)
    best_single = max(domains, key=mean)
    lines = [
        "- In domain, each adapter scores " + ", ".join(f"{results[d][d]['accuracy']:.3f} ({d})" for d in domains)
        + "; on the other two sets " + ", ".join(
            f"{d} falls to {min(results[d][o]['accuracy'] for o in domains if o != d):.3f}–"
            f"{max(results[d][o]['accuracy'] for o in domains if o != d):.3f}" for d in domains) + ".",
    ]
    if combos:
        best = max(combos, key=mean)
        changes = ", ".join(f"{d} {results[best][d]['accuracy'] - results[d][d]['accuracy']:+.3f}" for d in domains)
        lines.append(
            f"- The best combination, `{best}`, averages {mean(best):.3f} over the three sets, against "
            f"{mean(best_single):.3f} for the best single adapter ({best_single}); against each domain's own "
            f"adapter it changes in-domain accuracy by {changes}.")
    if routed:
        lines.append(
            f"- Routing each row to its domain's adapter (one `predict_routed` call over the three sets mixed, "
            f"as `predict --input` does with an `adapter` column) keeps every adapter's in-domain score: mean "
            f"{mean(routed):.3f}. Combine when a text's domain is unknown; route when it is known.")
    return lines


def markdown(report: dict) -> str:
    domains = list(report["data"])
    lines = [
        "# Adapters on real data: one per domain, and their combinations",
        "",
        "Generated by `benchmarks/tables/adapter_table.py` "
        f"(`{report['command']}`); raw numbers in `docs/adapters.json`.",
        "",
        f"Base: the **tiny** random GPT-2 (2 layers, 128 wide, real 21,128-entry vocabulary), so absolute "
        f"scores are low; what matters is the pattern. Each domain adapter: LoRA r=8 on c_attn/c_proj plus a "
        f"binary head, {report['settings']['train_rows']} stratified training rows, "
        f"{report['settings']['epochs']:g} epochs, lr {report['settings']['lr']:g}. "
        f"Combinations: `weibo-sentiment combine` of the three with weights 1/3 each "
        f"(heads: the same weighted sum; label sets are identical).",
        "",
        "Held-out sets (never trained on): " + "; ".join(
            f"**{d}** {report['data'][d]['heldout_rows']} rows from {report['data'][d]['heldout_source']}"
            for d in domains) + ".",
        "",
        "Accuracy / macro-F1 on each held-out set:",
        "",
        "| adapter | " + " | ".join(domains) + " | mean accuracy |",
        "| --- | " + " | ".join("---" for _ in domains) + " | --- |",
    ]
    for name, row in report["results"].items():
        cells = [f"{row[d]['accuracy']:.3f} / {row[d]['macro_f1']:.3f}" for d in domains]
        mean = sum(row[d]["accuracy"] for d in domains) / len(domains)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:.3f} |")
    lines += ["", *summary(report["results"], domains)]
    size = report.get("production_size_check")
    if size:
        lines += [
            "",
            "## Production-shape adapter size (`train --save-dtype`)",
            "",
            f"Base: {size['base']}; LoRA r=8 on c_attn/c_proj + binary head = "
            f"{size['float32']['trainable_parameters']:,} parameters, trained {size['max_steps']} steps on "
            f"{size['train_rows']} rows.",
            "",
            "| save dtype | adapter_model.safetensors |",
            "| --- | --- |",
            *(f"| {d} | {size[d]['file_bytes']:,} bytes ({size[d]['file_bytes'] / 1e6:.2f} MB) |"
              for d in ("float32", "float16")),
            "",
            f"float16 predicts the same label as float32 on {size['same_labels']} of "
            f"{size['compared_texts']} held-out weibo texts (largest probability difference "
            f"{size['max_probability_difference']:.1e}).",
        ]
    reused = (" (the domain adapters reused from an earlier run with the same rows and settings; training is "
              "seeded, so a fresh run gives the same numbers)") if report["settings"]["reused"] else ""
    lines += ["", f"Run on {report['machine']}, {report['seconds']:.0f} s in all{reused}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("WEIBO_SHARED", str(ROOT.parent / "shared")),
                        help="the shared folder with data/ and models/ (default: ../shared or $WEIBO_SHARED)")
    parser.add_argument("--work", default="/tmp/weibo-adapter-table", help="where models and subsets go")
    parser.add_argument("--train-rows", type=int, default=2000,
                        help="training rows per domain (default 2000)")
    parser.add_argument("--eval-rows", type=int, default=1000, help="held-out rows per domain (default 1000)")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--methods", nargs="+", default=list(COMBINE_METHODS), choices=COMBINE_METHODS)
    parser.add_argument("--skip-size-check", action="store_true", help="skip the production-shape size check")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse domain adapters already in --work when trained with the same settings")
    parser.add_argument("--output", default=str(ROOT / "docs" / "adapters.md"),
                        help="markdown to write; the JSON goes beside it (default: docs/adapters.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    shared = Path(args.shared)
    vocab = shared / "models" / "gpt2-chinese-cluecorpussmall" / "vocab.txt"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = work / "tiny-base"
    if not (base / "config.json").is_file():
        init_model(base, "tiny", vocab_file=vocab, seed=0)

    splits = prepare_data(shared / "data", work, args.train_rows, args.eval_rows)
    adapters: dict[str, Path] = {}
    reused = False
    for domain, split in splits.items():
        out = work / f"adapter-{domain}"
        config = TrainConfig(data=split["train"], base_model=str(base), output=str(out), epochs=args.epochs,
                             lr=args.lr, logging_steps=10**6)
        if args.reuse and _trained_with(out, config, split["train_rows"]):
            logger.info("reusing the %s adapter in %s", domain, out)
            reused = True
        else:
            logger.info("training the %s adapter on %d rows", domain, split["train_rows"])
            train(config)
        adapters[domain] = out
    combined: dict[str, Path] = {}
    for method in args.methods:
        combined[f"combined-{method}"] = combine(adapters, work / f"combined-{method}", method=method)

    # Every adapter and combination on one base, in one process.
    predictor = Predictor.from_adapters({**adapters, **combined}, device="cpu")
    names = {name: name.replace("combined-", "combined: ") for name in predictor.adapters}
    heldout = {d: load_labelled(s["heldout"], label_names=LABELS, deduplicate=False, min_classes=1)
               for d, s in splits.items()}
    results: dict[str, dict] = {}
    for key, shown in names.items():
        results[shown] = {}
        for domain, data in heldout.items():
            report = evaluate(predictor, data, adapter=key, batch_size=64)
            results[shown][domain] = {"accuracy": round(report["accuracy"], 4),
                                      "macro_f1": round(report["macro_f1"], 4), "n": report["n"]}
        logger.info("%s: %s", shown, results[shown])

    # Per-row routing on real data: every held-out row, of all three sets mixed, answered by its own
    # domain's adapter in one predict_routed call (one mixed-batch pass per batch: the heads share a shape).
    texts = [t for data in heldout.values() for t in data.texts]
    routes = [d for d, data in heldout.items() for _ in data.texts]
    predicted = [p.label for p in predictor.predict_routed(texts, routes, batch_size=64)]
    routed, start = {}, 0
    for domain, data in heldout.items():
        scores = classification_report(data.labels, predicted[start:start + len(data.labels)], LABELS)
        start += len(data.labels)
        routed[domain] = {"accuracy": round(scores["accuracy"], 4), "macro_f1": round(scores["macro_f1"], 4),
                          "n": scores["n"]}
    results["routed per row (each row → its domain's adapter)"] = routed

    report = {
        "command": " ".join(["python benchmarks/tables/adapter_table.py", *(sys.argv[1:] if argv is None
                                                                      else argv)]),
        "settings": {"train_rows": args.train_rows, "eval_rows": args.eval_rows, "epochs": args.epochs,
                     "lr": args.lr, "split_seed": SPLIT_SEED, "weights": "1/3 each", "reused": reused},
        "data": splits,
        "results": results,
        "adapter_best_validation": {d: json.loads((p / "run.json").read_text())["best"]
                                    for d, p in adapters.items()},
    }
    if not args.skip_size_check:
        logger.info("production-shape size check (uer preset, ~400 MB under %s)", work)
        report["production_size_check"] = production_size_check(vocab, work, splits["weibo"]["train"],
                                                                 heldout["weibo"].texts[:200])
    report.update(seconds=round(time.perf_counter() - started, 1),
                  machine=f"{cpu_name()} ({platform.machine()}), {os.cpu_count()} CPU cores, torch {torch.__version__}",
                  versions=package_versions())
    write_report(Path(args.output), report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
