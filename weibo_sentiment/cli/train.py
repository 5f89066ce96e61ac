"""`init-model`, `train` and `adapt-base`: the commands that write a base model or an adapter."""

from __future__ import annotations

import argparse

from .options import base_args, data_args, save_dtype_arg

DEFAULT_BASE = "uer/gpt2-chinese-cluecorpussmall"


def add_commands(sub: argparse._SubParsersAction) -> None:
    add_init_model(sub)
    add_train(sub)
    add_adapt_base(sub)


def precision_arg(p: argparse.ArgumentParser, more: str = "") -> None:
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 (or fp16) on a CUDA GPU, fp32 on the CPU" + more)


def checkpoint_args(p: argparse.ArgumentParser, dir_help: str, steps_help: str, inputs: str) -> None:
    """--checkpoint-dir, --save-steps, --resume, --restart, --keep-checkpoints; `inputs` names what a resume needs
    unchanged ("data", "texts")."""
    p.add_argument("--checkpoint-dir", help=dir_help)
    p.add_argument("--save-steps", type=int, default=500, metavar="N", help=steps_help)
    p.add_argument("--resume", action="store_true",
                   help=f"continue from the last complete checkpoint (same {inputs} and settings only)")
    p.add_argument("--restart", action="store_true",
                   help="discard the checkpoints of an earlier run in the checkpoint dir and start afresh")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints after a successful run")


# ---- init-model ----------------------------------------------------------------------------------------
def add_init_model(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run_init_model)


def run_init_model(args: argparse.Namespace) -> int:
    from ..modeling import init_model

    init_model(args.output, args.preset, vocab_file=args.vocab, vocab_from_data=args.vocab_from_data,
               config_file=args.config, seed=args.seed)
    print(f"Wrote a random-weight {args.preset if not args.config else 'custom'} GPT-2 to {args.output}")
    return 0


# ---- train ---------------------------------------------------------------------------------------------
def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a LoRA adapter")
    p.add_argument("--data", default="dataset/weibo_senti_100k.csv", help="CSV/TSV with label and text columns")
    p.add_argument("--validation-data", help="labelled file for validation (default: split off --validation-split)")
    p.add_argument("--validation-split", type=float, default=0.1, help="share held out for validation (default 0.1)")
    p.add_argument("--output", default="best_weibo_sentiment_lora", help="adapter directory to write")
    base_args(p, DEFAULT_BASE)
    p.set_defaults(base_model=None)  # not given: the default, or with --init-adapter the parent's base
    data_args(p)
    p.add_argument("--init-adapter", metavar="DIR",
                   help="continue training this adapter (same base and label names, else refused; its LoRA shape "
                        "and max length are kept): a NEW adapter is written to --output, recording its parent")
    p.add_argument("--replay", metavar="FILE",
                   help="with --init-adapter: labelled data the adapter learned from; a seeded sample of it is mixed "
                        "into --data so that it does not forget what it knew")
    p.add_argument("--replay-ratio", type=float, default=1.0, metavar="R",
                   help="replay rows per --data row (default: 1)")
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
    precision_arg(p, "; bf16 also runs on a CPU with bf16 kernels (1.36x fp32's samples/s on a 2-core Xeon with "
                     "AMX)")
    save_dtype_arg(p)
    checkpoint_args(p, dir_help="directory of this run's checkpoints, new or empty (default: OUTPUT.checkpoints); "
                                "only the checkpoints it writes there are ever removed",
                    steps_help="write a checkpoint every N steps, and after each epoch's evaluation (default: 500)",
                    inputs="data")
    p.add_argument("--report-to", nargs="+", default=["none"], choices=["none", "tensorboard", "mlflow"],
                   help="also log the training to TensorBoard (event files in OUTPUT.tensorboard/RUN-TIME/, or "
                        "$TENSORBOARD_LOGGING_DIR; pip install tensorboard) or MLflow ($MLFLOW_TRACKING_URI, "
                        "MLflow's own default otherwise; pip install mlflow) (default: none)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, train

    label_names, text_labels = None, False
    if args.label_names:
        if args.label_names == ["auto"]:
            text_labels = True
        else:
            label_names = [n for part in args.label_names for n in part.split(",") if n]
    config = TrainConfig(
        data=args.data, output=args.output, model_dir=args.model_dir,
        base_model=args.base_model or (None if args.init_adapter else DEFAULT_BASE),  # None: the parent's
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
        report_to=args.report_to, init_adapter=args.init_adapter, replay=args.replay, replay_ratio=args.replay_ratio,
    )
    result = train(config)
    if not result.main_process:  # torchrun / accelerate launch: rank 0 reports
        return 0
    best = result.run["best"]
    print(f"Best validation: accuracy {best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f} "
          f"(epoch {best['epoch']:g}); padding share {result.run['tokens']['padding_share']:.1%}")
    stripped = result.run["validation_stripped"]
    print(f"With emoticons stripped: accuracy {stripped['accuracy']:.4f}, macro-F1 {stripped['macro_f1']:.4f}")
    if parent := result.run.get("parent"):
        print(f"Continued from {parent['path']} (weights sha256 {parent['weights_sha256'][:16]})")
    print(f"Adapter saved to {result.output}")
    return 0


# ---- adapt-base ----------------------------------------------------------------------------------------
def add_adapt_base(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt-base", help="continue the base model's language-model training on unlabelled texts "
                                          "(domain adaptation); writes a new base model directory")
    p.add_argument("--texts", nargs="+", required=True, metavar="FILE",
                   help="CSV/TSV (the --text-column; labels, if any, ignored) or .txt (one text per line)")
    p.add_argument("--output", required=True, help="base model directory to write (usable as --base-model)")
    base_args(p, DEFAULT_BASE)
    data_args(p, labels=False)
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
    precision_arg(p)
    checkpoint_args(p, dir_help="directory of this run's checkpoints (default: OUTPUT.checkpoints)",
                    steps_help="a checkpoint every N steps (default: 500)", inputs="texts")
    p.add_argument("--logging-steps", type=int, default=50, help="print the LM loss every N steps (default: 50)")
    p.set_defaults(func=run_adapt_base)


def run_adapt_base(args: argparse.Namespace) -> int:
    from ..adaptation import AdaptConfig, adapt_base

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
