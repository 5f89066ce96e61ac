"""`predict`: texts given with --text, a file streamed a chunk at a time, stdin, shards on Ray, or the console loop."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import UserError
from .options import (
    adapter_args,
    apply_domain,
    backend_args,
    base_args,
    calibration_args,
    data_args,
    domain_args,
    long_text_args,
    set_long_text,
)

logger = logging.getLogger("weibo_sentiment")

PROMPT = "Please enter Weibo content: "
BANNER = "============= Weibo Sentiment Analysis (LoRA version) ============="


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict texts: interactive, --text, or --input FILE")
    adapter_args(p, many=True)
    p.add_argument("--text", action="append", help="a text to classify; repeat for several")
    p.add_argument("--input", help="CSV/TSV (text column), JSONL, Parquet, .txt (one text per line) or - for "
                                    "stdin; files are streamed a chunk at a time")
    p.add_argument("--output", help=".csv, .jsonl or .parquet to write (default: JSON lines on stdout)")
    p.add_argument("--format", choices=["csv", "jsonl", "parquet"],
                   help="output format (default: from --output's suffix)")
    p.add_argument("--id-column", metavar="NAME", help="input column copied into every output row (first column)")
    p.add_argument("--keep-columns", action="store_true",
                   help="copy all other input columns into the output (after the prediction's; a name already "
                        "taken becomes input_NAME)")
    p.add_argument("--chunk-size", type=int, default=4096, metavar="N",
                   help="rows read, sorted by length, predicted and written at a time (default: 4096)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted --input/--output run after its last complete chunk (same input, "
                        "adapters and options)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    backend_args(p, backend_help="torch (default), or ONNX Runtime on the CPU with the adapter merged into its base: "
                                 "onnx (fp32) or onnx-int8 (fastest); with --adapter the export is made for this run",
                 model_help="a directory written by `weibo-sentiment export` (instead of --adapter)")
    calibration_args(p)
    domain_args(p)
    long_text_args(p)
    p.add_argument("--min-confidence", type=float, metavar="X",
                   help="mark predictions whose confidence is below X (0 < X < 1) as uncertain: an `uncertain` "
                        "column in files, '(uncertain)' on the console; the label stays the most likely one")
    p.add_argument("--explain", type=int, nargs="?", const=5, metavar="K",
                   help="add each text's K (default 5) most influential spans of its own text with signed weights "
                        "(positive: supports the label) and the completeness error: integrated gradients on the "
                        "torch backend, tens of times a prediction's cost (docs/explanations.md)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local (default: this process, streaming) or ray: --input's shards (a file, directory or "
                        "glob) scored by a pool of Ray actors into the directory --output")
    g = p.add_argument_group("--engine ray")
    g.add_argument("--address", help="Ray cluster to join (auto, ray://HOST:10001; default: RAY_ADDRESS, else a "
                                     "local Ray)")
    g.add_argument("--workers", type=int, default=2, metavar="N", help="actors, each loading the model once "
                                                                         "(default: 2)")
    g.add_argument("--cpus-per-worker", type=float, default=1, metavar="C",
                   help="CPUs per actor, also its torch threads (default: 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0, metavar="G", help="GPUs per actor (default: 0)")
    base_args(p, None)
    data_args(p)
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from ..inference import load_predictor

    check_min_confidence(args.min_confidence)  # before loading the model
    check_explain(args)
    if args.engine == "ray":
        if args.long_text != "truncate":
            raise UserError("--long-text window: only with --engine local")
        return predict_on_ray(args)
    streamed = {"--id-column": args.id_column, "--keep-columns": args.keep_columns, "--resume": args.resume}
    if (given := [k for k, v in streamed.items() if v]) and (args.text or not args.input or args.input == "-"):
        raise UserError(f"{', '.join(given)}: only for --input FILE (a file, not stdin or --text)")
    predictor = load_predictor(args.adapter, backend=args.backend, model=args.model,
                               base_model=args.base_model, model_dir=args.model_dir, device=args.device,
                               calibrated=not args.no_calibration, allow_other_base=args.allow_other_base)
    if args.use:
        predictor.use(args.use)
    apply_domain(predictor, args)
    set_long_text(predictor, args)
    if args.text:
        preds = predictor.predict(args.text, batch_size=args.batch_size)
        warn_truncated(predictor, preds)
        explained = with_explanations(predictor, preds, [{} for _ in preds], args.explain)
        for pred, row in zip(preds, explained):
            print(f"{pred.text}\n{result_line(pred, args.min_confidence)}")
            if row:
                print(f"Explanation: {json.dumps(row['explanation'], ensure_ascii=False)} "
                      f"(completeness error {row['completeness_error']:.2g})")
        return 0
    if args.input and str(args.input) != "-":
        return stream_file(predictor, args)
    if args.input:
        return predict_stdin(predictor, args)
    return interactive(predictor, min_confidence=args.min_confidence)


def check_min_confidence(value: float | None) -> None:
    if value is not None and not 0 < value < 1:
        raise UserError(f"--min-confidence {value:g}: must be between 0 and 1 (exclusive)")


def check_explain(args: argparse.Namespace) -> None:
    """Refuse `--explain` where it cannot work, before the model loads."""
    if args.explain is None:
        return
    from ..explanation import NOT_TORCH, check_top_k

    check_top_k(args.explain)
    if args.backend != "torch" or args.model:
        raise UserError(NOT_TORCH)
    if args.engine == "ray" or not (args.text or args.input):
        raise UserError("--explain is for --text and --input (with --engine local)")
    if args.long_text == "window":
        raise UserError("--explain covers a text's first max-length tokens only: not with --long-text window")


def with_explanations(predictor, preds, rows: list[dict], k: int | None) -> list[dict]:
    """`rows` with each prediction's explanation added when `--explain K` asks for it."""
    if k is not None:
        from ..explanation import add_explanations

        add_explanations(predictor, preds, rows, k)
    return rows


def warn_truncated(predictor, preds) -> None:
    """Warn how many texts were longer than their adapter's max length: cut to it, or read whole in windows."""
    from ..streaming.rows import count_truncated_by_length
    from ..streaming.rows import warn_truncated as warn

    warn(count_truncated_by_length(predictor, preds), predictor)


def predict_on_ray(args: argparse.Namespace) -> int:
    """`--engine ray`: score --input's shards on Ray into the directory --output (weibo_sentiment.cluster)."""
    from ..cluster import score_files

    if not args.input or args.input == "-" or args.text or not args.output:
        raise UserError("--engine ray needs --input (a file, directory or glob of shards) and --output DIR")
    if args.keep_columns or args.resume or args.domain:
        raise UserError("--keep-columns, --resume and --domain are for --engine local only")
    marker = score_files(args.input, args.output, args.adapter, address=args.address, fmt=args.format,
                         encoding=args.encoding, quiet=args.quiet, model=args.model, backend=args.backend,
                         workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                         gpus_per_worker=args.gpus_per_worker, batch_size=args.chunk_size,
                         model_batch_size=args.batch_size, text_column=args.text_column, id_column=args.id_column,
                         calibrated=not args.no_calibration, min_confidence=args.min_confidence, use=args.use,
                         base_model=args.base_model, model_dir=args.model_dir,
                         allow_other_base=args.allow_other_base)
    print(f"{marker['rows']} predictions written to {args.output}/ ({marker['format']} shards)", file=sys.stderr)
    return 0


def stream_file(predictor, args: argparse.Namespace) -> int:
    """`--input FILE`: read, predict and write a chunk at a time (weibo_sentiment.streaming)."""
    from ..streaming.run import predict_file

    result = predict_file(predictor, args.input, args.output, text_column=args.text_column, encoding=args.encoding,
                          id_column=args.id_column, keep_columns=args.keep_columns, fmt=args.format,
                          batch_size=args.batch_size, chunk_size=args.chunk_size,
                          min_confidence=args.min_confidence, resume=args.resume,
                          progress=False if args.quiet else None, explain=args.explain)
    if result.output is not None:
        resumed = f" (resumed after row {result.resumed_from})" if result.resumed_from else ""
        print(f"{result.rows} predictions written to {result.output}{resumed}", file=sys.stderr)
    return 0


def predict_stdin(predictor, args: argparse.Namespace) -> int:
    """`--input -`: read all of stdin, predict, write the table at once."""
    from ..data import read_texts
    from ..output import write_table
    from ..streaming.rows import output_row

    texts, extras = read_texts(args.input, text_column=args.text_column, encoding=args.encoding,
                               extra_columns=("adapter",))
    if "adapter" in extras:  # route each row to the adapter its `adapter` cell names (blank: --use's)
        preds = predictor.predict_routed(texts, extras["adapter"], batch_size=args.batch_size,
                                         progress=sys.stderr.isatty())
        warn_truncated(predictor, preds)
        rows = [{"adapter": p.adapter, **output_row(p, args.min_confidence)} for p in preds]
    else:
        preds = predictor.predict(texts, batch_size=args.batch_size, progress=sys.stderr.isatty())
        warn_truncated(predictor, preds)
        rows = [output_row(p, args.min_confidence) for p in preds]
    rows = with_explanations(predictor, preds, rows, args.explain)
    columns = list(dict.fromkeys(k for row in rows for k in row))  # adapters may have other label sets
    write_table(({k: row.get(k) for k in columns} for row in rows), args.output, args.format, inputs=[args.input])
    if args.output and str(args.output) != "-":
        print(f"{len(preds)} predictions written to {args.output}", file=sys.stderr)
    return 0


# ---- the console ---------------------------------------------------------------------------------------
def describe(label_name: str) -> str:
    """`positive` → `Positive sentiment`, as the original printed; other label names stay as they are."""
    if label_name.lower() in ("positive", "negative", "neutral"):
        return f"{label_name.capitalize()} sentiment"
    return label_name


def result_line(pred, min_confidence: float | None = None) -> str:
    line = f"Prediction: {describe(pred.label_name)} (Confidence: {pred.confidence:.4f})"
    uncertain = min_confidence is not None and pred.confidence < min_confidence
    return line + " (uncertain)" if uncertain else line


def interactive(predictor, stdin=None, stdout=None, min_confidence: float | None = None) -> int:
    """The original's console loop, plus `:adapters` and `:use NAME` to switch adapters."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stdout, flush=True)

    say(f"Device: {predictor.device}")
    labels = ", ".join(predictor.adapters[predictor.default].label_names)
    say(f"LoRA adapter loaded: {predictor.default} (labels: {labels})")
    say()
    say(BANNER)
    say("Enter Weibo content for analysis (enter 'q' to exit; ':adapters' lists adapters, ':use NAME' switches):")
    while True:
        say()
        stdout.write(PROMPT)
        stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            say()
            break
        if not line:  # EOF
            say()
            break
        text = line.strip()
        if text.lower() in ("q", "quit", "exit"):
            break
        if not text:
            say("Please type a Weibo post to analyse, or 'q' to quit.")
            continue
        if text == ":adapters":
            for name, info in predictor.adapters.items():
                mark = "*" if name == predictor.default else " "
                say(f"{mark} {name}: {info.path} (labels: {', '.join(info.label_names)})")
            continue
        if text.startswith(":use"):
            name = text[4:].strip()
            try:
                predictor.use(name)
                say(f"Now using adapter {name!r}.")
            except UserError as e:
                say(str(e))
            continue
        say(result_line(predictor.predict([text])[0], min_confidence))
    say("Bye.")
    return 0
