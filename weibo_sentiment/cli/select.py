"""`select`: the posts most worth labelling (weibo_sentiment.selection), as a CSV to fill in."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .options import adapter_args, base_args, calibration_args, data_args


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="pick the posts most worth labelling (least confident, deduplicated) and "
                                      "write them as a CSV to label")
    adapter_args(p, many=False)
    p.add_argument("--input", required=True, help="CSV/TSV (text column) or .txt (one post per line)")
    p.add_argument("--n", type=int, default=200, help="posts to pick (default: 200)")
    p.add_argument("--strategy", default="uncertainty", choices=["uncertainty", "random"],
                   help="uncertainty: the lowest calibrated confidence first (default); random: a seeded sample")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample and of ties (default: 0)")
    p.add_argument("--id-column", metavar="NAME", help="input column to copy as the id (default: the row number)")
    p.add_argument("--output", required=True, metavar="FILE.csv",
                   help="CSV to write: id, the text, predicted_label, confidence, label (empty: fill it in with "
                        "0..N-1, or with label names and train --label-names auto)")
    calibration_args(p)
    base_args(p, None)
    data_args(p, labels=False)
    p.set_defaults(func=run_select)


def run_select(args: argparse.Namespace) -> int:
    from ..data import read_texts
    from ..inference import Predictor
    from ..output import check_output_file
    from ..selection import check_unlabelled, select_posts, write_to_label

    check_output_file(args.output, "to-label", inputs=[args.input])  # before any model work
    check_unlabelled(args.output)
    extra = (args.id_column,) if args.id_column else ()
    texts, extras = read_texts(args.input, text_column=args.text_column, encoding=args.encoding, extra_columns=extra)
    if args.id_column and args.id_column not in extras:
        raise UserError(f"--id-column {args.id_column!r}: {args.input} has no such column")
    predictor = Predictor.from_adapters([args.adapter], base_model=args.base_model, model_dir=args.model_dir,
                                        device=args.device, calibrated=not args.no_calibration,
                                        allow_other_base=args.allow_other_base)
    chosen = select_posts(predictor, texts, args.n, strategy=args.strategy, seed=args.seed,
                          batch_size=args.batch_size, progress=sys.stderr.isatty())
    write_to_label(chosen, args.output, ids=extras.get(args.id_column), text_column=args.text_column,
                   inputs=[args.input])
    print(f"{len(chosen)} posts to label ({args.strategy}) written to {args.output}; fill in its label column")
    return 0
