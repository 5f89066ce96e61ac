"""Option groups that several commands share, each defined once so their names, defaults and help stay alike."""

from __future__ import annotations

import argparse


def data_args(p: argparse.ArgumentParser, labels: bool = True) -> None:
    p.add_argument("--text-column", default="review", help="column holding the text (default: review)")
    if labels:
        p.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    p.add_argument("--encoding", default="utf-8", help="file encoding (default: utf-8, with or without BOM)")


def base_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--base-model", default=default,
                   help="hub id or local model directory" + (f" (default: {default})" if default else
                                                              " (default: the one in the adapter's run.json)"))
    p.add_argument("--model-dir", default="models/gpt2-chinese",
                   help="where a hub model is saved once downloaded (default: models/gpt2-chinese)")
    if default is None:  # --base-model overrides the adapters' own base
        p.add_argument("--allow-other-base", action="store_true",
                       help="load adapters trained on another base than --base-model (their run.json fingerprint "
                            "differs, e.g. the parent of an adapt-base model) anyway, with a warning")


def adapter_args(p: argparse.ArgumentParser, many: bool, device: bool = True) -> None:
    """--adapter (one, or several with --use to pick), then --device and --batch-size unless `device` is false."""
    if many:
        p.add_argument("--adapter", action="append", default=None, metavar="[NAME=]DIR",
                       help="adapter directory; repeat for several (default: best_weibo_sentiment_lora)")
        p.add_argument("--use", metavar="NAME", help="adapter to use (default: the first)")
    else:
        p.add_argument("--adapter", default="best_weibo_sentiment_lora", metavar="DIR",
                       help="adapter directory (default: best_weibo_sentiment_lora)")
    if device:
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")


def backend_args(p: argparse.ArgumentParser, backend_help: str, model_help: str) -> None:
    """--backend and --model (an exported directory instead of --adapter); the help says what each command does."""
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"], help=backend_help)
    p.add_argument("--model", metavar="EXPORTED_DIR", help=model_help)


def calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-calibration", action="store_true",
                   help="report raw probabilities, not the ones calibrated by the adapter's fitted temperature")


def domain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", metavar="NAME",
                   help="divide the logits by the temperature of the adapter's domain NAME (fitted by `calibrate` "
                        "on labelled posts of that kind) instead of the one fitted on training's validation split")


def apply_domain(predictor, args: argparse.Namespace) -> None:
    """`--domain NAME`: the default adapter's temperature becomes the domain's (after --use has chosen it)."""
    if getattr(args, "domain", None):
        from ..domains import apply_domain as use_domain_temperature

        if getattr(args, "no_calibration", False):
            from ..errors import UserError

            raise UserError("--domain sets a calibration temperature; it cannot go with --no-calibration")
        use_domain_temperature(predictor, args.domain)


def save_dtype_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the saved adapter weights")


def long_text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--long-text", default="truncate", choices=["truncate", "window"],
                   help="texts longer than the adapter's max length: truncate (default: only their first max-length "
                        "tokens are read) or window (read whole, in overlapping windows of max-length tokens whose "
                        "calibrated probabilities are averaged; costs one forward pass per window, see "
                        "docs/long-text.md)")
    p.add_argument("--stride", type=int, metavar="TOKENS",
                   help="with --long-text window: tokens from one window's start to the next, less than a window "
                        "(default: half a window, 63 for max length 128, so every token has context on both sides "
                        "in one of its two windows)")


def set_long_text(predictor, args: argparse.Namespace, stride_alone: bool = False) -> None:
    """Make `predictor` read long texts as --long-text and --stride say, refusing a stride that no loaded adapter's
    windows can take before any text is read (`stride_alone`: --stride may come without --long-text window)."""
    from ..errors import UserError
    from ..inference.windows import LongText, window_width

    if args.stride is not None and args.long_text != "window" and not stride_alone:
        raise UserError(f"--stride {args.stride}: only with --long-text window")
    predictor.long_text = LongText(args.long_text, stride=args.stride)
    for info in predictor.adapters.values():
        LongText("window", stride=args.stride).step(window_width(predictor.tokenizer, info.max_length))
