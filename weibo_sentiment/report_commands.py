"""The `calibrate` and `report` commands, and the `--domain` option of predict, evaluate and serve.

Kept out of cli.py while that module becomes a package (issue 16); `add_parsers(subparsers)` adds the two
commands, `add_domain_option(parser)` the option.
"""

from __future__ import annotations

import argparse
import sys

from .errors import UserError
from .quantification import DEFAULT_BOOTSTRAP, DEFAULT_METHOD, METHODS

DEFAULT_ADAPTER = "best_weibo_sentiment_lora"


def add_domain_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", metavar="NAME",
                   help="divide the logits by the temperature of the adapter's domain NAME (fitted by `calibrate` "
                        "on labelled posts of that kind) instead of the one fitted on training's validation split")


def check_domain_option(args: argparse.Namespace) -> None:
    if getattr(args, "domain", None) and getattr(args, "no_calibration", False):
        raise UserError("--domain sets a calibration temperature; it cannot go with --no-calibration")


def apply_domain_option(predictor, args: argparse.Namespace) -> None:
    """`--domain NAME`: the default adapter's temperature becomes the domain's."""
    if getattr(args, "domain", None):
        from .domains import apply_domain

        apply_domain(predictor, args.domain)


def model_options(p: argparse.ArgumentParser) -> None:
    """Where the adapter's base comes from and where it runs (as predict and evaluate take them)."""
    p.add_argument("--base-model", help="hub id or local model directory (default: the one in the adapter's run.json)")
    p.add_argument("--model-dir", default="models/gpt2-chinese",
                   help="where a hub model is saved once downloaded (default: models/gpt2-chinese)")
    p.add_argument("--allow-other-base", action="store_true",
                   help="load an adapter trained on another base than --base-model anyway, with a warning")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument("--encoding", default="utf-8", help="file encoding (default: utf-8, with or without BOM)")


def add_parsers(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a named domain (temperature, error rates) on labelled posts of one "
                                         "kind, stored in the adapter directory for report and --domain")
    p.add_argument("--adapter", default=DEFAULT_ADAPTER, metavar="DIR", help=f"adapter directory (default: "
                                                                             f"{DEFAULT_ADAPTER})")
    p.add_argument("--data", required=True, help="labelled CSV/TSV: a sample of the posts to report on, labelled "
                                                 "by hand (1,000 posts give intervals of a few points)")
    p.add_argument("--domain", required=True, metavar="NAME", help="name of the domain (domains/NAME.json)")
    p.add_argument("--text-column", default="review", help="column holding the text (default: review)")
    p.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    model_options(p)
    p.set_defaults(func=run_calibrate)

    p = sub.add_parser("report", help="sentiment shares per time bucket and/or group, corrected for the "
                                      "classifier's errors on a domain, with intervals")
    p.add_argument("--input", required=True, metavar="FILE",
                   help="predict's output (CSV, JSONL or Parquet with prob_<label> columns) or posts (a text "
                        "column, scored here with --adapter)")
    p.add_argument("--adapter", default=DEFAULT_ADAPTER, metavar="DIR",
                   help=f"adapter directory, holding the domains (default: {DEFAULT_ADAPTER})")
    p.add_argument("--domain", metavar="NAME", help="domain whose labelled sample corrects the shares (default: "
                                                    "validation, training's own split: honest only for posts like "
                                                    "the training data)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                   help=f"quantification method (default: {DEFAULT_METHOD}; cc: counted labels, no correction; see "
                        "docs/quantification.md)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default: 0.95)")
    p.add_argument("--time-column", metavar="COL", help="column with each post's time (ISO 8601, or any form "
                                                        "pandas reads; numbers: Unix seconds)")
    p.add_argument("--every", metavar="SPAN", help="bucket span with --time-column: 1h, 6h, 1d, 1w... (default: 1d)")
    p.add_argument("--group-column", metavar="COL", help="column whose values split the posts into groups")
    p.add_argument("--text-column", default="review", help="column holding the posts' text (default: review)")
    p.add_argument("--scored-with", default="training", choices=["training", "domain", "raw"],
                   help="how predict computed --input's probabilities: training (default: predict without "
                        "--domain), domain (predict --domain, the same as here) or raw (predict --no-calibration)")
    p.add_argument("--output", metavar="FILE", help="write the table: .csv, .json or .parquet (default: print it)")
    p.add_argument("--plot", metavar="FILE.png", help="draw corrected shares over time with their intervals")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help=f"resamples behind each interval (default: {DEFAULT_BOOTSTRAP})")
    p.add_argument("--seed", type=int, default=0, help="seed of the resamples (default: 0)")
    model_options(p)
    p.set_defaults(func=run_report)


def run_calibrate(args: argparse.Namespace) -> int:
    from .domains import calibrate

    domain = calibrate(args.adapter, args.data, args.domain, text_column=args.text_column,
                       label_column=args.label_column, encoding=args.encoding, base_model=args.base_model,
                       model_dir=args.model_dir, device=args.device, batch_size=args.batch_size,
                       allow_other_base=args.allow_other_base, progress=sys.stderr.isatty())
    counts = ", ".join(f"{n} {name}" for name, n in domain.counts.items())
    print(f"Domain {domain.name!r} stored in {args.adapter}: {domain.rows} labelled posts ({counts}), "
          f"temperature {domain.temperature:.4g}")
    if "warning" in domain.calibration:
        print(f"warning: {domain.calibration['warning']}", file=sys.stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .shares import report

    frame = report(args.input, args.adapter, domain=args.domain, method=args.method, confidence=args.confidence,
                   time_column=args.time_column, every=args.every, group_column=args.group_column,
                   text_column=args.text_column, encoding=args.encoding, scored_with=args.scored_with,
                   output=args.output, plot=args.plot, n_bootstrap=args.bootstrap, seed=args.seed,
                   base_model=args.base_model, model_dir=args.model_dir, device=args.device,
                   batch_size=args.batch_size, allow_other_base=args.allow_other_base)
    attrs = frame.attrs
    if args.output:
        print(f"{len(frame)} buckets ({attrs['rows']} rows) written to {args.output}", file=sys.stderr)
    else:
        print(frame.drop(columns=["method", "domain"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"method {attrs['method']}, domain {attrs['domain']!r} ({attrs['domain_rows']} labelled posts), "
          f"{attrs['confidence']:.0%} intervals", file=sys.stderr)
    if attrs["note"]:
        print(f"note: {attrs['note']}", file=sys.stderr)
    if args.plot:
        print(f"Plot written to {args.plot}", file=sys.stderr)
    return 0
