"""Model cards: the README.md of every directory this package writes, in the Hugging Face format.

An adapter (`train`, `combine`), a merged model (`merge`) and an ONNX export (`export`, `quantize_export`) each get
one, written with huggingface_hub's `ModelCard.from_template`: the metadata (base model, library, pipeline tag,
language, tags, datasets) is a `ModelCardData`, the body the Jinja template templates/model_card_template.md,
which holds the text; this module formats the facts it fills in. The card states what `run.json` knows: labels,
training data, recipe, per-epoch validation metrics, the emoticon caveat, calibration, intended use, and how to
load the model with the CLI and with plain PEFT / transformers / ONNX Runtime code that gives
`weibo-sentiment predict`'s probabilities. It replaces the empty template PEFT's `save_pretrained` writes.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .modeling import DEFAULT_BASE_MODEL, load_tokenizer, special_token_ids
from .output import RUN_FILE, SOURCE_FILE

CARD_FILE = "README.md"
PICTURES = (".png", ".svg", ".jpg", ".jpeg")
WEIBO_DATASET = "weibo_senti_100k"
# The ids of bert-base-chinese's vocabulary (and of init-model's): [PAD] 0, [CLS] 101, [SEP] 102.
DEFAULT_SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}
EXAMPLES = ["这部电影太好看了，我非常喜欢！", "服务态度差，价格又贵，完全不推荐",
            "今天下雨了，在家看了一下午书，喝着热茶，听着音乐，觉得周末就该这样慢慢过"]

TEMPLATE_FILE = Path(__file__).parent / "templates" / "model_card_template.md"


# ---- facts from run.json -----------------------------------------------------------------------------------
def temperature(run: dict) -> float | None:
    """The fitted temperature in run.json (or export.json), None when the model was never calibrated."""
    t = run.get("temperature")
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def _source(directory: str | None) -> dict:
    if not directory:
        return {}
    try:
        return json.loads(Path(directory, SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def base_reference(run: dict) -> tuple[str, bool]:
    """(what to load the base from, whether it is a hub id): the hub id when the base is the hub model (named so,
    or a local copy downloaded from it), else the local directory recorded in run.json."""
    name = str(run.get("base_model") or "")
    local = run.get("base_model_dir") or (name if Path(name).is_absolute() else None)
    if name and not Path(name).is_absolute() and not Path(name).exists():
        return name, True
    hub = _source(local).get("base_model")
    if hub:
        return str(hub), True
    return str(local or name), False


def _random_base(run: dict) -> bool:
    return "init_model" in _source(run.get("base_model_dir") or run.get("base_model"))


def _datasets(run: dict) -> list[str] | None:
    paths = [str(entry.get("path", "")) for entry in (run.get("data") or {}).values() if isinstance(entry, dict)]
    return [WEIBO_DATASET] if any(WEIBO_DATASET in p.lower().replace("-", "_") for p in paths) else None


def _fmt(x, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else "–" if x is None else str(x)


def _py(value) -> str:
    """A Python literal of a string or a list of strings, in double quotes (JSON's escapes are Python's)."""
    return json.dumps(value, ensure_ascii=False)


# ---- tables and facts --------------------------------------------------------------------------------------
def _data_section(run: dict) -> str:
    combination = run.get("combination")
    data = run.get("data") or {}
    if not data:
        if combination:
            return ("No training of its own: this adapter combines the adapters listed above, each trained on its "
                    "own data (see their cards).")
        return "Not recorded in run.json."
    lines = ["| split | file | sha256 | rows read | rows kept | dropped (blank / duplicate) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for role, entry in data.items():
        lines.append(f"| {role} | `{Path(str(entry.get('path', '?'))).name}` | `{entry.get('sha256', '?')}` | "
                     f"{entry.get('rows_read', '?')} | {entry.get('rows_kept', '?')} | "
                     f"{entry.get('dropped_blank_text', 0)} / {entry.get('dropped_duplicates', 0)} |")
    rows = run.get("rows") or {}
    if rows:
        split = (run.get("training") or {}).get("validation_split")
        how = (f"a stratified {split:.0%} of the training file, seed {(run.get('training') or {}).get('seed')}"
               if "validation" not in data and split else "the validation file")
        lines += ["", f"Rows used: {rows.get('train', '?')} for training, {rows.get('validation', '?')} for "
                      f"validation ({how})."]
    names = _datasets(run)
    if names:
        lines += ["", f"The data is {WEIBO_DATASET} (Weibo posts; label 0 negative, 1 positive) or a part of it."]
    return "\n".join(lines)


def _recipe_section(run: dict) -> str:
    lora = run.get("lora") or {}
    training = run.get("training") or {}
    items = [f"- LoRA: r {lora.get('r')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
             f"target modules {', '.join(f'`{m}`' for m in lora.get('target_modules') or [])}; the classifier head "
             "(`score`) is " + ("the weighted sum of the combined adapters' heads" if run.get("combination")
                                else "trained in full") + " and saved with the adapter"]
    if parent := run.get("parent"):  # train --init-adapter
        items.insert(0, f"- continued from the adapter `{Path(parent['path']).name}` (weights sha256 "
                        f"`{parent['weights_sha256'][:16]}`, base fingerprint `{parent['base_fingerprint']}`, "
                        f"generation {parent.get('generation', 0)}): its weights were the start, on new data mixed "
                        "with a replay sample of old data (the data table)")
    if training:
        epochs = training.get("epochs")
        steps = training.get("max_steps", -1)
        length = f"{steps} steps" if steps and steps > 0 else f"{epochs if epochs is not None else '?'} epochs"
        batch = f"batch size {training.get('batch_size')}"
        effective = training.get("effective_batch_size")
        if effective and effective != training.get("batch_size"):  # several processes or gradient accumulation
            batch += (f" per process × {training.get('world_size', 1)} process(es) × "
                      f"{training.get('gradient_accumulation_steps', 1)} accumulation step(s) = {effective} per "
                      "optimiser step")
        items.append(f"- optimiser: AdamW, learning rate {training.get('lr')}, {batch}, {length}, warm-up "
                     f"{training.get('warmup_ratio')}, linear schedule, weight decay {training.get('weight_decay')}")
        items.append(f"- seed {training.get('seed')}")
    items.append(f"- max length {run.get('max_length', 128)} tokens (longer texts are truncated)")
    if run.get("precision"):
        items.append(f"- precision {run['precision']}")
    items.append(f"- weights saved as {run.get('save_dtype') or training.get('save_dtype') or 'float32'}")
    if run.get("trainable_parameters"):
        total = run.get("total_parameters")
        share = f" of {total:,} ({run['trainable_parameters'] / total:.2%})" if total else ""
        items.append(f"- trainable parameters: {run['trainable_parameters']:,}{share}")
    versions = run.get("versions") or {}
    if versions:
        items.append("- software: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if not training and not run.get("combination"):
        items.append("- training settings: not recorded in run.json")
    if not training and run.get("combination"):
        items.append("- no training of its own (a combination; see above)")
    return "\n".join(items)


def _metrics_section(run: dict) -> str:
    epochs = run.get("epochs") or []
    if not epochs:
        best = run.get("best")
        combination = run.get("combination")
        if combination:
            return ("None measured for the combination itself; measure with "
                    "`weibo-sentiment evaluate --adapter DIR --data FILE`.")
        if best:
            return f"Best: accuracy {_fmt(best.get('accuracy'))}, macro-F1 {_fmt(best.get('macro_f1'))}."
        return "No validation metrics in run.json."
    best = run.get("best") or {}
    lines = ["| epoch | loss | accuracy | macro-F1 | |", "| --- | --- | --- | --- | --- |"]
    for e in epochs:
        mark = "**kept** (best macro-F1)" if e.get("epoch") == best.get("epoch") else ""
        lines.append(f"| {_fmt(e.get('epoch'), 2)} | {_fmt(e.get('loss'))} | {_fmt(e.get('accuracy'))} | "
                     f"{_fmt(e.get('macro_f1'))} | {mark} |")
    rows = (run.get("rows") or {}).get("validation")
    lines += ["", f"On the validation split{f' ({rows} rows)' if rows else ''}, with emoticons, at temperature 1 "
                  "(calibration changes no prediction). The weights kept are those of the best epoch by macro-F1."]
    return "\n".join(lines)


def _calibration_facts(run: dict) -> tuple[str, str]:
    """(where the temperature comes from, its fit's NLL and ECE before → after, or "") for the calibration text."""
    block = run.get("calibration") or {}
    where = (f"fitted on the {block.get('fitted_on')} split ({block.get('rows')} rows)" if block.get("fitted_on")
             else f"set by `combine`: {(run.get('combination') or {})['temperature']}"
             if isinstance((run.get("combination") or {}).get("temperature"), str) else "as recorded in run.json")
    fit = ""
    if "nll_before" in block and "nll_after" in block:
        fit = (f" NLL {_fmt(block['nll_before'])} → {_fmt(block['nll_after'])}, ECE {_fmt(block.get('ece_before'))}"
               f" → {_fmt(block.get('ece_after'))}.")
    return where, fit


def _stripped_scores(run: dict) -> dict[str, str] | None:
    """The validation scores with emoticons stripped, formatted; None when run.json has none."""
    stripped = run.get("validation_stripped")
    if isinstance(stripped, dict) and stripped.get("accuracy") is not None:
        return {"accuracy": _fmt(stripped.get("accuracy")), "macro_f1": _fmt(stripped.get("macro_f1"))}
    return None


def _combination(run: dict) -> str:
    """The table of a combination's adapters (run.json's `combination`), "" for an adapter trained alone."""
    combination = run.get("combination")
    if not combination:
        return ""
    lines = [f"Combined with PEFT's `add_weighted_adapter` (method `{combination.get('method')}`"
             + (f", density {combination['density']}" if "density" in combination else "")
             + (f", SVD rank {combination['svd_rank']}" if "svd_rank" in combination else "")
             + f", seed {combination.get('seed')}) from:", "",
             "| adapter | weight | LoRA r | its best validation macro-F1 | path |", "| --- | --- | --- | --- | --- |"]
    for a in combination.get("adapters") or []:
        best = (a.get("best") or {}).get("macro_f1")
        lines.append(f"| {a.get('name')} | {a.get('weight'):g} | {a.get('r')} | {_fmt(best)} | `{a.get('path')}` |")
    lines += ["", f"Classifier head: {combination.get('head')}."]
    return "\n".join(lines)


def _saved_special_ids(directory: str | Path) -> dict[str, int]:
    """pad/bos/eos ids as `load_classifier` sets them, from the tokenizer saved in `directory`."""
    try:
        return special_token_ids(load_tokenizer(directory))
    except (OSError, ValueError):
        return dict(DEFAULT_SPECIAL_IDS)


def _pictures(directory: str | Path | None) -> list[str]:
    if directory is None or not Path(directory).is_dir():
        return []
    return sorted(p.name for p in Path(directory).iterdir() if p.suffix.lower() in PICTURES and p.is_file())


# ---- cards -------------------------------------------------------------------------------------------------
def _card_data(run: dict, library: str, tags: list[str], license: str | None = None) -> ModelCardData:
    base, _ = base_reference(run)
    return ModelCardData(
        base_model=base or DEFAULT_BASE_MODEL,
        library_name=library,
        pipeline_tag="text-classification",
        language="zh",
        license=license or run.get("license"),  # None (unknown) is left out of the metadata
        datasets=_datasets(run),
        metrics=["accuracy", "f1"],
        tags=["weibo-sentiment", "sentiment-analysis", "text-classification", "gpt2", "lora", *tags],
    )


def _render(card_data: ModelCardData, run: dict, kind: str, path: Path, calibrated_weights: bool = False,
            **facts) -> ModelCard:
    """The card of `kind` (adapter, merged, export) from templates/model_card_template.md: the facts of `run`
    shared by every kind, and the kind's own `facts`."""
    base, hub = base_reference(run)
    t = temperature(run)
    labels = list(run.get("label_names") or [])
    source, fit = _calibration_facts(run)
    # Python literals for the loading code (JSON's escapes are Python's, and Jinja's tojson would HTML-escape).
    code = {"path": _py(str(path)), "base": _py(base), "labels": _py(labels), "texts": _py(EXAMPLES)}
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE_FILE), kind=kind, name=path.name, base=base, hub_base=hub,
        label_names=labels, max_length=run.get("max_length", 128), combination=_combination(run),
        data=_data_section(run), recipe=_recipe_section(run), metrics=_metrics_section(run),
        stripped=_stripped_scores(run), temperature=t, calibration_source=source, calibration_fit=fit,
        calibration_warning=(run.get("calibration") or {}).get("warning"),
        calibrated_weights=calibrated_weights, random_base=_random_base(run), cli_path=shlex.quote(str(path)),
        code=code, divide_by=None if t is None or t == 1 or calibrated_weights else t, **facts,
    )


def adapter_card(run: dict, path: str | Path, directory: str | Path | None = None) -> ModelCard:
    """The card of an adapter directory (train, combine) from its run.json; `path` is where the directory will
    live (named in the loading code), `directory` where it is now (pictures in it are shown)."""
    path = Path(path).resolve()
    special = ", ".join(f"{k}={v}" for k, v in _saved_special_ids(directory or path).items())
    return _render(_card_data(run, "peft", ["peft"]), run, "adapter", path, special_ids=special,
                   pictures=_pictures(directory))


def merged_card(run: dict, path: str | Path, adapter: str | Path | None = None,
                calibrated_weights: bool = False) -> ModelCard:
    """The card of a merged model (merge): the adapter's run.json facts, loading with `pipeline()`.
    `calibrated_weights`: the temperature is already folded into the merged head."""
    return _render(_card_data(run, "transformers", ["merged", "gpt2"]), run, "merged", Path(path).resolve(),
                   calibrated_weights, adapter=Path(adapter).resolve() if adapter else "?")


def export_card(meta: dict, run: dict | None, path: str | Path) -> ModelCard:
    """The card of an ONNX export (export, quantize_export) from its export.json and, when still readable, the
    adapter's run.json (training data, recipe, metrics); without it those sections say where to look."""
    facts = dict(run or {})
    for key in ("base_model", "label_names", "max_length", "base_fingerprint"):
        if meta.get(key) is not None:
            facts.setdefault(key, meta[key])
    if "temperature" in meta:
        facts["temperature"] = meta["temperature"]
    precision = meta.get("precision", "fp32")
    tags = ["onnx", "merged", *(["int8", "quantized"] if precision == "int8" else [])]
    return _render(_card_data(facts, "onnx", tags), facts, "export", Path(path).resolve(), precision=precision,
                   adapter=meta.get("adapter_path", "?"), opset=meta.get("opset"), run_readable=run is not None,
                   fp32_blocks=(meta.get("quantization") or {}).get("fp32") or [])


def source_run(meta: dict) -> dict | None:
    """The run.json of the adapter an export was made from, if it is still there and still that adapter."""
    try:
        run = json.loads(Path(str(meta.get("adapter_path")), RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    same = (run.get("label_names") == meta.get("label_names")
            and run.get("base_fingerprint") == meta.get("base_fingerprint"))
    return run if same and isinstance(run, dict) else None


def write_card(directory: str | Path, card: ModelCard) -> Path:
    """Write `card` as `directory`/README.md (replacing PEFT's template card)."""
    target = Path(directory) / CARD_FILE
    card.save(target)
    return target
