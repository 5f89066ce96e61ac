"""`calibrate`: fit a named domain (temperature and error rates) on a labelled sample of the posts to report on,
stored in the adapter directory (weibo_sentiment.domains)."""

from __future__ import annotations

import argparse
import sys

from .options import adapter_args, base_args, data_args


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit a named domain (temperature, error rates) on labelled posts of one "
                                         "kind, stored in the adapter directory for report and --domain")
    adapter_args(p, many=False)
    p.add_argument("--data", required=True, help="labelled CSV/TSV: a sample of the posts to report on, labelled "
                                                 "by hand (1,000 posts give intervals of a few points)")
    p.add_argument("--domain", required=True, metavar="NAME", help="name of the domain (domains/NAME.json)")
    base_args(p, None)
    data_args(p)
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from ..domains import calibrate

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
