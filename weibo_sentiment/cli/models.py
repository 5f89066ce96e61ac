"""`export`, `combine`, `merge` and `adapters info`: commands that turn adapters into other models or describe them."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .options import adapter_args, base_args, save_dtype_arg


def add_commands(sub: argparse._SubParsersAction) -> None:
    add_export(sub)
    add_combine(sub)
    add_merge(sub)
    add_adapters(sub)


# ---- export --------------------------------------------------------------------------------------------
def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export",
                       help="export an adapter merged into its base for ONNX Runtime (fast CPU inference)")
    adapter_args(p, many=False, device=False)
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    p.add_argument("--int8", action="store_true",
                   help="quantize the weights to int8 (dynamic quantization): ~3x smaller, faster on the CPU")
    p.add_argument("--int8-fp32-blocks", type=int, metavar="N",
                   help="with --int8: keep the first N transformer blocks in fp32, where rounding errors start "
                        "(default: a sixth of the blocks, 2 of 12); embeddings and the head always stay fp32")
    p.add_argument("--output", required=True,
                   help="directory to write: model.onnx, tokenizer, export.json (label names, max length)")
    base_args(p, None)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..exporters.onnx import export_onnx

    if args.int8_fp32_blocks is not None and not args.int8:
        raise UserError("--int8-fp32-blocks applies to --int8 exports only")
    out = export_onnx(args.adapter, args.output, int8=args.int8, fp32_blocks=args.int8_fp32_blocks,
                      base_model=args.base_model, model_dir=args.model_dir, allow_other_base=args.allow_other_base)
    print(f"ONNX export ({'int8' if args.int8 else 'fp32'}) written to {out}; "
          f"predict with `weibo-sentiment predict --model {out}`")
    return 0


# ---- combine -------------------------------------------------------------------------------------------
def add_combine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("combine", help="combine adapters of one task (same labels) into a new adapter")
    p.add_argument("--adapter", action="append", required=True, metavar="[NAME=]DIR",
                   help="adapter directory; repeat for each adapter to combine")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per adapter (default: 1/N each)")
    p.add_argument("--method", default="cat", choices=["linear", "cat", "ties", "dare_ties", "svd"],
                   help="PEFT combination: cat (exact weighted sum, rank = sum of ranks; default), svd (the "
                        "same sum cut back to --svd-rank), linear (rough, same ranks), ties / dare_ties "
                        "(prune to --density, resolve sign conflicts)")
    p.add_argument("--density", type=float, default=0.5,
                   help="share of weights kept by ties/dare_ties (default 0.5)")
    p.add_argument("--svd-rank", type=int, help="rank of the svd result (default: the largest input rank)")
    p.add_argument("--seed", type=int, default=0, help="seed for dare_ties' random pruning (default 0)")
    p.add_argument("--output", required=True, help="adapter directory to write")
    save_dtype_arg(p)
    base_args(p, None)
    p.set_defaults(func=run_combine)


def run_combine(args: argparse.Namespace) -> int:
    from ..adapters import combine

    out = combine(args.adapter, args.output, weights=args.weights, method=args.method, density=args.density,
                  svd_rank=args.svd_rank, save_dtype=args.save_dtype, seed=args.seed,
                  base_model=args.base_model, model_dir=args.model_dir, allow_other_base=args.allow_other_base)
    print(f"Combined adapter ({args.method}) saved to {out}")
    return 0


# ---- merge ---------------------------------------------------------------------------------------------
def add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge an adapter into its base: a standalone Hugging Face model")
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter directory")
    p.add_argument("--output", required=True,
                   help="model directory to write (loads in a plain transformers pipeline)")
    base_args(p, None)
    p.set_defaults(func=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from ..adapters import merge

    out = merge(args.adapter, args.output, base_model=args.base_model, model_dir=args.model_dir,
                allow_other_base=args.allow_other_base)
    print(f"Standalone model (adapter merged into its base) saved to {out}")
    return 0


# ---- adapters info -------------------------------------------------------------------------------------
def add_adapters(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", help="inspect adapter directories")
    adapters_sub = p.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    q = adapters_sub.add_parser("info", help="an adapter's base, labels, LoRA settings, size, best metrics")
    q.add_argument("dir", help="adapter directory")
    q.add_argument("--json", action="store_true", help="print the details as JSON")
    q.set_defaults(func=run_adapters_info)


def run_adapters_info(args: argparse.Namespace) -> int:
    import json

    from ..adapters import info

    details = info(args.dir)
    print(json.dumps(details, ensure_ascii=False, indent=2) if args.json else format_info(details))
    return 0


def format_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def format_info(details: dict) -> str:
    """`adapters.info`'s details as the console summary `adapters info` prints."""
    from ..adapter_io import WEIGHTS_FILE

    lora = details["lora"]
    params = details["parameters"]
    lines = [
        f"adapter     {details['path']}",
        f"base model  {details['base_model']} (fingerprint {details['base_fingerprint']})",
        f"labels      {len(details['label_names'])}: {', '.join(details['label_names'])}"
        + ("  (text labels)" if details["text_labels"] else ""),
        f"LoRA        r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']}, "
        f"targets {', '.join(lora['target_modules'])}",
        f"parameters  {params['total']:,} trainable ({params['lora']:,} LoRA + {params['head']:,} head)",
        f"file size   {format_size(details['file_bytes'])} ({WEIGHTS_FILE}, {details['weights_dtype']})",
        f"max length  {details['max_length']} tokens",
    ]
    best = details.get("best")
    if best:
        lines.append(f"best        accuracy {best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f} "
                     f"(validation, epoch {best['epoch']:g})")
    else:
        lines.append("best        no validation metrics in run.json")
    # The same facts as the model card (README.md): the emoticon-free figure and the calibration.
    stripped = details.get("validation_stripped")
    if stripped:
        lines.append(f"stripped    accuracy {stripped['accuracy']:.4f}, macro-F1 {stripped['macro_f1']:.4f} "
                     "(validation, emoticons removed)")
    if details.get("temperature") is not None:
        lines.append(f"calibrated  temperature {details['temperature']:.4g} (predict, evaluate and serve divide "
                     "the logits by it)")
    combination = details.get("combination")
    if combination:
        parts = ", ".join(f"{a['name']} ×{a['weight']:g}" for a in combination["adapters"])
        lines.append(f"combined    {combination['method']} of {parts}; head: weighted sum")
    return "\n".join(lines)
