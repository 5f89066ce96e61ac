"""`evaluate`: an adapter's scores on a labelled file, printed as a report, optionally as JSON and a plot."""

from __future__ import annotations

import argparse
import sys

from .options import (
    adapter_args,
    apply_domain,
    base_args,
    calibration_args,
    data_args,
    domain_args,
    long_text_args,
    set_long_text,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy, macro-F1, per-class scores and confusion matrix on a labelled file")
    adapter_args(p, many=False)
    p.add_argument("--data", required=True, help="labelled CSV/TSV")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--print-json", action="store_true", help="print the metrics as one JSON line too")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the confusion matrix, the reliability diagram before and after calibration "
                        "(15 bins, ECE) and accuracy vs coverage into this PNG")
    p.add_argument("--strip-emoticons", action="store_true",
                   help="remove emoticons before predicting: Weibo ones such as [哈哈] and Unicode emoji (the corpus "
                        "labels come from them)")
    calibration_args(p)
    domain_args(p)
    long_text_args(p)
    base_args(p, None)
    data_args(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from ..data import load_labelled
    from ..evaluation import evaluate, score
    from ..inference import Predictor
    from ..output import check_output_file, write_json

    if args.json:  # before any model work: a refused path should not cost a full evaluation
        check_output_file(args.json, "metrics", inputs=[args.data])
    if args.plot:
        check_output_file(args.plot, "plot", inputs=[args.data])
    predictor = Predictor.from_adapters([args.adapter], base_model=args.base_model, model_dir=args.model_dir,
                                        device=args.device, calibrated=not args.no_calibration,
                                        allow_other_base=args.allow_other_base)
    apply_domain(predictor, args)
    set_long_text(predictor, args)
    info = predictor.adapters[predictor.default]
    data = load_labelled(args.data, text_column=args.text_column, label_column=args.label_column,
                         encoding=args.encoding, label_names=info.label_names,
                         text_labels=bool(info.run.get("text_labels")), deduplicate=False, min_classes=1)
    scores = score(predictor, data, strip=args.strip_emoticons, batch_size=args.batch_size,
                   progress=sys.stderr.isatty())
    report = evaluate(predictor, data, strip=args.strip_emoticons, scores=scores)
    print(format_report(report))
    if args.json:
        write_json(report, args.json, inputs=[args.data])
        print(f"Metrics written to {args.json}")
    elif args.print_json:
        print(json.dumps(report, ensure_ascii=False))
    if args.plot:
        write_plot(args, scores)
    return 0


def write_plot(args: argparse.Namespace, scores) -> None:
    from pathlib import Path

    import numpy as np

    from ..plots import evaluation_figure

    raw = None if np.array_equal(scores.probs, scores.raw_probs) else scores.raw_probs  # one curve when equal
    title = f"adapter: {scores.adapter}    data: {Path(args.data).name}" + (
        " (emoticons stripped)" if args.strip_emoticons else "")
    evaluation_figure(args.plot, scores.labels, scores.probs, raw, scores.label_names, title=title)
    print(f"Plot written to {args.plot}")


def format_report(report: dict) -> str:
    """The report of `evaluation.evaluate` as the console table `evaluate` prints."""
    names = report["label_names"]
    width = max(10, *(len(n) for n in names))
    lines = [
        f"{report['data']}  n={report['n']}" + ("  (emoticons stripped)" if report.get("strip_emoticons") else ""),
        f"accuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}",
        f"{'':{width}}  precision  recall     f1  support",
    ]
    if "long_text" in report:
        lines.insert(1, f"long texts read whole: {report['texts_in_windows']} text(s) longer than the max length, "
                        f"{report['windows']} windows in all (stride {report['stride']}, {report['combine']} of "
                        f"their probabilities)")
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:{width}}  {c['precision']:9.4f} {c['recall']:7.4f} {c['f1']:6.4f} {c['support']:8d}")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name:{width}}  " + " ".join(f"{v:7d}" for v in row))
    if "ece" in report:
        how = (f"calibrated, temperature {report['temperature']:.4g}" if report["calibrated"]
               else "raw, --no-calibration")
        lines.append(f"confidence ({how}): ECE {report['ece']:.4f} (raw {report['ece_raw']:.4f})   "
                     f"Brier {report['brier']:.4f}   NLL {report['nll']:.4f}")
        lines.append("confidence >=  accuracy   kept")
        for row in report["coverage"]:
            accuracy = "     -" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            lines.append(f"{row['threshold']:13.2f}  {accuracy:>8} {row['kept']:6.1%}")
    return "\n".join(lines)
