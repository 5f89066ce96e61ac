"""Adapter management beyond one task: combine adapters (PEFT `add_weighted_adapter`), merge one into its base
(`merge_and_unload`) as a standalone Hugging Face model, and describe an adapter directory (`adapters info`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from .adapter_io import SAVE_DTYPES, WEIGHTS_FILE, package_versions, read_run
from .adapter_store import save_adapter
from .errors import UserError
from .inference import Predictor, parse_adapter_specs
from .model_card import merged_card, write_card
from .modeling import DEFAULT_MODEL_DIR, save_tokenizer
from .output import RUN_FILE, atomic_dir, base_inputs, check_output_dir, write_marker

logger = logging.getLogger(__name__)

COMBINE_METHODS = ("linear", "cat", "ties", "dare_ties", "svd")
# Methods that add the adapters' A and B matrices element-wise, so every adapter must have the same rank.
SAME_RANK_METHODS = ("linear", "ties", "dare_ties")


def _specs(adapters: Mapping[str, str | Path] | Sequence[str | Path]) -> dict[str, Path]:
    if isinstance(adapters, Mapping):
        return {name: Path(path) for name, path in adapters.items()}
    return parse_adapter_specs(adapters)


# ---- combine ---------------------------------------------------------------------------------------------
def combine(
    adapters: Mapping[str, str | Path] | Sequence[str | Path],
    output: str | Path,
    *,
    weights: Sequence[float] | None = None,
    method: str = "cat",
    density: float = 0.5,
    svd_rank: int | None = None,
    save_dtype: str = "float32",
    seed: int = 0,
    base_model: str | Path | None = None,
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    allow_other_base: bool = False,
) -> Path:
    """Combine adapters of one task into a new adapter directory.

    The LoRA updates are combined by PEFT's `add_weighted_adapter` (`method`: linear, cat, ties, dare_ties,
    svd); the classifier heads, which PEFT leaves alone, become the weighted sum of the heads with the same
    `weights` (default: 1/N each). Adapters must share the base model and the label names.
    """
    specs = _specs(adapters)
    weights, inputs = _check_combine_arguments(specs, output, weights, method, density, save_dtype, base_model)
    runs, ranks = _check_combinable(specs, method)
    predictor = Predictor.from_adapters(specs, base_model=base_model, model_dir=model_dir, device="cpu",
                                        allow_other_base=allow_other_base)
    combined, options = _add_weighted_adapter(predictor, list(specs), weights, method, density, svd_rank, seed)
    run = _combined_run(predictor, combined, specs, runs, ranks, weights, method=method, options=options, seed=seed)
    # save_adapter writes the combination's model card (README.md) from this run.json.
    out = save_adapter(predictor.model, predictor.tokenizer, run, output, save_dtype, adapter_name=combined,
                       inputs=[*inputs, ("the base model", predictor.base_dir)])
    logger.info("combined %s (%s, weights %s) into %s", ", ".join(specs), method,
                ", ".join(f"{w:g}" for w in weights), out)
    return out


def _check_combine_arguments(specs: dict[str, Path], output: str | Path, weights: Sequence[float] | None,
                             method: str, density: float, save_dtype: str,
                             base_model: str | Path | None) -> tuple[list[float], list[tuple[str, Path]]]:
    """Refuse bad arguments before anything is loaded: (one weight per adapter, the inputs the output must not
    overwrite)."""
    if len(specs) < 2:
        raise UserError("combine needs at least two adapters (--adapter NAME=DIR, repeated)")
    inputs = [*(("the --adapter directory", path) for path in specs.values()), *base_inputs(base_model)]
    check_output_dir(output, "adapter", inputs)  # before loading and combining
    if method not in COMBINE_METHODS:
        raise UserError(f"unknown combination method {method!r} (choose from {', '.join(COMBINE_METHODS)})")
    if save_dtype not in SAVE_DTYPES:
        raise UserError(f"unknown save dtype {save_dtype!r} (choose from {', '.join(SAVE_DTYPES)})")
    if weights is None:
        weights = [1 / len(specs)] * len(specs)
    weights = [float(w) for w in weights]
    if len(weights) != len(specs):
        raise UserError(f"--weights: {len(weights)} weight(s) for {len(specs)} adapters; "
                        "give one per adapter")
    if method in ("ties", "dare_ties") and not 0 < density <= 1:
        raise UserError(f"--density must be in (0, 1], got {density}")
    return weights, inputs


def _check_combinable(specs: dict[str, Path], method: str) -> tuple[dict[str, dict], dict[str, int]]:
    """The adapters' run.json and LoRA ranks, once they are known to share labels and base (and the rank, for the
    methods that need it)."""
    runs = {name: read_run(path) for name, path in specs.items()}
    names = list(specs)
    first = names[0]
    for name in names[1:]:
        if runs[name]["label_names"] != runs[first]["label_names"]:
            mine, theirs = ", ".join(runs[first]["label_names"]), ", ".join(runs[name]["label_names"])
            raise UserError(
                f"cannot combine adapters with different label sets: {first!r} has ({mine}) but {name!r} has "
                f"({theirs}); their classifier heads do not match"
            )
        if runs[name].get("base_fingerprint") != runs[first].get("base_fingerprint"):
            raise UserError(
                f"cannot combine adapters trained on different base models: {first!r} on "
                f"{runs[first].get('base_model')!r}, {name!r} on {runs[name].get('base_model')!r}"
            )
    ranks = {name: _lora_config(path)["r"] for name, path in specs.items()}
    if method in SAME_RANK_METHODS and len(set(ranks.values())) > 1:
        shown = ", ".join(f"{n}: r={r}" for n, r in ranks.items())
        raise UserError(f"--method {method} needs adapters of the same LoRA rank ({shown}); use cat or svd")
    return runs, ranks


def _add_weighted_adapter(predictor: Predictor, names: list[str], weights: list[float], method: str,
                          density: float, svd_rank: int | None, seed: int) -> tuple[str, dict]:
    """Combine the loaded adapters into a new active one in `predictor.model`: (its PEFT key, the options given
    to `add_weighted_adapter`)."""
    model = predictor.model
    wrapper = model.base_model.model.score
    # PEFT holds the adapters under internal keys, never under the user's names (see Predictor.key).
    keys = [predictor.key(name) for name in names]
    combined = predictor.fresh_key()
    heads = [wrapper.modules_to_save[key].weight.detach().clone() for key in keys]
    # PEFT refuses to combine adapters that each save the same module (our `score` head) and would not
    # combine the heads anyway: keep one head (the active one), drop the others, combine the heads ourselves.
    for key in keys[1:]:
        wrapper.delete_adapter(key, new_active_adapters=[keys[0]])

    options: dict = {}
    if method in ("ties", "dare_ties"):
        options["density"] = density
    if method == "svd":
        options.update(svd_rank=svd_rank, svd_full_matrices=False)
    torch.manual_seed(seed)  # dare_ties drops weights at random
    with torch.no_grad():
        model.add_weighted_adapter(keys, weights, combined, combination_type=method, **options)
        if combined not in wrapper.modules_to_save:
            wrapper.update(combined)
        head = sum(w * h for w, h in zip(weights, heads, strict=True))
        wrapper.modules_to_save[combined].weight.copy_(head)
    model.set_adapter(combined)
    return combined, options


def _combined_run(predictor: Predictor, combined: str, specs: dict[str, Path], runs: dict[str, dict],
                  ranks: dict[str, int], weights: list[float], *, method: str, options: dict, seed: int) -> dict:
    """The run.json of the combination: the shared facts of its adapters, its LoRA settings and how it was made."""
    model = predictor.model
    names = list(specs)
    config = model.peft_config[combined]
    lora_params, head_params = _count(model, combined)
    temperature = _combined_temperature([predictor.adapters[n].temperature for n in names], weights)
    base = runs[names[0]]
    return {
        "base_model": base["base_model"],
        "base_model_dir": base.get("base_model_dir"),
        "base_fingerprint": base.get("base_fingerprint"),
        "label_names": list(base["label_names"]),
        "text_labels": bool(base.get("text_labels")),
        "max_length": max(int(r.get("max_length", 128)) for r in runs.values()),
        "lora": {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": sorted(config.target_modules)},
        "trainable_parameters": lora_params + head_params,
        "temperature": temperature,
        "combination": {
            "method": method,
            "adapters": [{"name": n, "path": str(specs[n].resolve()), "weight": w, "r": ranks[n],
                          "best": runs[n].get("best")} for n, w in zip(names, weights, strict=True)],
            **({"density": options["density"]} if "density" in options else {}),
            **({"svd_rank": config.r} if method == "svd" else {}),
            "seed": seed,
            "head": "weighted sum of the adapters' classifier heads with the same weights "
                    "(the label sets are identical)",
            "temperature": "weighted geometric mean of the adapters' temperatures (weights |w| / sum |w|), not "
                           "refitted: combine sees no labelled data; one adapter's or equal ones stay exact",
        },
        "versions": package_versions(),
    }


def _combined_temperature(temperatures: Sequence[float], weights: Sequence[float]) -> float:
    """exp(sum |w_i| log T_i / sum |w_i|): T of a combination with itself, or with weight 0 for all others, is
    exact; 1 (uncalibrated) when every weight is 0."""
    total = sum(abs(w) for w in weights)
    if total == 0:
        return 1.0
    return round(math.exp(sum(abs(w) * math.log(t) for w, t in zip(weights, temperatures, strict=True)) / total), 6)


def _count(model, adapter_name: str) -> tuple[int, int]:
    """Parameters of one adapter: (LoRA matrices, classifier head)."""
    lora = head = 0
    for key, param in model.named_parameters():
        if f".{adapter_name}." not in key and not key.endswith(f".{adapter_name}"):
            continue
        if "lora_" in key:
            lora += param.numel()
        elif "modules_to_save" in key:
            head += param.numel()
    return lora, head


# ---- merge -----------------------------------------------------------------------------------------------
def merge(
    adapter: str | Path,
    output: str | Path,
    *,
    base_model: str | Path | None = None,
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    allow_other_base: bool = False,
) -> Path:
    """Merge an adapter into its base and write a standalone model directory (safetensors, config with
    `id2label`, tokenizer) that plain `transformers` loads without PEFT."""
    adapter, output = Path(adapter), Path(output)
    inputs = [("the --adapter directory", adapter), *base_inputs(base_model)]
    check_output_dir(output, "merged", inputs)  # before loading and merging
    predictor = Predictor.from_adapters({"adapter": adapter}, base_model=base_model, model_dir=model_dir,
                                        device="cpu", allow_other_base=allow_other_base)
    info = predictor.adapters["adapter"]
    model = predictor.model.merge_and_unload()
    # GPT-2's `score` head has no bias, so dividing its weight by the adapter's temperature T divides the logits
    # by T exactly: a plain `transformers` pipeline then gives the calibrated probabilities every other path
    # gives. Recorded (config and MERGE_FILE) so that nothing divides by T a second time.
    temperature = info.temperature
    with torch.no_grad():
        model.score.weight.div_(temperature)
    model.config.weibo_sentiment_temperature = temperature
    model.config.id2label = dict(enumerate(info.label_names))
    model.config.label2id = {name: i for i, name in enumerate(info.label_names)}
    inputs.append(("the base model", predictor.base_dir))
    with atomic_dir(output, kind="merged", inputs=inputs) as tmp:
        model.save_pretrained(str(tmp))
        save_tokenizer(predictor.tokenizer, tmp)  # a plain pipeline's tokenizer must emit no token_type_ids
        provenance = {"adapter": str(adapter.resolve()), "base_model": info.run["base_model"],
                      "base_fingerprint": info.run.get("base_fingerprint"), "label_names": info.label_names,
                      "max_length": info.max_length,
                      "temperature": temperature,
                      "temperature_applied": "score.weight is divided by it: the logits are already calibrated",
                      "versions": package_versions()}
        write_marker(tmp, "merged", provenance)
        folded = getattr(model.config, "weibo_sentiment_temperature", None) is not None  # T already in the head
        write_card(tmp, merged_card(info.run, output, adapter, calibrated_weights=folded))
    logger.info("merged %s into its base; standalone model written to %s", adapter, output)
    return output


# ---- info ------------------------------------------------------------------------------------------------
def _lora_config(path: Path) -> dict:
    try:
        return json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path / 'adapter_config.json'}: cannot read the adapter config ({e})") from None


def info(path: str | Path) -> dict:
    """An adapter directory's base, labels, LoRA settings, parameter counts, file size and best metrics."""
    path = Path(path)
    run = read_run(path)
    config = _lora_config(path)
    weights = path / WEIGHTS_FILE
    lora = head = 0
    dtypes: set[str] = set()
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            tensor = f.get_slice(key)
            n = 1
            for d in tensor.get_shape():
                n *= d
            dtypes.add(tensor.get_dtype())
            if "lora_" in key:
                lora += n
            else:
                head += n
    return {
        "path": str(path),
        "base_model": run.get("base_model"),
        "base_fingerprint": run.get("base_fingerprint"),
        "label_names": list(run["label_names"]),
        "text_labels": bool(run.get("text_labels")),
        "max_length": run.get("max_length"),
        "lora": {"r": config.get("r"), "alpha": config.get("lora_alpha"),
                 "dropout": config.get("lora_dropout"),
                 "target_modules": sorted(config.get("target_modules") or [])},
        "parameters": {"lora": lora, "head": head, "total": lora + head},
        "file_bytes": weights.stat().st_size,
        "weights_dtype": ", ".join(sorted(dtypes)),
        "best": run.get("best"),
        "validation_stripped": run.get("validation_stripped"),
        "temperature": run.get("temperature"),
        "combination": run.get("combination"),
        "run_file": str(path / RUN_FILE),
    }
