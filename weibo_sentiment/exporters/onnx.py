"""ONNX export of an adapter merged into its base (fp32), and its int8 quantization.

What an export directory holds, and how it is read back, is `inference.onnx_predictor`'s.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..adapter_io import package_versions
from ..errors import UserError
from ..inference.onnx_predictor import MODEL_FILE, read_export
from ..inference.predictor import AdapterInfo
from ..inference.torch_predictor import Predictor
from ..model_card import export_card, source_run, write_card
from ..modeling import DEFAULT_MODEL_DIR, save_tokenizer
from ..output import atomic_dir, base_inputs, check_output_dir, write_marker

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

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


def write_graph(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, directory: Path, int8: bool,
                fp32_blocks: int | None) -> dict | None:
    """Trace `model` to `directory`'s model file, quantized when `int8`; what stayed fp32 (None for fp32)."""
    _trace(model, tokenizer, directory / MODEL_FILE)
    if not int8:
        return None
    fp32 = directory / f"fp32.{MODEL_FILE}"
    (directory / MODEL_FILE).rename(fp32)
    quantization = quantize_int8(fp32, directory / MODEL_FILE, fp32_blocks)
    fp32.unlink()
    return quantization


def export_meta(info: AdapterInfo, adapter: Path, quantization: dict | None) -> dict:
    """export.json's content for `info`'s adapter (at `adapter`) merged and exported."""
    return {
        "format": "onnx",
        "precision": "fp32" if quantization is None else "int8",
        **({"quantization": quantization} if quantization else {}),
        "adapter": info.name,
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
        quantization = write_graph(model, predictor.tokenizer, tmp, int8, fp32_blocks)
        save_tokenizer(predictor.tokenizer, tmp)  # a plain AutoTokenizer must emit no token_type_ids
        meta = export_meta(info, adapter, quantization)
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

