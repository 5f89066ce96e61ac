"""`report`: sentiment shares per time bucket and/or group, corrected for the classifier's errors on a domain, with
intervals (weibo_sentiment.shares)."""

from __future__ import annotations

import argparse
import sys

from ..quantification import DEFAULT_BOOTSTRAP, DEFAULT_METHOD, METHODS
from .options import adapter_args, base_args, data_args


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="sentiment shares per time bucket and/or group, corrected for the "
                                      "classifier's errors on a domain, with intervals")
    p.add_argument("--input", required=True, metavar="FILE",
                   help="predict's output (CSV, JSONL or Parquet with prob_<label> columns) or posts (a text "
                        "column, scored here with --adapter)")
    adapter_args(p, many=False)
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
    p.add_argument("--scored-with", default="training", choices=["training", "domain", "raw"],
                   help="how predict computed --input's probabilities: training (default: predict without "
                        "--domain), domain (predict --domain, the same as here) or raw (predict --no-calibration)")
    p.add_argument("--output", metavar="FILE", help="write the table: .csv, .json or .parquet (default: print it)")
    p.add_argument("--plot", metavar="FILE.png", help="draw corrected shares over time with their intervals")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help=f"resamples behind each interval (default: {DEFAULT_BOOTSTRAP})")
    p.add_argument("--seed", type=int, default=0, help="seed of the resamples (default: 0)")
    base_args(p, None)
    data_args(p, labels=False)
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from ..shares import report

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
