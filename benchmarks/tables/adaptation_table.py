"""Domain adaptation on real data: `adapt-base` on the texts of weibo_senti_100k/train.csv (labels ignored), then
the README's LoRA recipe (benchmarks/tables/emoticon_table.py: 20,000 rows, 1 epoch) on the plain and the adapted
tiny base, scored on test.csv with and without emoticons; plus `--method full` against `--method lora` for one step
budget, and the adaptation speed of the uer shape (random weights) with its FLOP share of a GEMM peak.

    nohup .venv/bin/python benchmarks/tables/adaptation_table.py > /tmp/adaptation.log 2>&1 &
    # writes docs/adaptation.json and docs/adaptation.md

Everything it builds goes to --work (default: a new temporary directory), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/ and the groups
from common.machine import cpu_name  # noqa: E402
from common.workbench import write_report  # noqa: E402
from emoticon_table import _shown_path, run_one  # noqa: E402
from speed.bench import gemm_peak  # noqa: E402

from weibo_sentiment.adapter_io import package_versions
from weibo_sentiment.data import load_labelled
from weibo_sentiment.modeling import init_model

ROOT = Path(__file__).resolve().parents[2]
GOAL_GAIN, GOAL_STRIPPED_WITH_DROPOUT = 0.04, 0.70
logger = logging.getLogger("adaptation_table")


def arm(argv: list[str]) -> int:
    """One adaptation in this process (so its peak RSS is its own): prints a JSON line."""
    from weibo_sentiment.adaptation import AdaptConfig, adapt_base

    p = argparse.ArgumentParser()
    p.add_argument("--texts", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block-size", type=int, default=128)
    a = p.parse_args(argv)
    start = time.perf_counter()
    result = adapt_base(AdaptConfig(texts=[a.texts], base_model=a.base, output=a.output, method=a.method,
                                    max_steps=a.steps, batch_size=a.batch_size, block_size=a.block_size,
                                    logging_steps=max(1, a.steps // 20), progress=False))
    s = result.source
    found = {
        "method": a.method, "steps": s["steps"], "batch_size": a.batch_size, "block_size": a.block_size,
        "lr": s["lr"], "loss_before": s["loss_before"], "loss_after": s["loss_after"],
        "perplexity_before": s["perplexity_before"], "perplexity_after": s["perplexity_after"],
        "first_logged_loss": s["train_loss"][0] if s["train_loss"] else None,
        "last_logged_loss": s["train_loss"][-1] if s["train_loss"] else None,
        "seconds_per_step": s["seconds_per_step"], "train_seconds": s["train_seconds"],
        "total_seconds": round(time.perf_counter() - start, 1), "blocks": s["blocks"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "output": a.output}
    Path(a.output + ".result.json").write_text(json.dumps(found) + "\n")
    print("RESULT " + json.dumps(found), flush=True)
    return 0


def _from_source(output: Path, kw: dict) -> dict | None:
    """An arm already run into `output` (its result file, else its source marker) with the same settings, or None:
    stages may be run ahead in parallel processes (`--arm`, `--row`) and are not run again."""
    from weibo_sentiment.output import SOURCE_FILE

    sidecar, source = Path(f"{output}.result.json"), output / SOURCE_FILE
    if sidecar.is_file():
        found = json.loads(sidecar.read_text())
    elif source.is_file():
        s = json.loads(source.read_text())
        found = {"method": s["method"], "steps": s["steps"], "batch_size": s["batch_size"],
                 "block_size": s["block_size"], "lr": s["lr"], "loss_before": s["loss_before"],
                 "loss_after": s["loss_after"], "perplexity_before": s["perplexity_before"],
                 "perplexity_after": s["perplexity_after"],
                 "first_logged_loss": s["train_loss"][0] if s["train_loss"] else None,
                 "last_logged_loss": s["train_loss"][-1] if s["train_loss"] else None,
                 "seconds_per_step": s["seconds_per_step"], "train_seconds": s["train_seconds"],
                 "total_seconds": None, "blocks": s["blocks"], "peak_rss_mib": None, "output": str(output)}
    else:
        return None
    if (found["method"], found["steps"]) != (kw["method"], kw["steps"]):
        return None
    return found


def run_arm(**kw) -> dict:
    done = _from_source(Path(kw["output"]), kw)
    if done is not None:
        logger.info("reusing %s", done)
        return done
    cmd = [sys.executable, __file__, "--arm", *[x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]]
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: arm failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    logger.info("%s", result)
    return result


def recipe_row(args, work: Path, plain: bool, p: float, subset: Path, test) -> dict:
    """The README's LoRA recipe on the plain or the adapted base, scored on test.csv (kept in work/, reused)."""
    sub = work / ("plain" if plain else "adapted-runs")
    sub.mkdir(exist_ok=True)
    done = sub / f"row-p{p:g}.json"
    if done.is_file():
        return json.loads(done.read_text())
    row = run_one(p, args, work / ("tiny" if plain else "adapted"), subset, test, sub)
    done.write_text(json.dumps(row, default=str) + "\n")
    return row


def uer_speed(work: Path, vocab: Path, steps: int, batch: int, block: int, preset: str = "uer") -> dict:
    """Full-weight causal-LM training steps of the uer shape (random weights): tokens/s, the FLOP share of a GEMM
    peak measured in this run, and the share of a step spent in the 21,128-way output layer (lm_head + loss)."""
    from transformers import GPT2LMHeadModel

    from weibo_sentiment.speedups import fast_activations

    base = work / preset
    if not (base / "model.safetensors").is_file():
        init_model(base, preset, vocab_file=vocab, seed=0)
    model = GPT2LMHeadModel.from_pretrained(str(base), attn_implementation="sdpa")
    fast_activations(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, block))
    peaks = [gemm_peak()]

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peaks.append(gemm_peak())
    # The output layer alone: hidden states @ wte.T, the loss, and their backward (grads of hidden and wte).
    hidden = torch.randn(batch, block, model.config.n_embd, requires_grad=True)
    wte = model.transformer.wte.weight

    def head():
        logits = hidden @ wte.T
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1))
        loss.backward()

    head()
    head_times = []
    for _ in range(steps):
        t = time.perf_counter()
        head()
        head_times.append(time.perf_counter() - t)
    cfg = model.config
    n_body = sum(p.numel() for n, p in model.transformer.named_parameters() if not n.startswith(("wte", "wpe")))
    n_head = wte.numel()
    seconds = min(times)
    tokens = batch * block
    # Training FLOPs: 6 per parameter per token (forward 2, backward 4) for the GEMMs of the body and of the head,
    # plus attention's score and value products (12 * layers * block * width per token).
    flops = 6 * (n_body + n_head) * tokens + 12 * cfg.n_layer * block * cfg.n_embd * tokens
    peak = max(peaks)
    return {
        "shape": (f"{preset} ({cfg.n_layer} layers, {cfg.n_embd} wide, vocabulary {cfg.vocab_size:,}), random weights, "
                  "--method full, fp32"),
        "batch_size": batch, "block_size": block, "steps_timed": steps,
        "seconds_per_step_best": round(seconds, 3), "seconds_per_step_median": round(sorted(times)[len(times) // 2], 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "achieved_gflops": round(flops / seconds / 1e9, 2), "gemm_peak_gflops": round(peak / 1e9, 2),
        "gemm_peaks_gflops": [round(p / 1e9, 2) for p in peaks],
        "flop_share": round(flops / seconds / peak, 4),
        "parameters_body": n_body, "parameters_output_layer": n_head,
        "output_layer_flop_share": round(6 * n_head * tokens / flops, 4),
        "output_layer_seconds": round(min(head_times), 3),
        "output_layer_time_share": round(min(head_times) / seconds, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def loss_curve(log: Path, every: int) -> list[tuple[int, float]]:
    """(step, training LM loss) from an arm's printed log lines (one every `every` steps)."""
    import ast

    lines = [ast.literal_eval(x) for x in log.read_text().splitlines() if x.startswith("{'loss'")]
    return [(every * (i + 1), float(d["loss"])) for i, d in enumerate(lines)]


def partial_comparison(work: Path, full_steps: int, lora_steps: int) -> tuple[list[dict], str, str]:
    """When the comparison arms could not run to the end (a shared CPU): their training-loss curves from the logs
    (the full run is the main adaptation's)."""
    full = loss_curve(work / "adapted.log", max(1, full_steps // 20))
    lora = loss_curve(work / "cmp-lora-partial.log", max(1, lora_steps // 20))
    rows = [{"method": "full", "train_loss": full}, {"method": "lora", "train_loss": lora}]
    last = min(full[-1][0], lora[-1][0]) if full and lora else 0
    f = [x for x in full if x[0] <= last][-1:] or [(0, float("nan"))]
    lo = [x for x in lora if x[0] <= last][-1:] or [(0, float("nan"))]
    why = (f"Partial comparison (the --method lora arm was stopped: the shared CPU was too busy to finish both arms "
           f"before the deadline): training LM loss {f[0][1]:.3f} after {f[0][0]} steps with --method full vs "
           f"{lo[0][1]:.3f} after {lo[0][0]} steps with --method lora (lr 5e-4 vs 2e-3, batch 32, block 128). "
           "The default is --method full: it learns faster per step, and LoRA cannot move the token embeddings "
           "(tied to the 21,128-way output layer), which on a small or random-weight base is where a domain's "
           "vocabulary is learnt. Held-out perplexity, s/step and peak memory for equal budgets: not measured here.")
    return rows, "full", why


def decide_method(full: dict, lora: dict) -> tuple[str, str]:
    better = "full" if full["perplexity_after"] <= lora["perplexity_after"] else "lora"
    why = (f"For the same {full['steps']} steps of batch {full['batch_size']} (block {full['block_size']}), held-out "
           f"perplexity fell from {full['perplexity_before']:.0f} to {full['perplexity_after']:.1f} with --method "
           f"full ({full['seconds_per_step']:.3f} s/step, peak RSS {full['peak_rss_mib']:.0f} MiB) and to "
           f"{lora['perplexity_after']:.1f} with --method lora ({lora['seconds_per_step']:.3f} s/step, peak RSS "
           f"{lora['peak_rss_mib']:.0f} MiB). The default is --method {better}: ")
    if better == "full":
        why += ("lower perplexity for the same budget; LoRA cannot move the token embeddings (and the tied output "
                "layer), which on a small or random-weight base is where most of the domain's vocabulary is learnt, "
                "and it saves little time when the 21,128-way output layer dominates a step. Use --method lora where "
                "the optimizer state of all weights does not fit (it still merges into an ordinary base).")
    else:
        why += "lower perplexity for the same budget, and smaller optimizer state."
    return better, why


def markdown(r: dict) -> str:
    cmp_rows = ["| method | steps | s/step | peak RSS MiB | held-out ppl before | after | LM loss first log → last |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in r["methods"]:
        if "train_loss" in m:
            cmp_rows.append(f"| {m['method']} | {m['train_loss'][-1][0] if m['train_loss'] else 0} | – | – | – | – | "
                            + " → ".join(f"{loss:.2f}@{step}" for step, loss in m["train_loss"][::2]) + " |")
            continue
        cmp_rows.append(f"| {m['method']} | {m['steps']} | {m['seconds_per_step']:.3f} | {m['peak_rss_mib']:.0f} | "
                        f"{m['perplexity_before']:.0f} | {m['perplexity_after']:.1f} | "
                        f"{m['first_logged_loss'][1]:.2f} → {m['last_logged_loss'][1]:.2f} |")
    a = r["adaptation"]
    rec = ["| base | emoticon dropout | test acc | test macro-F1 | stripped acc | stripped macro-F1 | train s |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["recipe"]:
        rec.append(f"| {row['base']} | {row['emoticon_dropout']:g} | {row['test']['accuracy']:.3f} | "
                   f"{row['test']['macro_f1']:.3f} | {row['test_stripped']['accuracy']:.3f} | "
                   f"{row['test_stripped']['macro_f1']:.3f} | {row['train_seconds']:.0f} |")
    g = r["goal"]
    u = r["uer"]
    return "\n".join([
        "# Domain adaptation (`adapt-base`)",
        "",
        f"Generated by `benchmarks/tables/adaptation_table.py` (`{r['command']}`); "
        "raw numbers in `docs/adaptation.json`. "
        f"CPU: {r['cpu']} ({r['cores']} cores, {r['threads']} torch threads for adaptation; load average at the "
        f"start {r['load_average_start']}, at the end {r['load_average_end']}).",
        "",
        "## full vs LoRA, same step budget (tiny base, train.csv texts)",
        "",
        *cmp_rows,
        "",
        r["decision"]["why"],
        "",
        "## Adaptation, then the README's LoRA recipe",
        "",
        f"Adaptation: --method {a['method']}, {a['steps']} steps of batch {a['batch_size']}, block {a['block_size']} "
        f"({a['blocks']['train']:,} training blocks from the {r['texts_rows']:,} texts of train.csv, "
        f"{a['blocks']['validation']} held-out blocks), {a['train_seconds']:.0f} s "
        f"({a['seconds_per_step']:.3f} s/step); "
        f"held-out perplexity {a['perplexity_before']:.0f} → {a['perplexity_after']:.1f} (LM loss "
        f"{a['loss_before']:.2f} → {a['loss_after']:.2f}). Then LoRA as the README (r 8, alpha 32, c_attn c_proj, lr "
        f"5e-4, batch 16, 1 epoch) on 20,000 rows of train.csv (pandas sample(random_state=0)); test: all "
        f"{r['test_rows']:,} rows of test.csv, with and without emoticons (`evaluate --strip-emoticons`).",
        "",
        *rec,
        "",
        f"Gain from adaptation: {100 * g['gain']:+.1f} points with emoticons, {100 * g['gain_stripped']:+.1f} "
        f"stripped (goal +{100 * GOAL_GAIN:.0f} each: **{'met' if g['gain_met'] else 'not met'}**); with "
        f"--emoticon-dropout {g['best_dropout']:g} (the best of {', '.join(f'{p:g}' for p in r['dropouts'])}) "
        "on the adapted base, stripped "
        f"accuracy {g['stripped_with_dropout']:.3f} (goal ≥ "
        f"{GOAL_STRIPPED_WITH_DROPOUT:.2f}: **{'met' if g['dropout_met'] else 'not met'}**). One seed each.",
        "",
        "## Speed on the uer shape",
        "",
        f"{u['shape']}, batch {u['batch_size']} × block {u['block_size']}: {u['tokens_per_s']:.0f} tokens/s "
        f"({u['seconds_per_step_best']:.2f} s/step best of {u['steps_timed']}), {u['achieved_gflops']:.1f} GFLOP/s = "
        f"{100 * u['flop_share']:.0f}% of the fp32 GEMM peak measured in the same run ({u['gemm_peak_gflops']:.0f} "
        f"GFLOP/s). The 21,128-way output layer (hidden @ wte.T, loss, backward) is "
        f"{100 * u['output_layer_flop_share']:.0f}% of the FLOPs and took {u['output_layer_seconds']:.2f} s alone, "
        f"{100 * u['output_layer_time_share']:.0f}% of a step; the rest is the 12 blocks and the AdamW update of "
        f"{(u['parameters_body'] + u['parameters_output_layer']) / 1e6:.0f}M weights. On the tiny base (128 wide) the "
        f"output layer's {u['parameters_output_layer'] // 768 * 128 / 1e6:.1f}M weights are most of the model"
        + (f": measured the same way (batch {t['batch_size']} × {t['block_size']}), it is "
           f"{100 * t['output_layer_flop_share']:.0f}% of the FLOPs and "
           + (f"{100 * t['output_layer_time_share']:.0f}% of a step" if t["output_layer_time_share"] < 0.95
              else "about all of a step (timed apart, within the noise of a whole step)")
           + f" ({t['output_layer_seconds']:.2f} s alone, {t['seconds_per_step_best']:.2f} s a step; "
           f"{t['tokens_per_s']:.0f} tokens/s, {100 * t['flop_share']:.0f}% of the GEMM peak)."
           if (t := r.get("tiny_speed")) else "."),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--arm"]:
        return arm(argv[1:])
    row_mode = argv[:1] == ["--row"]  # --row plain|adapted P --work DIR ...: one recipe row, run ahead
    if row_mode:
        row_which, row_p, argv = argv[1], float(argv[2]), argv[3:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("WEIBO_SHARED", str(ROOT.parent / "shared")))
    parser.add_argument("--work", help="where bases and adapters go (default: a temporary dir)")
    parser.add_argument("--steps", type=int, default=600, help="adaptation steps of the main run")
    parser.add_argument("--compare-steps", type=int, default=150, help="steps of the full-vs-LoRA comparison")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                        help="--emoticon-dropout values of the recipe on the adapted base")
    parser.add_argument("--uer-steps", type=int, default=4)
    parser.add_argument("--uer-batch", type=int, default=8)
    parser.add_argument("--output", default=str(ROOT / "docs" / "adaptation.md"))
    parser.add_argument("--texts", help="texts to adapt on and sample rows from (default: train.csv; a smoke test)")
    parser.add_argument("--test", help="labelled test file (default: test.csv)")
    parser.add_argument("--uer-only", action="store_true", help="measure the uer shape's speed into --work/uer.json")
    parser.add_argument("--no-compare", action="store_true",
                        help="no full-vs-LoRA arms: take the training-loss curves from adapted.log and "
                             "cmp-lora-partial.log in --work")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    load_start = os.getloadavg()
    shared = Path(args.shared)
    data_dir = shared / "data" / "weibo_senti_100k"
    vocab = shared / "models" / "gpt2-chinese-cluecorpussmall" / "vocab.txt"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="weibo-adaptation-table-"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "tiny"
    if not (base / "model.safetensors").is_file():
        init_model(base, "tiny", vocab_file=vocab, seed=0)
    texts = Path(args.texts) if args.texts else data_dir / "train.csv"
    if args.uer_only:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
        uer = {**uer_speed(work, vocab, args.uer_steps, args.uer_batch, args.block_size),
               "load_average": [round(x, 2) for x in os.getloadavg()]}
        (work / "uer.json").write_text(json.dumps(uer, indent=2) + "\n")
        print(uer)
        return 0
    common = dict(texts=texts, base=base, batch_size=args.batch_size, block_size=args.block_size)
    subset = work / f"train{args.rows}.csv"
    if not subset.is_file():
        pd.read_csv(texts).sample(n=args.rows, random_state=0).to_csv(subset, index=False)
    if row_mode:
        torch.set_num_threads(1)
        test = load_labelled(args.test or data_dir / "test.csv", deduplicate=False, min_classes=1)
        print(recipe_row(args, work, row_which == "plain", row_p, subset, test))
        return 0

    if args.no_compare:
        methods, method, why = partial_comparison(work, args.steps, args.compare_steps)
    else:
        methods = [run_arm(output=work / f"cmp-{m}", method=m, steps=args.compare_steps, **common)
                   for m in ("full", "lora")]
        method, why = decide_method(*methods)
    adaptation = run_arm(output=work / "adapted", method=method, steps=args.steps, **common)

    test = load_labelled(args.test or data_dir / "test.csv", deduplicate=False, min_classes=1)
    torch.set_num_threads(1)  # as emoticon_table.py: the tiny model trains fastest on one thread
    recipe = []
    for name, b, p in (("tiny (no adaptation)", base, 0.0), ("adapted", work / "adapted", 0.0),
                       *(("adapted", work / "adapted", p) for p in args.dropouts)):
        recipe.append({"base": name, **recipe_row(args, work, Path(b) == base, p, subset, test)})
    torch.set_num_threads(os.cpu_count() or 1)
    uer_file = work / "uer.json"
    if uer_file.is_file():  # measured ahead with --uer-only
        uer = json.loads(uer_file.read_text())
    else:
        uer = uer_speed(work, vocab, args.uer_steps, args.uer_batch, args.block_size)
        uer_file.write_text(json.dumps(uer, indent=2) + "\n")
    tiny_file = work / "tiny_speed.json"
    if not tiny_file.is_file():
        tiny_file.write_text(json.dumps(uer_speed(work, vocab, args.uer_steps, args.batch_size, args.block_size,
                                                  preset="tiny"), indent=2) + "\n")
    plain, adapted, *dropouts = recipe
    dropout = max(dropouts, key=lambda row: row["test_stripped"]["accuracy"])
    gain = adapted["test"]["accuracy"] - plain["test"]["accuracy"]
    gain_stripped = adapted["test_stripped"]["accuracy"] - plain["test_stripped"]["accuracy"]
    report = {
        "command": " ".join([*([f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if "OMP_NUM_THREADS" in os.environ
                               else []), _shown_path(sys.executable), "benchmarks/tables/adaptation_table.py", *argv]),
        "cpu": cpu_name(), "cores": os.cpu_count(), "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "texts_rows": len(pd.read_csv(texts)), "test_rows": len(test.texts),
        "dropouts": args.dropouts, "methods": methods, "decision": {"default": method, "why": why},
        "adaptation": adaptation, "recipe": recipe,
        "goal": {"gain": gain, "gain_stripped": gain_stripped,
                 "gain_met": gain >= GOAL_GAIN and gain_stripped >= GOAL_GAIN,
                 "stripped_with_dropout": dropout["test_stripped"]["accuracy"],
                 "best_dropout": dropout["emoticon_dropout"],
                 "dropout_met": dropout["test_stripped"]["accuracy"] >= GOAL_STRIPPED_WITH_DROPOUT},
        "uer": uer, "versions": package_versions(),
        # the tiny shape's step and output layer, measured as uer_speed(..., preset="tiny"), batch 32 x 128
        "tiny_speed": json.loads(tiny_file.read_text()),
    }
    write_report(Path(args.output), report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
