"""Model cards: the README.md of every directory this package writes, in the Hugging Face format.

An adapter (`train`, `combine`), a merged model (`merge`) and an ONNX export (`export`, `quantize_export`) each get
one, written with huggingface_hub's `ModelCard.from_template`: the metadata (base model, library, pipeline tag,
language, tags, datasets) is a `ModelCardData`, the body a Jinja template kept here. The card states what
`run.json` knows: labels, training data, recipe, per-epoch validation metrics, the emoticon caveat, calibration,
intended use, and how to load the model with the CLI and with plain PEFT / transformers / ONNX Runtime code that
gives `weibo-sentiment predict`'s probabilities. It replaces the empty template PEFT's `save_pretrained` writes.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .modeling import DEFAULT_BASE_MODEL, _special_ids, load_tokenizer
from .output import RUN_FILE, SOURCE_FILE

CARD_FILE = "README.md"
PICTURES = (".png", ".svg", ".jpg", ".jpeg")
WEIBO_DATASET = "weibo_senti_100k"
# The ids of bert-base-chinese's vocabulary (and of init-model's): [PAD] 0, [CLS] 101, [SEP] 102.
DEFAULT_SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}
EXAMPLES = ["这部电影太好看了，我非常喜欢！", "服务态度差，价格又贵，完全不推荐",
            "今天下雨了，在家看了一下午书，喝着热茶，听着音乐，觉得周末就该这样慢慢过"]

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

{% if notice %}> {{ notice }}

{% endif %}## Labels

| id | label |
| --- | --- |
{% for name in label_names %}| {{ loop.index0 }} | {{ name }} |
{% endfor %}
{% if origin %}## {{ origin_title }}

{{ origin }}

{% endif %}## Training data

{{ data }}

## Training recipe

{{ recipe }}

## Validation metrics

{{ metrics }}

## Emoticons: read this before quoting accuracy

{{ emoticons }}

## Calibration

{{ calibration }}

## Intended use and limits

{{ limits }}

## How to use it

{{ usage }}
{% if pictures %}
## Pictures

{% for picture in pictures %}![{{ picture }}]({{ picture }})
{% endfor %}{% endif %}
## Files

{{ files }}
"""


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


def _code(language: str, text: str) -> str:
    return f"```{language}\n{text.strip()}\n```"


# ---- body sections -----------------------------------------------------------------------------------------
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


def _emoticons_section(run: dict) -> str:
    text = ("weibo_senti_100k's labels were derived from emoticons such as `[哈哈]` and `[泪]`, and every post "
            "contains one: a character TF-IDF + logistic regression scores 97.1% on it, 75.5% once emoticons are "
            "removed. A model trained on such data may read the emoticon rather than the text, so the accuracy "
            "above says little about posts without emoticons.")
    stripped = run.get("validation_stripped")
    if isinstance(stripped, dict) and stripped.get("accuracy") is not None:
        text += (f"\n\nWith emoticons stripped from the validation texts: accuracy {_fmt(stripped.get('accuracy'))}, "
                 f"macro-F1 {_fmt(stripped.get('macro_f1'))}.")
    else:
        text += ("\n\nThe score with emoticons stripped is unknown for this model. Measure both on a labelled file: "
                 "`weibo-sentiment evaluate --adapter DIR --data test.csv` and the same with `--strip-emoticons`.")
    return text


def _calibration_section(run: dict, kind: str, calibrated_weights: bool = False) -> str:
    t = temperature(run)
    if t is None or t == 1:
        return ("Not calibrated (temperature 1): probabilities are the plain softmax of the logits."
                if t is None else "Temperature 1: probabilities are the plain softmax of the logits.")
    block = run.get("calibration") or {}
    where = (f"fitted on the {block.get('fitted_on')} split ({block.get('rows')} rows)" if block.get("fitted_on")
             else f"set by `combine`: {(run.get('combination') or {})['temperature']}"
             if isinstance((run.get("combination") or {}).get("temperature"), str) else "as recorded in run.json")
    fit = ""
    if "nll_before" in block and "nll_after" in block:
        fit = (f" NLL {_fmt(block['nll_before'])} → {_fmt(block['nll_after'])}, ECE {_fmt(block.get('ece_before'))}"
               f" → {_fmt(block.get('ece_after'))}.")
    applied = {"adapter": "`weibo-sentiment predict`, `evaluate` and `serve` divide the logits by T before the "
                          "softmax (`--no-calibration` for the raw ones), and so does the code below.",
               "merged": "The classifier head's weight is divided by T (it has no bias), so the merged model's "
                         "logits are already divided by T and a plain `pipeline()` gives the calibrated "
                         "probabilities; divide by nothing more." if calibrated_weights else
                         "The merged weights give the raw logits; `weibo-sentiment` divides them by T, and so does "
                         "the code below: a plain `pipeline()` alone would give the uncalibrated probabilities.",
               "export": "`weibo-sentiment predict --model DIR` and `serve --model DIR` divide the logits by T before "
                         "the softmax, and so does the code below."}[kind]
    return (f"Temperature scaling: T = {t:.6g} ({where}). Probabilities are softmax(logits / T): the confidence "
            f"changes, never the predicted label.{fit} {applied}")


def _limits_section(run: dict) -> str:
    names = ", ".join(run.get("label_names") or [])
    items = [f"- Classifies Chinese short texts (Weibo-style posts) into: {names}. It was not trained on other "
             "domains or languages; product or hotel reviews, long articles and other languages are outside its data.",
             f"- Only the first {run.get('max_length', 128)} tokens of a text count (one token per Chinese character).",
             "- The labels of Weibo sentiment data come from emoticons (see above): expect lower accuracy on text "
             "without them, and on irony or mixed sentiment.",
             "- Not for decisions about people (moderation, hiring, credit) without human review."]
    if _random_base(run):
        items.insert(0, "- **The base model has random weights** (written by `weibo-sentiment init-model`): this "
                        "model shows that the pipeline works; its figures say nothing about the real model.")
    return "\n".join(items)


def _files_section(kind: str, run: dict) -> str:
    rows = {"adapter": ["`adapter_config.json`, `adapter_model.safetensors`: the PEFT LoRA adapter with the "
                        "classifier head (`score`)",
                        "`tokenizer.json`, `tokenizer_config.json`: the base model's tokenizer (no token_type_ids)",
                        "`run.json`: everything above, machine-readable"],
            "merged": ["`config.json` (with `id2label`), `model.safetensors`: a plain GPT-2 classifier",
                       "`tokenizer.json`, `tokenizer_config.json`: the tokenizer (no token_type_ids)",
                       "`weibo_sentiment_merge.json`: where it was merged from"],
            "export": ["`model.onnx`: the graph, inputs `input_ids` and `attention_mask` (int64), output `logits`",
                       "`tokenizer.json`, `tokenizer_config.json`: the tokenizer (no token_type_ids)",
                       "`export.json`: label names, max length, precision, provenance"]}[kind]
    return "\n".join(f"- {r}" for r in rows)


# ---- loading snippets --------------------------------------------------------------------------------------
def _softmax_lines(t: float | None, indent: str = "") -> str:
    if t is None or t == 1:
        return f"{indent}probs = torch.softmax(logits, dim=-1)"
    return f"{indent}probs = torch.softmax(logits / {t!r}, dim=-1)  # temperature T = {t:.6g} (calibration)"


def _special_token_ids(directory: str | Path) -> dict[str, int]:
    """pad/bos/eos ids as `load_classifier` sets them, from the tokenizer saved in `directory`."""
    try:
        return _special_ids(load_tokenizer(directory))
    except (OSError, ValueError):
        return dict(DEFAULT_SPECIAL_IDS)


def peft_snippet(run: dict, path: str | Path, special_ids: dict[str, int] | None = None) -> str:
    """Plain PEFT + transformers code that gives `weibo-sentiment predict`'s probabilities for this adapter."""
    base, _ = base_reference(run)
    labels = list(run.get("label_names") or [])
    ids = special_ids or DEFAULT_SPECIAL_IDS
    special = ", ".join(f"{k}={v}" for k, v in ids.items())
    max_length = int(run.get("max_length", 128))
    return f"""import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

adapter = {_py(str(Path(path)))}  # this directory
base = {_py(base)}
labels = {_py(labels)}
tokenizer = AutoTokenizer.from_pretrained(adapter)
model = AutoModelForSequenceClassification.from_pretrained(
    base, num_labels=len(labels), id2label=dict(enumerate(labels)),
    label2id={{name: i for i, name in enumerate(labels)}},
    {special}, dtype=torch.float32,
)
model = PeftModel.from_pretrained(model, adapter).eval()

texts = {_py(EXAMPLES)}
batch = tokenizer(texts, padding=True, truncation=True, max_length={max_length}, return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
{_softmax_lines(temperature(run))}
for text, p in zip(texts, probs.tolist()):
    print(labels[max(range(len(labels)), key=p.__getitem__)], [round(x, 4) for x in p], text)
"""


def pipeline_snippet(run: dict, path: str | Path, calibrated_weights: bool = False) -> str:
    """`transformers.pipeline()` code over a merged model that gives `weibo-sentiment predict`'s probabilities."""
    t = None if calibrated_weights else temperature(run)
    max_length = int(run.get("max_length", 128))
    head = f"""from transformers import pipeline

model_dir = {_py(str(Path(path)))}  # this directory
classify = pipeline("text-classification", model=model_dir, top_k=None, device="cpu")
texts = {_py(EXAMPLES)}
"""
    if t is None or t == 1:
        return head + f"""results = classify(texts, truncation=True, max_length={max_length})
probs = [{{d["label"]: d["score"] for d in row}} for row in results]
for text, p in zip(texts, probs):
    print(max(p, key=p.get), p, text)
"""
    return head + f"""import math

T = {t!r}  # the temperature (calibration): the merged weights give the raw logits
results = classify(texts, function_to_apply="none", truncation=True, max_length={max_length})  # logits
probs = []
for row in results:
    top = max(d["score"] for d in row)
    weights = {{d["label"]: math.exp((d["score"] - top) / T) for d in row}}
    probs.append({{label: w / sum(weights.values()) for label, w in weights.items()}})
for text, p in zip(texts, probs):
    print(max(p, key=p.get), p, text)
"""


def onnx_snippet(meta: dict, path: str | Path) -> str:
    """ONNX Runtime code that gives `weibo-sentiment predict --model DIR`'s probabilities for an export."""
    t = temperature(meta)
    max_length = int(meta.get("max_length", 128))
    scale = "" if t is None or t == 1 else f" / {t!r}  # temperature T = {t:.6g} (calibration)"
    return f"""import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

model_dir = {_py(str(Path(path)))}  # this directory
labels = {_py(list(meta.get('label_names') or []))}
tokenizer = AutoTokenizer.from_pretrained(model_dir)
session = ort.InferenceSession(f"{{model_dir}}/model.onnx", providers=["CPUExecutionProvider"])
texts = {_py(EXAMPLES)}
batch = tokenizer(texts, padding=True, truncation=True, max_length={max_length}, return_tensors="np")
logits = session.run(None, {{k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}})[0]
z = logits.astype(np.float64){scale}
probs = np.exp(z - z.max(axis=1, keepdims=True))
probs /= probs.sum(axis=1, keepdims=True)
for text, p in zip(texts, probs.tolist()):
    print(labels[int(np.argmax(p))], [round(x, 4) for x in p], text)
"""


def _usage_adapter(run: dict, path: Path, special_ids: dict[str, int]) -> str:
    base, hub = base_reference(run)
    where = (f"the hub model `{base}`" if hub else f"the local base model directory `{base}` (recorded in run.json; "
             "pass `--base-model` to the CLI, or change `base` below, if it has moved)")
    arg = shlex.quote(str(path))
    cli = f"""weibo-sentiment predict --adapter {arg} --text "这部电影太好看了，我非常喜欢！"
weibo-sentiment predict --adapter {arg} --input posts.csv --output predictions.csv
weibo-sentiment evaluate --adapter {arg} --data test.csv
weibo-sentiment evaluate --adapter {arg} --data test.csv --strip-emoticons
weibo-sentiment serve --adapter {arg}"""
    return (f"The adapter sits on {where}.\n\nWith the CLI (`pip install` this package):\n\n{_code('bash', cli)}\n\n"
            "With plain PEFT and transformers: these lines give exactly the probabilities of "
            "`weibo-sentiment predict` (the head needs `num_labels` and `pad_token_id`, since GPT-2 pools the last "
            "non-padding token; the tokenizer must not emit token_type_ids):\n\n"
            + _code("python", peft_snippet(run, path, special_ids)))


def _usage_merged(run: dict, path: Path, calibrated_weights: bool) -> str:
    cli = f"weibo-sentiment train --data other.csv --base-model {shlex.quote(str(path))} --output adapters/other"
    return ("A standalone transformers model: no PEFT and no base model directory needed. With `pipeline()` "
            "(these lines give exactly the probabilities of `weibo-sentiment predict` with the adapter it was "
            f"merged from):\n\n{_code('python', pipeline_snippet(run, path, calibrated_weights))}\n\n"
            "`AutoModelForSequenceClassification.from_pretrained(model_dir)` with `AutoTokenizer` works as well. "
            f"With the CLI it serves as a base model:\n\n{_code('bash', cli)}")


def _usage_export(meta: dict, path: Path) -> str:
    arg = shlex.quote(str(path))
    cli = f"""weibo-sentiment predict --model {arg} --text "这部电影太好看了，我非常喜欢！"
weibo-sentiment serve --model {arg}"""
    return (f"With the CLI (ONNX Runtime, no PyTorch model needed):\n\n{_code('bash', cli)}\n\n"
            f"With ONNX Runtime and a tokenizer alone:\n\n{_code('python', onnx_snippet(meta, path))}")


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


def _render(card_data: ModelCardData, run: dict, kind: str, *, title: str, summary: str, usage: str,
            notice: str | None = None, origin_title: str = "", origin: str = "",
            pictures: list[str] | None = None, calibrated_weights: bool = False) -> ModelCard:
    _, hub = base_reference(run)
    if not hub and notice is None:
        notice = ("`base_model` in the metadata is a local directory, not a Hugging Face Hub id: replace it with the "
                  "base's hub id before pushing this card to the Hub.")
    return ModelCard.from_template(
        card_data, template_str=TEMPLATE, title=title, summary=summary, notice=notice,
        label_names=list(run.get("label_names") or []), origin_title=origin_title, origin=origin,
        data=_data_section(run), recipe=_recipe_section(run), metrics=_metrics_section(run),
        emoticons=_emoticons_section(run), calibration=_calibration_section(run, kind, calibrated_weights),
        limits=_limits_section(run),
        usage=usage, pictures=pictures or [], files=_files_section(kind, run),
    )


def _combination(run: dict) -> tuple[str, str]:
    combination = run.get("combination")
    if not combination:
        return "", ""
    lines = [f"Combined with PEFT's `add_weighted_adapter` (method `{combination.get('method')}`"
             + (f", density {combination['density']}" if "density" in combination else "")
             + (f", SVD rank {combination['svd_rank']}" if "svd_rank" in combination else "")
             + f", seed {combination.get('seed')}) from:", "",
             "| adapter | weight | LoRA r | its best validation macro-F1 | path |", "| --- | --- | --- | --- | --- |"]
    for a in combination.get("adapters") or []:
        best = (a.get("best") or {}).get("macro_f1")
        lines.append(f"| {a.get('name')} | {a.get('weight'):g} | {a.get('r')} | {_fmt(best)} | `{a.get('path')}` |")
    lines += ["", f"Classifier head: {combination.get('head')}."]
    return "Combination", "\n".join(lines)


def _pictures(directory: str | Path | None) -> list[str]:
    if directory is None or not Path(directory).is_dir():
        return []
    return sorted(p.name for p in Path(directory).iterdir() if p.suffix.lower() in PICTURES and p.is_file())


def adapter_card(run: dict, path: str | Path, directory: str | Path | None = None) -> ModelCard:
    """The card of an adapter directory (train, combine) from its run.json; `path` is where the directory will
    live (named in the loading code), `directory` where it is now (pictures in it are shown)."""
    path = Path(path).resolve()
    origin_title, origin = _combination(run)
    what = "a combination of LoRA adapters" if origin else "a LoRA adapter"
    base, _ = base_reference(run)
    summary = (f"{what[0].upper()}{what[1:]} (Hugging Face PEFT) with its own classifier head, on the Chinese GPT-2 "
               f"`{base}`, for sentiment classification of Weibo posts ({len(run.get('label_names') or [])} labels). "
               f"Written by weibo-sentiment `{'combine' if origin else 'train'}`.")
    return _render(_card_data(run, "peft", ["peft"]), run, "adapter",
                   title=f"{path.name}: Weibo sentiment LoRA adapter", summary=summary,
                   usage=_usage_adapter(run, path, _special_token_ids(directory or path)),
                   origin_title=origin_title, origin=origin, pictures=_pictures(directory))


def merged_card(run: dict, path: str | Path, adapter: str | Path | None = None,
                calibrated_weights: bool = False) -> ModelCard:
    """The card of a merged model (merge): the adapter's run.json facts, loading with `pipeline()`.
    `calibrated_weights`: the temperature is already folded into the merged head."""
    path = Path(path).resolve()
    base, _ = base_reference(run)
    origin = (f"The LoRA adapter `{Path(adapter).resolve() if adapter else '?'}` merged into its base `{base}` "
              "(PEFT `merge_and_unload`): the same predictions as the adapter on its base, as one plain "
              "`GPT2ForSequenceClassification` with `id2label` in its config. Everything below is the adapter's.")
    origin_title, combined = _combination(run)
    if combined:
        origin += "\n\n" + combined
    summary = (f"A Chinese GPT-2 sentiment classifier for Weibo posts ({len(run.get('label_names') or [])} labels): "
               f"a LoRA adapter merged into `{base}`. Written by weibo-sentiment `merge`.")
    return _render(_card_data(run, "transformers", ["merged", "gpt2"]), run, "merged",
                   title=f"{path.name}: Weibo sentiment classifier (merged)", summary=summary,
                   usage=_usage_merged(run, path, calibrated_weights), origin_title="Merged from", origin=origin,
                   calibrated_weights=calibrated_weights)


def export_card(meta: dict, run: dict | None, path: str | Path) -> ModelCard:
    """The card of an ONNX export (export, quantize_export) from its export.json and, when still readable, the
    adapter's run.json (training data, recipe, metrics); without it those sections say where to look."""
    path = Path(path).resolve()
    facts = dict(run or {})
    for key in ("base_model", "label_names", "max_length", "base_fingerprint"):
        if meta.get(key) is not None:
            facts.setdefault(key, meta[key])
    if "temperature" in meta:
        facts["temperature"] = meta["temperature"]
    precision = meta.get("precision", "fp32")
    quantization = meta.get("quantization") or {}
    origin = (f"The LoRA adapter `{meta.get('adapter_path', '?')}` merged into its base and traced to ONNX (opset "
              f"{meta.get('opset')}), {precision}.")
    if precision == "int8":
        origin += (" Dynamic int8 quantization (ONNX Runtime `quantize_dynamic`, per-channel weights); kept in fp32: "
                   f"{', '.join(quantization.get('fp32') or [])}. Its probabilities differ slightly from the fp32 "
                   "export's (int8 rounding).")
    if run is None:
        origin += " The adapter's run.json was not readable when this card was written: see the adapter's own card."
    summary = (f"A Chinese GPT-2 sentiment classifier for Weibo posts ({len(facts.get('label_names') or [])} labels) "
               f"exported to ONNX ({precision}) for ONNX Runtime. Written by weibo-sentiment `export`.")
    tags = ["onnx", "merged", *(["int8", "quantized"] if precision == "int8" else [])]
    return _render(_card_data(facts, "onnx", tags), facts, "export", title=f"{path.name}: Weibo sentiment classifier "
                   f"(ONNX, {precision})", summary=summary, usage=_usage_export(facts, path),
                   origin_title="Exported from", origin=origin)


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
