"""`feedback export`: the label corrections `serve` stored (weibo_sentiment.feedback), as a training CSV."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("feedback", help="label corrections stored by `serve`")
    actions = p.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    q = actions.add_parser("export", help="write the corrections as a training CSV (label,review; the latest "
                                          "correction of a text wins)")
    q.add_argument("--store", required=True, metavar="FILE", help="the feedback store (feedback.jsonl)")
    q.add_argument("--output", required=True, metavar="FILE.csv", help="training CSV to write")
    q.add_argument("--adapter", metavar="NAME", help="only the corrections of this adapter name")
    q.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..feedback import export_training_csv

    rows = export_training_csv(args.store, args.output, adapter=args.adapter)
    print(f"{rows} corrected posts written to {args.output}; continue the adapter on them with `weibo-sentiment "
          f"train --init-adapter DIR --data {args.output} --replay ITS_TRAINING_DATA`")
    return 0
