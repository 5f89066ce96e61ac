"""`weibo-sentiment` command line: a thin layer over the library API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .errors import UserError
from .report_commands import add_domain_option, add_parsers, apply_domain_option, check_domain_option

logger = logging.getLogger("weibo_sentiment")

PROMPT = "Please enter Weibo content: "
BANNER = "============= Weibo Sentiment Analysis (LoRA version) ============="


def _quiet_libraries() -> None:
    # Our own log lines say what happens; transformers' load reports and per-shard bars are noise here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers|peft")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ---- argument groups shared by several commands ------------------------------------------------------
def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", default="review", help="column holding the text (default: review)")
    p.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    p.add_argument("--encoding", default="utf-8", help="file encoding (default: utf-8, with or without BOM)")


def _base_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--base-model", default=default,
                   help="hub id or local model directory" + (f" (default: {default})" if default else
                                                              " (default: the one in the adapter's run.json)"))
    p.add_argument("--model-dir", default="models/gpt2-chinese",
                   help="where a hub model is saved once downloaded (default: models/gpt2-chinese)")
    if default is None:  # --base-model overrides the adapters' own base
        p.add_argument("--allow-other-base", action="store_true",
                       help="load adapters trained on another base than --base-model (their run.json fingerprint "
                            "differs, e.g. the parent of an adapt-base model) anyway, with a warning")


def _adapter_args(p: argparse.ArgumentParser, many: bool) -> None:
    if many:
        p.add_argument("--adapter", action="append", default=None, metavar="[NAME=]DIR",
                       help="adapter directory; repeat for several (default: best_weibo_sentiment_lora)")
        p.add_argument("--use", metavar="NAME", help="adapter to use (default: the first)")
    else:
        p.add_argument("--adapter", default="best_weibo_sentiment_lora", metavar="DIR",
                       help="adapter directory (default: best_weibo_sentiment_lora)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")


def _calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-calibration", action="store_true",
                   help="report raw probabilities, not the ones calibrated by the adapter's fitted temperature")


# ---- commands ------------------------------------------------------------------------------------------
def cmd_init_model(args: argparse.Namespace) -> int:
    from .modeling import init_model

    init_model(args.output, args.preset, vocab_file=args.vocab, vocab_from_data=args.vocab_from_data,
               config_file=args.config, seed=args.seed)
    print(f"Wrote a random-weight {args.preset if not args.config else 'custom'} GPT-2 to {args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    label_names, text_labels = None, False
    if args.label_names:
        if args.label_names == ["auto"]:
            text_labels = True
        else:
            label_names = [n for part in args.label_names for n in part.split(",") if n]
    config = TrainConfig(
        data=args.data, output=args.output, base_model=args.base_model, model_dir=args.model_dir,
        validation_data=args.validation_data, validation_split=args.validation_split,
        text_column=args.text_column, label_column=args.label_column, encoding=args.encoding,
        label_names=label_names, text_labels=text_labels,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.target_modules, lr=args.lr, batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        eval_batch_size=args.eval_batch_size, epochs=args.epochs,
        max_steps=args.max_steps, max_length=args.max_length, warmup_ratio=args.warmup_ratio, seed=args.seed,
        emoticon_dropout=args.emoticon_dropout,
        precision=args.precision, save_dtype=args.save_dtype, checkpoint_dir=args.checkpoint_dir,
        save_steps=args.save_steps, resume=args.resume, restart=args.restart, keep_checkpoints=args.keep_checkpoints,
        report_to=args.report_to,
    )
    result = train(config)
    if not result.main_process:  # torchrun / accelerate launch: rank 0 reports
        return 0
    best = result.run["best"]
    print(f"Best validation: accuracy {best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f} "
          f"(epoch {best['epoch']:g}); padding share {result.run['tokens']['padding_share']:.1%}")
    stripped = result.run["validation_stripped"]
    print(f"With emoticons stripped: accuracy {stripped['accuracy']:.4f}, macro-F1 {stripped['macro_f1']:.4f}")
    print(f"Adapter saved to {result.output}")
    return 0


def cmd_adapt_base(args: argparse.Namespace) -> int:
    from .adaptation import AdaptConfig, adapt_base

    config = AdaptConfig(
        texts=args.texts, output=args.output, base_model=args.base_model, model_dir=args.model_dir,
        text_column=args.text_column, encoding=args.encoding, method=args.method, block_size=args.block_size,
        lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, max_steps=args.max_steps,
        validation_split=args.validation_split, seed=args.seed, precision=args.precision,
        checkpoint_dir=args.checkpoint_dir, save_steps=args.save_steps, resume=args.resume, restart=args.restart,
        keep_checkpoints=args.keep_checkpoints, logging_steps=args.logging_steps,
    )
    result = adapt_base(config)
    if not result.main_process:  # torchrun / accelerate launch: rank 0 reports
        return 0
    s = result.source
    print(f"Held-out perplexity: {s['perplexity_before']:.2f} before, {s['perplexity_after']:.2f} after "
          f"({s['steps']} steps, --method {s['method']})")
    print(f"Adapted base model saved to {result.output}; use it with --base-model {result.output}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .data import load_labelled
    from .evaluation import evaluate, score
    from .inference import Predictor
    from .output import check_output_file, write_json

    check_domain_option(args)
    if args.json:  # before any model work: a refused path should not cost a full evaluation
        check_output_file(args.json, "metrics", inputs=[args.data])
    if args.plot:
        check_output_file(args.plot, "plot", inputs=[args.data])
    predictor = Predictor.from_adapters([args.adapter], base_model=args.base_model, model_dir=args.model_dir,
                                        device=args.device, calibrated=not args.no_calibration,
                                        allow_other_base=args.allow_other_base)
    apply_domain_option(predictor, args)
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
        _evaluation_plot(args, scores)
    return 0


def _evaluation_plot(args: argparse.Namespace, scores) -> None:
    from pathlib import Path

    import numpy as np

    from .plots import evaluation_figure

    raw = None if np.array_equal(scores.probs, scores.raw_probs) else scores.raw_probs  # one curve when equal
    title = f"adapter: {scores.adapter}    data: {Path(args.data).name}" + (
        " (emoticons stripped)" if args.strip_emoticons else "")
    evaluation_figure(args.plot, scores.labels, scores.probs, raw, scores.label_names, title=title)
    print(f"Plot written to {args.plot}")


def format_report(report: dict) -> str:
    names = report["label_names"]
    width = max(10, *(len(n) for n in names))
    lines = [
        f"{report['data']}  n={report['n']}" + ("  (emoticons stripped)" if report.get("strip_emoticons") else ""),
        f"accuracy {report['accuracy']:.4f}   macro-F1 {report['macro_f1']:.4f}",
        f"{'':{width}}  precision  recall     f1  support",
    ]
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


def describe(label_name: str) -> str:
    """`positive` → `Positive sentiment`, as the original printed; other label names stay as they are."""
    if label_name.lower() in ("positive", "negative", "neutral"):
        return f"{label_name.capitalize()} sentiment"
    return label_name


def result_line(pred, min_confidence: float | None = None) -> str:
    line = f"Prediction: {describe(pred.label_name)} (Confidence: {pred.confidence:.4f})"
    return line + " (uncertain)" if _uncertain(pred, min_confidence) else line


def _uncertain(pred, min_confidence: float | None) -> bool:
    return min_confidence is not None and pred.confidence < min_confidence


def _check_min_confidence(value: float | None) -> None:
    if value is not None and not 0 < value < 1:
        raise UserError(f"--min-confidence {value:g}: must be between 0 and 1 (exclusive)")


def cmd_predict(args: argparse.Namespace) -> int:
    from .export import load_predictor

    _check_min_confidence(args.min_confidence)  # before loading the model
    check_domain_option(args)
    if args.engine == "ray":
        return _predict_ray(args)
    streamed = {"--id-column": args.id_column, "--keep-columns": args.keep_columns, "--resume": args.resume}
    if (given := [k for k, v in streamed.items() if v]) and (args.text or not args.input or args.input == "-"):
        raise UserError(f"{', '.join(given)}: only for --input FILE (a file, not stdin or --text)")
    predictor = load_predictor(args.adapter, backend=args.backend, model=args.model,
                               base_model=args.base_model, model_dir=args.model_dir, device=args.device,
                               calibrated=not args.no_calibration, allow_other_base=args.allow_other_base)
    if args.use:
        predictor.use(args.use)
    apply_domain_option(predictor, args)
    if args.text:
        preds = predictor.predict(args.text, batch_size=args.batch_size)
        _report_truncated(predictor, preds)
        for pred in preds:
            print(f"{pred.text}\n{result_line(pred, args.min_confidence)}")
        return 0
    if args.input and str(args.input) != "-":
        return _stream_file(predictor, args)
    if args.input:
        return _predict_file(predictor, args)
    return interactive(predictor, min_confidence=args.min_confidence)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    if args.int8_fp32_blocks is not None and not args.int8:
        raise UserError("--int8-fp32-blocks applies to --int8 exports only")
    out = export_onnx(args.adapter, args.output, int8=args.int8, fp32_blocks=args.int8_fp32_blocks,
                      base_model=args.base_model, model_dir=args.model_dir, allow_other_base=args.allow_other_base)
    print(f"ONNX export ({'int8' if args.int8 else 'fp32'}) written to {out}; "
          f"predict with `weibo-sentiment predict --model {out}`")
    return 0


def _report_truncated(predictor, preds) -> None:
    """Warn how many texts were longer than their adapter's max length, which prediction cuts them to."""
    from .inference import count_truncated

    by_length: dict[int, list[str]] = {}
    for pred in preds:
        by_length.setdefault(predictor.adapters[pred.adapter].max_length, []).append(pred.text)
    for max_length, texts in sorted(by_length.items()):
        if n := count_truncated(predictor.tokenizer, texts, max_length):
            logger.warning("%d text(s) longer than %d tokens were truncated to %d", n, max_length, max_length)


def _predict_ray(args: argparse.Namespace) -> int:
    """`--engine ray`: score --input's shards on Ray into the directory --output (weibo_sentiment.cluster)."""
    from .cluster import score_files

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


def _stream_file(predictor, args: argparse.Namespace) -> int:
    """`--input FILE`: read, predict and write a chunk at a time (weibo_sentiment.streaming)."""
    from .streaming import predict_file

    result = predict_file(predictor, args.input, args.output, text_column=args.text_column, encoding=args.encoding,
                          id_column=args.id_column, keep_columns=args.keep_columns, fmt=args.format,
                          batch_size=args.batch_size, chunk_size=args.chunk_size,
                          min_confidence=args.min_confidence, resume=args.resume,
                          progress=False if args.quiet else None)
    if result.output is not None:
        resumed = f" (resumed after row {result.resumed_from})" if result.resumed_from else ""
        print(f"{result.rows} predictions written to {result.output}{resumed}", file=sys.stderr)
    return 0


def _predict_file(predictor, args: argparse.Namespace) -> int:
    from .data import read_texts
    from .output import write_table
    from .streaming import output_row

    texts, extras = read_texts(args.input, text_column=args.text_column, encoding=args.encoding,
                               extra_columns=("adapter",))
    if "adapter" in extras:  # route each row to the adapter its `adapter` cell names (blank: --use's)
        preds = predictor.predict_routed(texts, extras["adapter"], batch_size=args.batch_size,
                                         progress=sys.stderr.isatty())
        _report_truncated(predictor, preds)
        rows = [{"adapter": p.adapter, **output_row(p, args.min_confidence)} for p in preds]
        columns = list(dict.fromkeys(k for row in rows for k in row))  # adapters may have other label sets
        write_table(({k: row.get(k) for k in columns} for row in rows), args.output, args.format,
                    inputs=[args.input])
    else:
        preds = predictor.predict(texts, batch_size=args.batch_size, progress=sys.stderr.isatty())
        _report_truncated(predictor, preds)
        write_table((output_row(p, args.min_confidence) for p in preds), args.output, args.format,
                    inputs=[args.input])
    if args.output and str(args.output) != "-":
        print(f"{len(preds)} predictions written to {args.output}", file=sys.stderr)
    return 0


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


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    check_domain_option(args)
    return serve(args.adapter, host=args.host, port=args.port, backend=args.backend, model=args.model,
                 use=args.use, base_model=args.base_model, model_dir=args.model_dir, device=args.device,
                 api_key=args.api_key, adapter_root=args.adapter_root,
                 max_texts=args.max_texts, max_chars=args.max_chars, max_body_bytes=args.max_body_bytes,
                 batch_wait_ms=args.batch_wait_ms, batch_size=args.batch_size, allowed_hosts=args.allow_host,
                 threads=args.threads, max_queue=args.max_queue, calibrated=not args.no_calibration,
                 allow_other_base=args.allow_other_base, domain=args.domain)


def cmd_combine(args: argparse.Namespace) -> int:
    from .adapters import combine

    out = combine(args.adapter, args.output, weights=args.weights, method=args.method, density=args.density,
                  svd_rank=args.svd_rank, save_dtype=args.save_dtype, seed=args.seed,
                  base_model=args.base_model, model_dir=args.model_dir, allow_other_base=args.allow_other_base)
    print(f"Combined adapter ({args.method}) saved to {out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .adapters import merge

    out = merge(args.adapter, args.output, base_model=args.base_model, model_dir=args.model_dir,
                allow_other_base=args.allow_other_base)
    print(f"Standalone model (adapter merged into its base) saved to {out}")
    return 0


def cmd_adapters_info(args: argparse.Namespace) -> int:
    import json

    from .adapters import format_info, info

    details = info(args.dir)
    print(json.dumps(details, ensure_ascii=False, indent=2) if args.json else format_info(details))
    return 0


# ---- parser --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weibo-sentiment",
        description="Chinese Weibo sentiment with GPT-2 + LoRA: train, evaluate, predict.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init-model", help="write a GPT-2 base model with random weights (tests, benchmarks, demo)")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument("--preset", choices=["tiny", "uer"], default="tiny",
                   help="tiny: 2 layers, 128 wide; uer: the exact shape of uer/gpt2-chinese-cluecorpussmall")
    p.add_argument("--config", help="a config.json to take the shape from instead of a preset")
    vocab = p.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", help="vocab.txt to use (e.g. the real model's)")
    vocab.add_argument("--vocab-from-data", metavar="CSV",
                       help="build a character vocabulary from a CSV's review column")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init_model)

    p = sub.add_parser("train", help="fine-tune a LoRA adapter")
    p.add_argument("--data", default="dataset/weibo_senti_100k.csv", help="CSV/TSV with label and text columns")
    p.add_argument("--validation-data", help="labelled file for validation (default: split off --validation-split)")
    p.add_argument("--validation-split", type=float, default=0.1, help="share held out for validation (default 0.1)")
    p.add_argument("--output", default="best_weibo_sentiment_lora", help="adapter directory to write")
    _base_args(p, "uer/gpt2-chinese-cluecorpussmall")
    _data_args(p)
    p.add_argument("--label-names", nargs="+", metavar="NAME",
                   help="names of labels 0..N-1 (default for 2 labels: negative positive); "
                        "'auto' when the label column holds text: the sorted distinct values become the labels")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--target-modules", nargs="+", default=["c_attn", "c_proj"])
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=16,
                   help="training texts per step and process (default: 16)")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1, metavar="N",
                   help="add up the gradients of N batches per optimizer step: the effective batch is batch size x "
                        "processes x N (default: 1; with torchrun --nproc_per_node 2, --batch-size 8 keeps 16)")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="batch size of the per-epoch evaluation (default: 64 on the CPU, 256 on a GPU)")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (default: all epochs)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text, longer ones are truncated")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--emoticon-dropout", type=float, default=0.0, metavar="P",
                   help="each time a training text is drawn, remove its emoticons with probability P (what "
                        "evaluate --strip-emoticons removes; a different subset each epoch; default 0)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 (or fp16) on a CUDA GPU, fp32 on the CPU; bf16 also runs on a CPU with bf16 "
                        "kernels (1.36x fp32's samples/s on a 2-core Xeon with AMX)")
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the saved adapter weights")
    p.add_argument("--checkpoint-dir",
                   help="directory of this run's checkpoints, new or empty (default: OUTPUT.checkpoints); only the "
                        "checkpoints it writes there are ever removed")
    p.add_argument("--save-steps", type=int, default=500, metavar="N",
                   help="write a checkpoint every N steps, and after each epoch's evaluation (default: 500)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint (same data and settings only)")
    p.add_argument("--restart", action="store_true",
                   help="discard the checkpoints of an earlier run in the checkpoint dir and start afresh")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints after a successful run")
    p.add_argument("--report-to", nargs="+", default=["none"], choices=["none", "tensorboard", "mlflow"],
                   help="also log the training to TensorBoard (event files in OUTPUT.tensorboard/RUN-TIME/, or "
                        "$TENSORBOARD_LOGGING_DIR; pip install tensorboard) or MLflow ($MLFLOW_TRACKING_URI, "
                        "MLflow's own default otherwise; pip install mlflow) (default: none)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("adapt-base", help="continue the base model's language-model training on unlabelled texts "
                                          "(domain adaptation); writes a new base model directory")
    p.add_argument("--texts", nargs="+", required=True, metavar="FILE",
                   help="CSV/TSV (the --text-column; labels, if any, ignored) or .txt (one text per line)")
    p.add_argument("--output", required=True, help="base model directory to write (usable as --base-model)")
    _base_args(p, "uer/gpt2-chinese-cluecorpussmall")
    p.add_argument("--text-column", default="review", help="column holding the text (default: review)")
    p.add_argument("--encoding", default="utf-8", help="file encoding (default: utf-8, with or without BOM)")
    p.add_argument("--method", default="full", choices=["full", "lora"],
                   help="full: update every weight (default; see docs/adaptation.md); lora: LoRA on c_attn c_proj "
                        "c_fc, merged into the weights at the end")
    p.add_argument("--block-size", type=int, default=128,
                   help="tokens per training block: texts are joined with [SEP] and cut into blocks (default: 128)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 5e-4 full, 2e-3 lora)")
    p.add_argument("--batch-size", type=int, default=32, help="blocks per step (default: 32)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=1, help="passes over the texts (default: 1)")
    length.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps instead")
    p.add_argument("--validation-split", type=float, default=0.01,
                   help="share of the texts held out for the perplexity before and after (default: 0.01)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 (or fp16) on a CUDA GPU, fp32 on the CPU")
    p.add_argument("--checkpoint-dir", help="directory of this run's checkpoints (default: OUTPUT.checkpoints)")
    p.add_argument("--save-steps", type=int, default=500, metavar="N", help="a checkpoint every N steps (default: 500)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint (same texts and settings only)")
    p.add_argument("--restart", action="store_true",
                   help="discard the checkpoints of an earlier run in the checkpoint dir and start afresh")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints after a successful run")
    p.add_argument("--logging-steps", type=int, default=50, help="print the LM loss every N steps (default: 50)")
    p.set_defaults(func=cmd_adapt_base)

    p = sub.add_parser("evaluate", help="accuracy, macro-F1, per-class scores and confusion matrix on a labelled file")
    _adapter_args(p, many=False)
    p.add_argument("--data", required=True, help="labelled CSV/TSV")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--print-json", action="store_true", help="print the metrics as one JSON line too")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the confusion matrix, the reliability diagram before and after calibration "
                        "(15 bins, ECE) and accuracy vs coverage into this PNG")
    p.add_argument("--strip-emoticons", action="store_true",
                   help="remove emoticons before predicting: Weibo ones such as [哈哈] and Unicode emoji (the corpus "
                        "labels come from them)")
    _calibration_args(p)
    add_domain_option(p)
    _base_args(p, None)
    _data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict texts: interactive, --text, or --input FILE")
    _adapter_args(p, many=True)
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
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"],
                   help="torch (default), or ONNX Runtime on the CPU with the adapter merged into its base: "
                        "onnx (fp32) or onnx-int8 (fastest); with --adapter the export is made for this run")
    p.add_argument("--model", metavar="EXPORTED_DIR",
                   help="a directory written by `weibo-sentiment export` (instead of --adapter)")
    _calibration_args(p)
    add_domain_option(p)
    p.add_argument("--min-confidence", type=float, metavar="X",
                   help="mark predictions whose confidence is below X (0 < X < 1) as uncertain: an `uncertain` "
                        "column in files, '(uncertain)' on the console; the label stays the most likely one")
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
    _base_args(p, None)
    _data_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export",
                       help="export an adapter merged into its base for ONNX Runtime (fast CPU inference)")
    p.add_argument("--adapter", default="best_weibo_sentiment_lora", metavar="DIR",
                   help="adapter directory (default: best_weibo_sentiment_lora)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    p.add_argument("--int8", action="store_true",
                   help="quantize the weights to int8 (dynamic quantization): ~3x smaller, faster on the CPU")
    p.add_argument("--int8-fp32-blocks", type=int, metavar="N",
                   help="with --int8: keep the first N transformer blocks in fp32, where rounding errors start "
                        "(default: a sixth of the blocks, 2 of 12); embeddings and the head always stay fp32")
    p.add_argument("--output", required=True,
                   help="directory to write: model.onnx, tokenizer, export.json (label names, max length)")
    _base_args(p, None)
    p.set_defaults(func=cmd_export)

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
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the saved adapter weights")
    _base_args(p, None)
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser("merge", help="merge an adapter into its base: a standalone Hugging Face model")
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter directory")
    p.add_argument("--output", required=True,
                   help="model directory to write (loads in a plain transformers pipeline)")
    _base_args(p, None)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("adapters", help="inspect adapter directories")
    adapters_sub = p.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    q = adapters_sub.add_parser("info", help="an adapter's base, labels, LoRA settings, size, best metrics")
    q.add_argument("dir", help="adapter directory")
    q.add_argument("--json", action="store_true", help="print the details as JSON")
    q.set_defaults(func=cmd_adapters_info)

    add_parsers(sub)  # calibrate, report

    p = sub.add_parser("serve", help="HTTP API and web page for one base with many adapters (micro-batched)")
    _adapter_args(p, many=True)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"],
                   help="torch (default; many adapters, hot swap) or ONNX Runtime on the CPU with one adapter "
                        "merged into its base: onnx (fp32) or onnx-int8")
    p.add_argument("--model", metavar="EXPORTED_DIR",
                   help="serve a directory written by `weibo-sentiment export` (instead of --adapter)")
    p.add_argument("--api-key", default=None,
                   help="require this key on every request (default: $WEIBO_SENTIMENT_API_KEY, else none)")
    p.add_argument("--adapter-root", metavar="DIR",
                   help="let POST/DELETE /v1/adapters load and unload adapters under DIR, and PUT /v1/default "
                        "change the default one (default: off)")
    p.add_argument("--max-texts", type=int, default=256, help="texts per request (default: 256)")
    p.add_argument("--max-chars", type=int, default=2000, help="characters per text (default: 2000)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="request body size (default: enough for --max-texts texts of --max-chars characters)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default: 5)")
    p.add_argument("--max-queue", type=int, default=2048, metavar="TEXTS",
                   help="texts waiting for the model before new requests get 503 with Retry-After (default: "
                        "2048, 8 full requests: ~2.6 s of work for the tiny model on 2 CPU cores, which served "
                        "776 texts/s in `make loadtest`; the uer model on 2 CPU cores predicts ~17 texts/s, 2 "
                        "minutes for 2048: lower it there, with --max-texts, e.g. both 64; at least --max-texts)")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: all cores but one)")
    _calibration_args(p)
    add_domain_option(p)
    p.add_argument("--allowed-hosts", "--allow-host", dest="allow_host", action="extend", nargs="+", default=[],
                   metavar="NAME",
                   help="extra Host header names to answer to (e.g. behind a proxy); every request naming another "
                        "host gets 400. Always accepted: the loopback names and the --host name, and for 0.0.0.0 "
                        "or :: this machine's host name and addresses; '*' accepts any (not advised)")
    _base_args(p, None)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.verbose:
        _quiet_libraries()
    try:
        return args.func(args)
    except UserError as e:
        if not getattr(e, "echo", False):  # an echo: another process of a torchrun job has said it already
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
