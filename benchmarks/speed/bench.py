"""Benchmark: our training and CPU inference against the original recipe, in one run, on real Weibo text.

The model is `init-model --preset uer` (the exact shape of uer/gpt2-chinese-cluecorpussmall, random
weights: speed does not depend on the weights), the texts are rows of weibo_senti_100k/train.csv.

Arms (each in its own process, so peak RSS is its own and no arm warms another's caches):
  train_original    the original loop: pad every text to 128, batch 16, AdamW(5e-4), fp32, hand-written
  train_ours        `weibo_sentiment.training.train` itself (Trainer, per-batch padding, length-grouped
                    batches, fused AdamW), timed per step with a TrainerCallback
  train_ours_bf16   the same with `--precision bf16` (CPUs with oneDNN bf16 kernels only; its FLOP share is
                    taken of a bf16 GEMM peak and is not a target figure)
  export            `weibo_sentiment.exporters.onnx`: the adapter trained by train_ours merged and exported to ONNX
                    (fp32), then quantized to int8
  predict_original  the original predict: one text at a time padded to 128, LoRA unmerged, torch.no_grad
  predict_torch     `Predictor` (length-sorted batches, LoRA merged while one adapter is loaded)
  predict_onnx      `OnnxPredictor` on the fp32 export (ONNX Runtime)
  predict_onnx_int8 `OnnxPredictor` on the int8 export
A GEMM peak (fp32 torch.matmul of 2048x2048 matrices; bf16 8192x8192 on a GPU) is measured at the start,
around each training arm and at the end; the highest is the peak that FLOP shares are taken of.

Writes benchmarks/results/summary.json and summary.md. `--quick` shrinks every count for a smoke run
(its results go to a temporary folder unless --out is given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common/ and the groups
from common.machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("WEIBO_SHARED", ROOT.parent / "shared"))
LABELS = ["negative", "positive"]

# The original recipe.
ORIGINAL = {"max_length": 128, "batch_size": 16, "lr": 5e-4, "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.1,
            "target_modules": ["c_attn", "c_proj"], "precision": "fp32"}
TARGETS = {"train_speedup": (">=", 2.5), "train_flop_share": (">=", 0.6), "predict_speedup": (">=", 6.0),
           "latency_p50_ms": ("<=", 45.0), "int8_label_agreement": (">=", 0.995)}
# Our timed steps start at step 3 of 3,200 rows: the length-grouped sampler sorts mega-batches of 800 rows
# (as on the full data) and puts the longest batches first, so steps 3-52 (the rest of the first mega-batch and
# the two longest batches of the second) have the length mix of the whole data.
FULL = {"train_rows": 3200, "validation_rows": 64, "original_warmup_steps": 1, "original_steps": 8,
        "ours_warmup_steps": 2, "ours_steps": 50, "predict_texts": 2000, "original_predict_texts": 100,
        "latency_runs": 50, "latency_tokens": 64, "batch_size": 32}
QUICK = {"train_rows": 64, "validation_rows": 16, "original_warmup_steps": 1, "original_steps": 2,
         "ours_warmup_steps": 1, "ours_steps": 3, "predict_texts": 64, "original_predict_texts": 8, "latency_runs": 5,
         "latency_tokens": 64, "batch_size": 32}
# benchmarks/speed/gpu.sh: a full Weibo epoch (80,000 rows) with our training; the rest as on the CPU.
GPU = {"train_rows": 80000, "validation_rows": 2000, "original_warmup_steps": 5, "original_steps": 100,
       "ours_warmup_steps": 20, "ours_steps": None, "predict_texts": 2000, "original_predict_texts": 300,
       "latency_runs": 100, "latency_tokens": 64, "batch_size": 256}


# ---- measurements shared by the arms ---------------------------------------------------------------------
def gemm_peak(device: str = "cpu", reps: int = 6, rounds: int = 3, bf16: bool = False) -> float:
    """The best matmul rate (FLOP/s) of `rounds` timed rounds, after a warm-up: fp32 2048x2048 on the CPU
    (bf16 with `bf16`, for the CPU bf16 training arm), bf16 8192x8192 on a GPU (our training's precision there)."""
    import torch

    n, dtype = (2048, torch.bfloat16 if bf16 else torch.float32) if device == "cpu" else (8192, torch.bfloat16)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=c)
    best = 0.0
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps * (1 if device == "cpu" else 10)):
            torch.matmul(a, b, out=c)
        _sync(device)
        best = max(best, 2 * n**3 * reps * (1 if device == "cpu" else 10) / (time.perf_counter() - start))
    return best


def _sync(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def non_embedding_parameters(base: Path) -> int:
    """Parameters of the GPT-2 body a token passes through (all but the token and position embeddings)."""
    from transformers import GPT2Config

    c = GPT2Config.from_pretrained(str(base))
    d, inner = c.n_embd, c.n_inner or 4 * c.n_embd
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * inner + inner) + (inner * d + d)
    return c.n_layer * block + 2 * d


def percentiles_ms(times: list[float]) -> dict[str, float]:
    import numpy as np

    return {"p50_ms": round(float(np.percentile(times, 50)) * 1000, 2),
            "p95_ms": round(float(np.percentile(times, 95)) * 1000, 2), "runs": len(times)}


def latency(fn, text: str, runs: int) -> dict[str, float]:
    for _ in range(3):
        fn(text)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - start)
    return percentiles_ms(times)


# ---- arms ------------------------------------------------------------------------------------------------
def arm_train_original(work: Path, cfg: dict) -> dict:
    """The original train.py loop, reproduced: fixed 128-token padding, batch 16, AdamW, fp32."""
    import pandas as pd
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from torch.utils.data import DataLoader, Dataset

    from weibo_sentiment.modeling import load_classifier, load_tokenizer

    class WeiboDataset(Dataset):
        def __init__(self, texts, labels, tokenizer, max_length):
            self.texts, self.labels, self.tokenizer, self.max_length = texts, labels, tokenizer, max_length

        def __len__(self):
            return len(self.texts)

        def __getitem__(self, i):
            enc = self.tokenizer(self.texts[i], padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            return {"input_ids": enc["input_ids"].squeeze(0), "attention_mask": enc["attention_mask"].squeeze(0),
                    "labels": torch.tensor(self.labels[i], dtype=torch.long)}

    device = cfg["device"]
    peaks = [gemm_peak(device)]
    torch.manual_seed(42)
    base = work / "base"
    tokenizer = load_tokenizer(base)
    df = pd.read_csv(work / "train.csv")
    model = load_classifier(base, LABELS, tokenizer)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=ORIGINAL["lora_r"],
                                             lora_alpha=ORIGINAL["lora_alpha"], lora_dropout=ORIGINAL["lora_dropout"],
                                             target_modules=ORIGINAL["target_modules"], fan_in_fan_out=True))
    model.to(device)
    loader = DataLoader(WeiboDataset(df.review.tolist(), df.label.tolist(), tokenizer, ORIGINAL["max_length"]),
                        batch_size=ORIGINAL["batch_size"], shuffle=True,
                        generator=torch.Generator().manual_seed(42))
    optimizer = torch.optim.AdamW(model.parameters(), lr=ORIGINAL["lr"])
    model.train()
    warmup, steps = cfg["original_warmup_steps"], cfg["original_steps"]
    samples = real = padded = 0
    start = None
    for step, batch in enumerate(loader):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        optimizer.zero_grad()
        outputs = model(**batch)
        outputs.loss.backward()
        optimizer.step()
        if step >= warmup:
            samples += len(batch["labels"])
            real += int(batch["attention_mask"].sum())
            padded += int(batch["input_ids"].numel())
        if step + 1 == warmup + steps:
            break
    _sync(device)
    seconds = time.perf_counter() - start
    peaks.append(gemm_peak(device))
    return {"steps": steps, "warmup_steps": warmup, "seconds": seconds, "samples": samples, "real_tokens": real,
            "padded_tokens": padded, "peak_rss_mib": peak_rss_mib(), "gemm_peaks": peaks,
            "threads": torch.get_num_threads()}


def arm_train_ours(work: Path, cfg: dict, precision: str = "auto") -> dict:
    """`training.train` itself, on the same rows; a callback notes when each optimizer step ends."""
    import torch
    from transformers import TrainerCallback

    from weibo_sentiment.training import TrainConfig, train

    device = cfg["device"]
    warmup = cfg["ours_warmup_steps"]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin = 0.0
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if len(self.ends) + 1 in (warmup, state.max_steps):  # GPU work is asynchronous: wait at the ends
                _sync(device)
            self.ends.append(time.perf_counter())

    bf16_cpu = precision == "bf16" and device == "cpu"
    peaks = [gemm_peak(device, bf16=bf16_cpu)]
    timer = StepTimer()
    # The recipe's settings (batch 16, lr 5e-4, LoRA r 8 ...) are TrainConfig's defaults. On the CPU a slice
    # of an epoch: warm-up steps, then `ours_steps` timed ones; on a GPU the whole epoch.
    steps = cfg["ours_steps"]
    config = TrainConfig(data=str(work / "train.csv"), validation_data=str(work / "validation.csv"),
                         base_model=str(work / "base"), output=str(work / ("adapter-bf16" if bf16_cpu else "adapter")),
                         epochs=1, max_steps=warmup + steps if steps else -1, logging_steps=10**6, precision=precision)
    result = train(config, callbacks=[timer])
    peaks.append(gemm_peak(device, bf16=bf16_cpu))
    done = len(timer.ends)
    batches = result.batches[:done]  # evaluation batches follow the training ones
    measured = batches[warmup:]
    sizes = [min(config.batch_size, cfg["train_rows"] - i * config.batch_size) for i in range(done)]
    return {"steps": done - warmup, "warmup_steps": warmup, "seconds": timer.ends[-1] - timer.ends[warmup - 1],
            "samples": sum(sizes[warmup:]), "real_tokens": sum(r for r, _ in measured),
            "padded_tokens": sum(p for _, p in measured), "all_steps_seconds": timer.ends[-1] - timer.begin,
            "all_steps_samples": sum(sizes), "peak_rss_mib": peak_rss_mib(), "gemm_peaks": peaks,
            "threads": torch.get_num_threads(), "precision": result.run["precision"],
            "adapter": str(result.output)}


def arm_train_ours_bf16(work: Path, cfg: dict) -> dict:
    """The same on the CPU in bf16 autocast (`--precision bf16`), its FLOP share taken of a bf16 GEMM peak."""
    return arm_train_ours(work, cfg, precision="bf16")


def arm_export(work: Path, cfg: dict) -> dict:
    from weibo_sentiment.exporters.onnx import export_onnx, quantize_export
    from weibo_sentiment.inference.onnx_predictor import MODEL_FILE, read_export

    start = time.perf_counter()
    fp32 = export_onnx(work / "adapter", work / "onnx")
    middle = time.perf_counter()
    int8 = quantize_export(fp32, work / "onnx-int8")
    end = time.perf_counter()
    return {"export_seconds": middle - start, "quantize_seconds": end - middle,
            "fp32_mib": (fp32 / MODEL_FILE).stat().st_size / 2**20,
            "int8_mib": (int8 / MODEL_FILE).stat().st_size / 2**20,
            "int8_kept_fp32": read_export(int8)["quantization"]["fp32"]}


def _texts(work: Path) -> tuple[list[str], str]:
    meta = json.loads((work / "texts.json").read_text(encoding="utf-8"))
    return meta["texts"], meta["latency_text"]


def arm_predict_original(work: Path, cfg: dict) -> dict:
    """The original predict.py: every text alone, padded to 128, PEFT model unmerged."""
    import numpy as np
    import torch
    from peft import PeftModel

    from weibo_sentiment.modeling import load_classifier, load_tokenizer

    texts, latency_text = _texts(work)
    texts = texts[:cfg["original_predict_texts"]]
    tokenizer = load_tokenizer(work / "base")
    device = cfg["device"]
    model = PeftModel.from_pretrained(load_classifier(work / "base", LABELS, tokenizer), str(work / "adapter"))
    model.to(device).eval()

    def predict(text: str) -> tuple[int, float]:
        inputs = tokenizer(text, padding="max_length", truncation=True, max_length=ORIGINAL["max_length"],
                           return_tensors="pt").to(device)
        with torch.no_grad():
            probs = torch.softmax(model(**inputs).logits, dim=-1)[0]
        label = int(probs.argmax())
        return label, float(probs[label])

    predict(texts[0])
    start = time.perf_counter()
    labels = [predict(t)[0] for t in texts]
    seconds = time.perf_counter() - start
    np.save(work / "labels_original.npy", np.array(labels))
    return {"texts": len(texts), "seconds": seconds, "texts_per_s": len(texts) / seconds,
            "latency": latency(predict, latency_text, cfg["latency_runs"]), "threads": torch.get_num_threads()}


def _predict_arm(work: Path, cfg: dict, predictor, name: str) -> dict:
    import numpy as np

    texts, latency_text = _texts(work)
    batch = cfg["batch_size"]
    predictor.predict_proba(texts[:batch], batch_size=batch)  # warm-up: first-call allocations, merging
    start = time.perf_counter()
    probs = predictor.predict_proba(texts, batch_size=batch)
    seconds = time.perf_counter() - start
    np.save(work / f"probs_{name}.npy", probs)
    return {"texts": len(texts), "batch_size": batch, "seconds": seconds, "texts_per_s": len(texts) / seconds,
            "latency": latency(lambda t: predictor.predict([t]), latency_text, cfg["latency_runs"]),
            "peak_rss_mib": peak_rss_mib()}


def arm_predict_torch(work: Path, cfg: dict) -> dict:
    import torch

    from weibo_sentiment.inference import Predictor

    predictor = Predictor.from_adapters([work / "adapter"], device=cfg["device"])
    result = _predict_arm(work, cfg, predictor, "torch")
    # The same predictor with the LoRA weights kept apart (as while several adapters are loaded).
    predictor.merge_single = False
    predictor.use(predictor.default)
    _, latency_text = _texts(work)
    result["latency_unmerged"] = latency(lambda t: predictor.predict([t]), latency_text, cfg["latency_runs"])
    result["threads"] = torch.get_num_threads()
    return result


def arm_predict_onnx(work: Path, cfg: dict) -> dict:
    from weibo_sentiment.inference import OnnxPredictor

    predictor = OnnxPredictor(work / "onnx")
    return {**_predict_arm(work, cfg, predictor, "onnx"),
            "threads": predictor.session.get_session_options().intra_op_num_threads}


def arm_predict_onnx_int8(work: Path, cfg: dict) -> dict:
    from weibo_sentiment.inference import OnnxPredictor

    predictor = OnnxPredictor(work / "onnx-int8")
    return {**_predict_arm(work, cfg, predictor, "onnx_int8"),
            "threads": predictor.session.get_session_options().intra_op_num_threads}


ARMS = {"train_original": arm_train_original, "train_ours": arm_train_ours, "train_ours_bf16": arm_train_ours_bf16,
        "export": arm_export,
        "predict_original": arm_predict_original, "predict_torch": arm_predict_torch,
        "predict_onnx": arm_predict_onnx, "predict_onnx_int8": arm_predict_onnx_int8}


# ---- orchestration ---------------------------------------------------------------------------------------
def prepare(work: Path, cfg: dict, shared: Path) -> dict:
    """The uer-shaped base and the rows: training, validation and prediction texts, all distinct."""
    import pandas as pd

    from weibo_sentiment.modeling import init_model, load_tokenizer

    vocab = shared / "models" / "gpt2-chinese-cluecorpussmall" / "vocab.txt"
    data = shared / "data" / "weibo_senti_100k" / "train.csv"
    for path in (vocab, data):
        if not path.is_file():
            sys.exit(f"error: {path} is missing: the benchmark needs the project's shared data (../shared or "
                     "WEIBO_SHARED)")
    if not (work / "base" / "config.json").is_file():
        init_model(work / "base", "uer", vocab_file=vocab, seed=0)
    df = pd.read_csv(data).drop_duplicates("review").sample(frac=1.0, random_state=0)
    n_train, n_val, n_pred = cfg["train_rows"], cfg["validation_rows"], cfg["predict_texts"]
    df.iloc[:n_train].to_csv(work / "train.csv", index=False)
    df.iloc[n_train:n_train + n_val].to_csv(work / "validation.csv", index=False)
    texts = df.review.iloc[n_train + n_val:n_train + n_val + n_pred].tolist()
    tokenizer = load_tokenizer(work / "base")
    lengths = [len(x) for x in tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    pool = df.review.iloc[n_train + n_val + n_pred:].tolist()
    latency_text = next(t for t in pool if len(tokenizer(t)["input_ids"]) == cfg["latency_tokens"])
    (work / "texts.json").write_text(json.dumps({"texts": texts, "latency_text": latency_text},
                                                ensure_ascii=False), encoding="utf-8")
    train_lengths = [len(x) for x in tokenizer(df.review.iloc[:n_train].tolist(), truncation=True,
                                               max_length=128)["input_ids"]]
    return {"data": str(data), "train_rows": n_train, "validation_rows": n_val,
            "train_mean_tokens": sum(train_lengths) / n_train,
            "predict_texts": n_pred, "predict_mean_tokens": sum(lengths) / n_pred,
            "latency_text": latency_text, "latency_text_tokens": cfg["latency_tokens"]}


def run_arm(name: str, work: Path, cfg: dict) -> dict:
    log = work / f"{name}.log"
    start = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", end=" ", flush=True)
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, __file__, "--arm", name, "--work", str(work),
                               "--config", json.dumps(cfg)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        print("failed")
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        sys.exit(f"error: benchmark arm {name} failed (log: {log})")
    result = json.loads((work / f"{name}.json").read_text())
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return result


def _train_figures(arm: dict, n_params: int, peak: float) -> dict:
    tokens_per_s = arm["real_tokens"] / arm["seconds"]
    flops = 4 * n_params * tokens_per_s
    return {
        "samples_per_s": round(arm["samples"] / arm["seconds"], 3),
        "real_tokens_per_s": round(tokens_per_s, 1),
        "processed_tokens_per_s": round(arm["padded_tokens"] / arm["seconds"], 1),
        "padding_share": round(1 - arm["real_tokens"] / arm["padded_tokens"], 4),
        "achieved_gflops": round(flops / 1e9, 2),
        "flop_share": round(flops / peak, 4),
        "flop_share_processed_tokens": round(4 * n_params * arm["padded_tokens"] / arm["seconds"] / peak, 4),
        "peak_rss_mib": round(arm["peak_rss_mib"], 1),
        "steps_timed": arm["steps"], "warmup_steps": arm["warmup_steps"], "samples_timed": arm["samples"],
        "seconds": round(arm["seconds"], 2), "threads": arm["threads"],
    }


def _predict_figures(arm: dict) -> dict:
    out = {"texts_per_s": round(arm["texts_per_s"], 2), "texts": arm["texts"], "seconds": round(arm["seconds"], 2),
           "latency_p50_ms": arm["latency"]["p50_ms"], "latency_p95_ms": arm["latency"]["p95_ms"],
           "latency_runs": arm["latency"]["runs"], "threads": arm["threads"]}
    if "batch_size" in arm:
        out["batch_size"] = arm["batch_size"]
    if "peak_rss_mib" in arm:
        out["peak_rss_mib"] = round(arm["peak_rss_mib"], 1)
    return out


def summarize(arms: dict, setup: dict, cfg: dict, peaks: list[float], n_params: int, work: Path,
              elapsed: float, load: list) -> dict:
    import numpy as np

    peaks = peaks + arms["train_original"]["gemm_peaks"] + arms["train_ours"]["gemm_peaks"]
    peak = max(peaks)
    original = _train_figures(arms["train_original"], n_params, peak)
    ours = _train_figures(arms["train_ours"], n_params, peak)
    a = arms["train_ours"]
    ours["all_steps"] = {"samples": a["all_steps_samples"], "seconds": round(a["all_steps_seconds"], 2),
                         "samples_per_s": round(a["all_steps_samples"] / a["all_steps_seconds"], 3)}
    training = {"original": original, "ours": ours}
    if "train_ours_bf16" in arms:  # not a target figure: its share is of the bf16 peak, not of the fp32 one
        b = arms["train_ours_bf16"]
        bf16_peak = max(b["gemm_peaks"])
        rate = b["samples"] / b["seconds"]
        training["ours_bf16"] = {**_train_figures(b, n_params, bf16_peak),
                                 "gemm_peak_gflops": round(bf16_peak / 1e9, 1),
                                 "speedup_vs_original": round(rate / original["samples_per_s"], 3),
                                 "speedup_vs_ours_fp32": round(rate / ours["samples_per_s"], 3)}
    reference = np.load(work / "probs_torch.npy")
    backends = {"torch": _predict_figures(arms["predict_torch"])}
    backends["torch"]["latency_unmerged_p50_ms"] = arms["predict_torch"]["latency_unmerged"]["p50_ms"]
    for name, arm in (("onnx", "predict_onnx"), ("onnx-int8", "predict_onnx_int8")):
        if arm not in arms:
            continue
        backends[name] = _predict_figures(arms[arm])
        probs = np.load(work / f"probs_{arm.removeprefix('predict_')}.npy")
        agree = probs.argmax(1) == reference.argmax(1)
        # How close to a tie torch's own answer was where the labels differ: the random-weight base leaves
        # many texts near p = 0.5, where any rounding (int8 above all) can tip the label.
        margin = np.abs(reference - 1 / reference.shape[1]).max(1)
        backends[name].update({
            "label_agreement_vs_torch": round(float(agree.mean()), 5),
            "disagreements": int((~agree).sum()),
            "largest_torch_margin_among_disagreements": round(float(margin[~agree].max()), 5) if (~agree).any()
            else None,
            "texts_with_torch_margin_below_0.02": int((margin < 0.02).sum()),
            "label_agreement_where_torch_margin_at_least_0.02": round(float(agree[margin >= 0.02].mean()), 5),
            "mean_abs_prob_diff_vs_torch": float(np.abs(probs - reference).mean()),
            "max_abs_prob_diff_vs_torch": float(np.abs(probs - reference).max()),
        })
    original_predict = _predict_figures(arms["predict_original"])
    labels_original = np.load(work / "labels_original.npy")
    original_predict["label_agreement_vs_torch"] = round(
        float((labels_original == reference.argmax(1)[:len(labels_original)]).mean()), 5)
    fastest = max(backends, key=lambda b: backends[b]["texts_per_s"])
    quickest = min(backends, key=lambda b: backends[b]["latency_p50_ms"])
    figures = {
        "train_speedup": round(ours["samples_per_s"] / original["samples_per_s"], 3),
        "train_flop_share": ours["flop_share"],
        "predict_speedup": round(backends[fastest]["texts_per_s"] / original_predict["texts_per_s"], 3),
        "latency_p50_ms": backends[quickest]["latency_p50_ms"],
        "int8_label_agreement": backends["onnx-int8"]["label_agreement_vs_torch"] if "onnx-int8" in backends
        else None,
    }
    checks = {k: {"value": v, "target": f"{TARGETS[k][0]} {TARGETS[k][1]}",
                  "met": v is not None and (v >= TARGETS[k][1] if TARGETS[k][0] == ">=" else v <= TARGETS[k][1])}
              for k, v in figures.items()}
    import torch

    return {
        **figures,
        "targets_met": all(c["met"] for c in checks.values()),
        "checks": checks,
        "fastest_backend": fastest,
        "lowest_latency_backend": quickest,
        "gemm_peak_gflops": round(peak / 1e9, 1),
        "gemm_peaks_gflops": [round(p / 1e9, 1) for p in peaks],
        "non_embedding_parameters": n_params,
        "flops_per_real_token": f"4 x {n_params} (LoRA: forward 2N, backward activations only 2N)",
        "training": training,
        "inference": {"original": original_predict, **backends},
        "export": {k: round(v, 1) if isinstance(v, float) else v for k, v in arms["export"].items()} if "export" in arms
        else None,
        "settings": {**cfg, "original_recipe": ORIGINAL, "model": "init-model --preset uer (random weights)",
                     **setup},
        "machine": {"device": cfg["device"], "gpu": torch.cuda.get_device_name() if cfg["device"] != "cpu" else None,
                    "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_start_end": load, "python": platform.python_version(),
                    "versions": _versions()},
        "wall_seconds": round(elapsed, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "onnxruntime", "onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def markdown(s: dict) -> str:
    t, i = s["training"], s["inference"]
    lines = [
        "# Benchmark: ours vs the original recipe",
        "",
        f"{s['date']}, {s['machine']['gpu'] or s['machine']['cpu']}, {s['machine']['cores']} CPU cores, "
        f"torch threads {s['machine']['torch_threads']}; load average at start/end "
        f"{s['machine']['load_average_start_end']}; wall time {s['wall_seconds']:.0f} s. Model: "
        f"uer/gpt2-chinese-cluecorpussmall shape (random weights), {s['non_embedding_parameters'] / 1e6:.2f}M "
        f"non-embedding parameters; LoRA r 8 on c_attn, c_proj. GEMM peak {s['gemm_peak_gflops']} GFLOP/s "
        + ("(best fp32 2048x2048 matmul in this run)." if s["machine"]["device"] == "cpu" else
           "(best bf16 8192x8192 matmul in this run; our training runs in bf16, the original in fp32)."),
        "",
        "| figure | value | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for k, c in s["checks"].items():
        lines.append(f"| {k} | {c['value']} | {c['target']} | {'yes' if c['met'] else '**no**'} |")
    lines += [
        "",
        "## Training (batch 16, AdamW 5e-4, fp32, real Weibo rows)",
        "",
        "| arm | samples/s | real tokens/s | padding share | GFLOP/s (real tokens) | share of GEMM peak | "
        "peak RSS MiB | steps timed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [("original", "original (pad to 128, hand-written loop)"),
            ("ours", "ours (`training.train`: per-batch padding, length groups)")]
    if "ours_bf16" in t:
        peak = t["ours_bf16"]["gemm_peak_gflops"]
        rows.append(("ours_bf16", f"ours, `--precision bf16` (share of the bf16 GEMM peak, {peak} GFLOP/s)"))
    for name, label in rows:
        a = t[name]
        lines.append(f"| {label} | {a['samples_per_s']} | {a['real_tokens_per_s']} | {a['padding_share']:.1%} | "
                     f"{a['achieved_gflops']} | {a['flop_share']:.1%} | {a['peak_rss_mib']:.0f} | "
                     f"{a['steps_timed']} |")
    lines += [
        "",
        f"## Inference ({i['torch']['texts']} texts; latency: one {s['settings']['latency_text_tokens']}-token "
        "text, end to end)",
        "",
        "| backend | texts/s | speedup vs original | p50 ms | p95 ms | label agreement vs torch fp32 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base = i["original"]["texts_per_s"]
    rows = [("original (one text at a time, padded to 128, unmerged)", i["original"])]
    rows += [(f"{b} (batch {i[b]['batch_size']}, length-sorted)", i[b]) for b in ("torch", "onnx", "onnx-int8")
             if b in i]
    for label, a in rows:
        agree = a.get("label_agreement_vs_torch", "")
        lines.append(f"| {label} | {a['texts_per_s']} | {a['texts_per_s'] / base:.1f}x | {a['latency_p50_ms']} | "
                     f"{a['latency_p95_ms']} | {agree} |")
    lines += ["", f"Original predict timed on {i['original']['texts']} of the texts (every text costs the same "
                  "128 tokens). torch single-text p50 with the LoRA unmerged: "
                  f"{i['torch']['latency_unmerged_p50_ms']} ms. Export: {s['export']}."]
    if "onnx-int8" in i and i["onnx-int8"]["disagreements"]:
        q = i["onnx-int8"]
        lines.append(f"int8 vs torch fp32: {q['disagreements']} of {q['texts']} labels differ, all where torch's "
                     f"probability is within {q['largest_torch_margin_among_disagreements']} of a tie "
                     f"({q['texts_with_torch_margin_below_0.02']} texts are within 0.02 of one on this random-weight "
                     f"base); agreement on the rest {q['label_agreement_where_torch_margin_at_least_0.02']}; mean "
                     f"|probability difference| {q['mean_abs_prob_diff_vs_torch']:.4f}.")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run of every arm")
    parser.add_argument("--gpu", action="store_true",
                        help="train and predict with torch on CUDA (a full epoch of 80,000 rows); see gpu.sh")
    parser.add_argument("--work", help="working folder (default: a temporary one); kept when given")
    parser.add_argument("--out", help="results folder (default: benchmarks/results; a temporary one with --quick)")
    parser.add_argument("--shared", default=str(SHARED), help="the project's shared data (default: ../shared)")
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.arm:  # one arm, in this process; the orchestrator reads its JSON
        work = Path(args.work)
        result = ARMS[args.arm](work, json.loads(args.config))
        (work / f"{args.arm}.json").write_text(json.dumps(result, indent=2))
        return 0

    import logging

    logging.basicConfig(level=logging.WARNING)
    cfg = dict(QUICK if args.quick else GPU if args.gpu else FULL)
    cfg["device"] = "cuda" if args.gpu else "cpu"
    names = list(ARMS)
    import torch

    if args.gpu or not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # bf16 arm: CPUs with bf16 kernels only
        names.remove("train_ours_bf16")
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: --gpu: torch sees no CUDA device")
        try:
            import onnxruntime  # noqa: F401  (the ONNX arms run on the CPU cores beside the GPU)
        except ImportError:
            print("onnxruntime is not installed: skipping the ONNX arms", flush=True)
            names = [n for n in names if n not in ("export", "predict_onnx", "predict_onnx_int8")]
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else RESULTS)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="weibo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load = [list(os.getloadavg())]
    try:
        print(f"work folder {work}; preparing the uer-shaped base and the data", flush=True)
        setup = prepare(work, cfg, Path(args.shared))
        peaks = [gemm_peak(cfg["device"])]
        arms = {name: run_arm(name, work, cfg) for name in names}
        peaks.append(gemm_peak(cfg["device"]))
        load.append(list(os.getloadavg()))
        summary = summarize(arms, setup, cfg, peaks, non_embedding_parameters(work / "base"), work,
                            time.perf_counter() - started, [[round(x, 2) for x in la] for la in load])
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n"),
                       ("summary.md", markdown(summary))):
        tmp = out / f"{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
    print(markdown(summary))
    print(f"written to {out / 'summary.json'} and {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
