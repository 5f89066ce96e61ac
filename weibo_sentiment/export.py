"""ONNX export of an adapter merged into its base, and a predictor that runs the export with ONNX Runtime.

An export directory is self-contained: `model.onnx` (fp32, or int8 with dynamic quantization), the
tokenizer files and `export.json` (label names, max length, provenance). It needs neither PEFT nor the
base model directory to predict, and gives the same `Prediction`s as `inference.Predictor`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .adapter_io import package_versions
from .calibration import softmax
from .errors import UserError
from .inference import AdapterInfo, Prediction, Predictor, check_temperature, parse_adapter_specs
from .model_card import export_card, source_run, write_card
from .modeling import DEFAULT_MODEL_DIR, load_tokenizer, save_tokenizer
from .output import EXPORT_FILE, atomic_dir, base_inputs, check_output_dir, write_marker

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
BACKENDS = ("torch", "onnx", "onnx-int8")
OPSET = 17


class _Logits(torch.nn.Module):
    """The classifier as a function of (input_ids, attention_mask) → logits, the graph's only output."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _trace(model: torch.nn.Module, tokenizer, path: Path) -> None:
    # The TorchScript exporter needs no extra package (the dynamo one needs onnxscript) and handles
    # GPT-2 with dynamic batch and sequence axes. Eager attention traces to plain MatMul/Softmax nodes.
    model.set_attn_implementation("eager")
    wrapper = _Logits(model).eval()  # export restores the wrapper's mode on exit; it must be eval
    sample = tokenizer(["微博情感", "今天天气很好，心情也很好"], padding=True, return_tensors="pt")
    dynamic = {"batch": 0, "sequence": 1}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about constant shapes that do not apply here
        torch.onnx.export(
            wrapper, (sample["input_ids"], sample["attention_mask"]), str(path),
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_axes={"input_ids": {v: k for k, v in dynamic.items()},
                          "attention_mask": {v: k for k, v in dynamic.items()},
                          "logits": {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


def quantize_int8(source: Path, target: Path, fp32_blocks: int | None = None) -> dict:
    """Dynamic int8 quantization: int8 weights, activations quantized per batch at run time.

    Some of the graph stays fp32, where rounding costs most and int8 gains least: the token and position
    embeddings (lookups, no arithmetic to speed up), the classifier head (one tiny MatMul), and the first
    `fp32_blocks` transformer blocks (default: a sixth of them, 2 of GPT-2's 12), whose rounding error every
    later block carries forward. On the uer shape this halved the mean probability error of quantizing all
    blocks (0.0110 → 0.0050 on 2,000 Weibo texts) for a third of the int8 throughput. Returns what stayed fp32,
    for export.json.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    blocks = {int(m.group(1)) for n in graph.node if (m := re.search(r"/h\.(\d+)/", n.name))}
    n_blocks = max(blocks) + 1 if blocks else 0
    keep = n_blocks // 6 if fp32_blocks is None else fp32_blocks
    if not 0 <= keep <= n_blocks:
        raise UserError(f"--int8-fp32-blocks {keep}: the model has {n_blocks} blocks")
    kept = [f"/h.{i}/" for i in range(keep)]
    exclude = []
    for n in graph.node:
        if n.op_type == "Gather" and n.name.endswith(("/wte/Gather", "/wpe/Gather")):
            exclude.append(n.name)
        elif n.op_type in ("MatMul", "Gemm") and ("/score/" in n.name or any(k in n.name for k in kept)):
            # ORT rewrites a Gemm into MatMul + Add before quantizing and matches exclusions on the new name
            exclude += [n.name, f"{n.name}_MatMul"] if n.op_type == "Gemm" else [n.name]
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))  # ORT logs a pre-processing hint meant for static quantization
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=exclude)
    finally:
        logging.disable(previous)
    blocks_kept = f"blocks 0-{keep - 1}" if keep else "no blocks"
    return {"fp32_blocks": keep, "blocks": n_blocks, "fp32": ["embeddings", blocks_kept, "classifier head"]}


def export_onnx(
    adapter: str | Path,
    output: str | Path,
    *,
    int8: bool = False,
    fp32_blocks: int | None = None,
    name: str | None = None,
    base_model: str | Path | None = None,
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    allow_other_base: bool = False,
) -> Path:
    """Merge `adapter` into its base and write an ONNX export directory to `output` (atomically).

    With `int8`, the weights are quantized (see `quantize_int8`; `fp32_blocks` blocks stay fp32)."""
    adapter, output = Path(adapter), Path(output)
    inputs = [("the --adapter directory", adapter), *base_inputs(base_model)]
    check_output_dir(output, "export", inputs)  # before loading and merging
    name = name or adapter.resolve().name or "adapter"
    predictor = Predictor.from_adapters({name: adapter}, base_model=base_model, model_dir=model_dir,
                                        device="cpu", allow_other_base=allow_other_base)
    info = predictor.adapters[name]
    model = predictor.model.merge_and_unload().eval()
    inputs.append(("the base model", predictor.base_dir))
    with atomic_dir(output, kind="export", inputs=inputs) as tmp:
        _trace(model, predictor.tokenizer, tmp / MODEL_FILE)
        quantization = None
        if int8:
            fp32 = tmp / f"fp32.{MODEL_FILE}"
            (tmp / MODEL_FILE).rename(fp32)
            quantization = quantize_int8(fp32, tmp / MODEL_FILE, fp32_blocks)
            fp32.unlink()
        save_tokenizer(predictor.tokenizer, tmp)  # a plain AutoTokenizer must emit no token_type_ids
        meta = {
            "format": "onnx",
            "precision": "int8" if int8 else "fp32",
            **({"quantization": quantization} if quantization else {}),
            "adapter": name,
            "adapter_path": str(adapter.resolve()),
            "base_model": info.run.get("base_model"),
            "base_fingerprint": info.run.get("base_fingerprint"),
            "label_names": info.label_names,
            "text_labels": bool(info.run.get("text_labels")),
            "max_length": info.max_length,
            # The graph returns raw logits; OnnxPredictor divides them by this (1 for uncalibrated adapters).
            "temperature": info.temperature,
            **({"calibration": info.run["calibration"]} if "calibration" in info.run else {}),
            "opset": OPSET,
            "inputs": ["input_ids", "attention_mask"],
            "padding_side": "right",
            "versions": package_versions(),
        }
        write_marker(tmp, "export", meta)
        write_card(tmp, export_card(meta, info.run, output))
    logger.info("exported %s (%s, merged into its base) to %s", adapter, "int8" if int8 else "fp32", output)
    return output


def quantize_export(source: str | Path, output: str | Path, fp32_blocks: int | None = None) -> Path:
    """An int8 copy of an fp32 export directory (what `export --int8` writes, without tracing again)."""
    source, output = Path(source), Path(output)
    inputs = [("the source export", source)]
    check_output_dir(output, "export", inputs)
    meta = read_export(source)
    if meta.get("precision") != "fp32":
        raise UserError(f"{source}: holds a {meta.get('precision')} export; quantize an fp32 one")
    with atomic_dir(output, kind="export", inputs=inputs) as tmp:
        for f in source.iterdir():
            if f.name != MODEL_FILE and f.is_file():
                shutil.copy2(f, tmp / f.name)
        quantization = quantize_int8(source / MODEL_FILE, tmp / MODEL_FILE, fp32_blocks)
        meta = {**meta, "precision": "int8", "quantization": quantization}
        write_marker(tmp, "export", meta)
        write_card(tmp, export_card(meta, source_run(meta), output))  # replaces the fp32 card copied above
    return output


def read_export(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such exported model directory")
    for f in (MODEL_FILE, EXPORT_FILE):
        if not (model_dir / f).is_file():
            raise UserError(f"{model_dir}: not a weibo-sentiment export ({f} is missing); "
                            "write one with `weibo-sentiment export`")
    try:
        return json.loads((model_dir / EXPORT_FILE).read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{model_dir / EXPORT_FILE}: not valid JSON ({e})") from None


class OnnxPredictor:
    """An exported model on ONNX Runtime (CPU), with `Predictor`'s prediction interface.

    Texts are sorted by length and padded per batch. One session serves any number of threads.
    """

    def __init__(self, model_dir: str | Path, threads: int | None = None, calibrated: bool = True):
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.calibrated = calibrated  # as Predictor's: False gives softmax(logits), temperature 1
        meta = read_export(self.model_dir)
        check_temperature(meta, self.model_dir / EXPORT_FILE)
        self.precision = meta.get("precision", "fp32")
        self.backend = "onnx-int8" if self.precision == "int8" else "onnx"
        self.tokenizer = load_tokenizer(self.model_dir)
        options = ort.SessionOptions()
        # One thread per physical core (torch's default count); more only contend for the same cores.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.model_dir / MODEL_FILE), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for a corrupt or foreign file
            raise UserError(f"{self.model_dir / MODEL_FILE}: ONNX Runtime cannot load it ({e})") from None
        name = meta.get("adapter") or self.model_dir.name
        self.adapters = {name: AdapterInfo(name=name, path=self.model_dir, run=meta)}
        self.default = name
        self.device = f"cpu (ONNX Runtime, {self.precision})"

    # The one adapter is baked into the export; these keep `Predictor`'s surface for callers.
    def use(self, name: str) -> None:
        self._require(name)

    def _require(self, name: str | None) -> AdapterInfo:
        name = name or self.default
        if name not in self.adapters:
            raise UserError(f"unknown adapter {name!r} (this export holds only {self.default!r})")
        return self.adapters[name]

    def temperature(self, adapter: str | None = None, calibrated: bool | None = None) -> float:
        info = self._require(adapter)
        return info.temperature if (self.calibrated if calibrated is None else calibrated) else 1.0

    def predict_proba(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                      progress: bool = False, calibrated: bool | None = None) -> np.ndarray:
        """Class probabilities, shape (len(texts), number of labels), in input order (calibrated as
        `Predictor.predict_proba`)."""
        logits = self.predict_logits(texts, adapter, batch_size, progress)
        return softmax(logits, self.temperature(adapter, calibrated)).astype(np.float32)

    def predict_logits(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                       progress: bool = False) -> np.ndarray:
        """Raw logits, shape (len(texts), number of labels), in input order."""
        from tqdm.auto import tqdm

        info = self._require(adapter)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"text {i + 1} is empty")
        ids = self.tokenizer(list(texts), truncation=True, max_length=info.max_length,
                             return_attention_mask=False)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), len(info.label_names)), dtype=np.float32)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="predict", unit="batch", disable=not progress, leave=False):
            rows = order[start:start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="np")
            feed = {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
            out[rows] = self.session.run(None, feed)[0].astype(np.float32)
        return out

    def predict(self, texts: Sequence[str], adapter: str | None = None, batch_size: int = 32,
                progress: bool = False, calibrated: bool | None = None) -> list[Prediction]:
        info = self._require(adapter)
        probs = self.predict_proba(texts, adapter, batch_size, progress, calibrated)
        return self._to_predictions(texts, probs, info)

    _to_predictions = Predictor._to_predictions  # the same rows as the torch predictor's

    def predict_routed(self, texts: Sequence[str], adapters: Sequence[str | None], batch_size: int = 32,
                       progress: bool = False, calibrated: bool | None = None) -> list[Prediction]:
        if len(adapters) != len(texts):
            raise UserError(f"{len(texts)} texts but {len(adapters)} adapter names; give one per text")
        for i, name in enumerate(adapters):
            if name and name not in self.adapters:
                raise UserError(f"row {i + 1}: unknown adapter {name!r} "
                                f"(this export holds only {self.default!r})")
        return self.predict(texts, batch_size=batch_size, progress=progress, calibrated=calibrated)


def load_predictor(
    adapters: Sequence[str | Path] | None = None,
    *,
    backend: str = "torch",
    model: str | Path | None = None,
    base_model: str | Path | None = None,
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    device: str | None = None,
    calibrated: bool = True,
    allow_other_base: bool = False,
) -> Predictor | OnnxPredictor:
    """The predictor for a backend: torch over adapters, or ONNX Runtime over an export.

    `model` is an export directory. `backend` onnx/onnx-int8 with an adapter exports it to a temporary
    directory first (seconds to a minute for the full model); `weibo-sentiment export` keeps one for reuse.
    `calibrated=False` gives raw probabilities (temperature 1) instead of calibrated ones.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if model is not None:
        if adapters:
            raise UserError("pass either --model (an exported directory) or --adapter, not both")
        predictor = OnnxPredictor(model, calibrated=calibrated)
        if backend != "torch" and backend != predictor.backend:
            raise UserError(f"{model} holds a {predictor.precision} export, not what --backend {backend} "
                            f"asks for; export it {'with' if backend == 'onnx-int8' else 'without'} --int8")
        return predictor
    adapters = list(adapters or ["best_weibo_sentiment_lora"])
    if backend == "torch":
        return Predictor.from_adapters(adapters, base_model=base_model, model_dir=model_dir, device=device,
                                       calibrated=calibrated, allow_other_base=allow_other_base)
    if len(adapters) != 1:
        raise UserError(f"--backend {backend} runs one adapter merged into its base; pass one --adapter")
    if device not in (None, "cpu"):
        raise UserError(f"--backend {backend} runs on the CPU; drop --device {device}")
    (name, path), = parse_adapter_specs(adapters).items()
    logger.info("exporting %s to ONNX for this run (keep an export with `weibo-sentiment export`)", path)
    with tempfile.TemporaryDirectory(prefix="weibo-sentiment-onnx-") as tmp:
        out = export_onnx(path, Path(tmp) / "export", int8=backend == "onnx-int8", name=name,
                          base_model=base_model, model_dir=model_dir, allow_other_base=allow_other_base)
        return OnnxPredictor(out, calibrated=calibrated)  # the session holds the model in memory; the files may go
