"""Base models: build random ones (`init-model`), fetch the real one once, load a classifier.

The real base is `uer/gpt2-chinese-cluecorpussmall`: GPT-2 weights with a BERT character tokenizer.
Its config sets no pad/bos/eos ids, so transformers would fall back to 50256 (outside the 21,128-entry
vocabulary); we set them from the tokenizer so last-token pooling finds `[SEP]` under right padding.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections import Counter
from pathlib import Path

import torch
from transformers import BertTokenizer, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from .data import DEFAULT_TEXT_COLUMN, read_table
from .errors import UserError
from .output import SOURCE_FILE, atomic_dir, check_output_dir, write_marker

logger = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "uer/gpt2-chinese-cluecorpussmall"
DEFAULT_MODEL_DIR = Path("models/gpt2-chinese")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# The exact shape of uer/gpt2-chinese-cluecorpussmall's config.json.
UER_CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_inner": None,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "tokenizer_class": "BertTokenizer",
    "vocab_size": 21128,
}
TINY_CONFIG = {**UER_CONFIG, "n_embd": 128, "n_head": 4, "n_layer": 2, "n_positions": 512, "n_ctx": 512}
PRESETS = {"uer": UER_CONFIG, "tiny": TINY_CONFIG}


def build_vocab_from_data(path: str | Path, text_column: str = DEFAULT_TEXT_COLUMN, encoding: str = "utf-8",
                          max_size: int | None = None) -> list[str]:
    """A character vocabulary (special tokens first, then characters by frequency) from a CSV/TSV."""
    header, rows, _ = read_table(path, encoding)
    if text_column not in header:
        raise UserError(f"{path}: line 1: no column {text_column!r} to build a vocabulary from")
    index = header.index(text_column)
    tokenizer = _basic_tokenizer()
    counts: Counter[str] = Counter()
    for _, fields in rows:
        if len(fields) > index:
            counts.update(tokenizer.tokenize(fields[index]))
    chars = [c for c, _ in counts.most_common(max_size) if c not in SPECIAL_TOKENS]
    return SPECIAL_TOKENS[:1] + [f"[unused{i}]" for i in range(1, 100)] + SPECIAL_TOKENS[1:] + chars


def _basic_tokenizer():
    # The same pre-tokenization as BertTokenizer (Chinese characters split, lower-case off), no vocabulary.
    from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer

    return BasicTokenizer(do_lower_case=False, tokenize_chinese_chars=True)


def init_model(
    output: str | Path,
    preset: str = "tiny",
    *,
    vocab_file: str | Path | None = None,
    vocab_from_data: str | Path | None = None,
    config_file: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Write a GPT-2 with random weights, its config and a BERT tokenizer, in Hugging Face format."""
    output = Path(output)
    inputs = [("the --vocab file", vocab_file), ("the --vocab-from-data file", vocab_from_data),
              ("the --config file", config_file)]
    check_output_dir(output, "base", inputs)  # before building a vocabulary from data
    if config_file is not None:
        try:
            shape = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"{config_file}: cannot read a JSON config: {e}") from None
    elif preset in PRESETS:
        shape = dict(PRESETS[preset])
    else:
        raise UserError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")

    if vocab_file is not None:
        if not Path(vocab_file).is_file():
            raise UserError(f"{vocab_file}: no such vocabulary file")
        # split("\n"), not splitlines(): vocab.txt holds tokens such as U+2028 that splitlines() breaks on.
        vocab = Path(vocab_file).read_text(encoding="utf-8").rstrip("\n").split("\n")
    elif vocab_from_data is not None:
        vocab = build_vocab_from_data(vocab_from_data)
    else:
        raise UserError("init-model needs a vocabulary: pass --vocab FILE (e.g. a vocab.txt) or --vocab-from-data CSV")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise UserError(f"the vocabulary lacks the special tokens {', '.join(missing)}")

    with atomic_dir(output, kind="base", inputs=inputs) as tmp:
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer(vocab=str(tmp / "vocab.txt"), do_lower_case=False)
        tokenizer.model_max_length = shape.get("n_positions", 1024)
        tokenizer.save_pretrained(tmp)
        shape.update(vocab_size=len(vocab), **special_token_ids(tokenizer))
        config = GPT2Config(**{k: v for k, v in shape.items() if k != "architectures"})
        config.architectures = ["GPT2LMHeadModel"]
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        model.save_pretrained(tmp, safe_serialization=True)
        # The mark of a base model written by this package (output.DIR_KINDS); no "base_model" key: not a download.
        source = {"init_model": preset if config_file is None else "custom", "seed": seed}
        write_marker(tmp, "base", source)
    n = sum(p.numel() for p in model.transformer.parameters())
    logger.info("wrote a random %s GPT-2 (%.1fM parameters, vocabulary %d) to %s", preset, n / 1e6, len(vocab), output)
    return output


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_base_model(base_model: str | Path = DEFAULT_BASE_MODEL, model_dir: str | Path = DEFAULT_MODEL_DIR) -> Path:
    """A local directory holding the base model: `base_model` itself, or a hub id downloaded once into `model_dir`."""
    local = Path(base_model)
    if local.exists():
        if not _is_model_dir(local):
            raise UserError(f"{local}: not a model directory (no config.json)")
        return local
    base_model = str(base_model)
    if base_model.startswith((".", "/", "~")) or os.sep + os.sep in base_model or base_model.count("/") > 1:
        raise UserError(f"{base_model}: no such model directory")

    model_dir = Path(model_dir)
    source = model_dir / SOURCE_FILE
    if _is_model_dir(model_dir):
        recorded = json.loads(source.read_text()).get("base_model") if source.is_file() else None
        if recorded in (None, base_model):
            return model_dir
        raise UserError(
            f"{model_dir} holds {recorded}, not {base_model}; pass another --model-dir for this base model"
        )
    return download_base_model(base_model, model_dir)


def _hub_unreachable() -> str | None:
    """Why the model hub cannot be used, or None. Checked first: the hub client retries for minutes."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT  # HF_ENDPOINT, read when huggingface_hub was imported
    url = urlparse(endpoint)
    try:
        # The port the hub client will use: the endpoint's own, else its scheme's (a mirror may be plain http).
        port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    except ValueError:
        port = None
    if not url.hostname or not port:
        return f"HF_ENDPOINT {endpoint!r} is not an http:// or https:// URL"
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as e:
        return f"cannot connect to {endpoint}: {e.strerror or e}"
    return None


def download_base_model(hub_id: str, model_dir: Path) -> Path:
    """Download `hub_id` (model + tokenizer) once and save it under `model_dir` as safetensors, with the special
    token ids set from the tokenizer (the upstream config has none, so transformers would assume 50256)."""
    reason = _hub_unreachable()
    if reason:
        raise UserError(
            f"base model {hub_id!r} is not in {model_dir} and cannot be downloaded ({reason}); "
            "pass --base-model DIR with a local model directory (e.g. one written by "
            "`weibo-sentiment init-model`)"
        )
    from huggingface_hub import try_to_load_from_cache

    logger.info("downloading %s into %s (once)", hub_id, model_dir)
    # The hub client logs every HTTP request at INFO; our one line above says what happens.
    http_loggers = [logging.getLogger(name) for name in ("httpx", "httpx2")]
    levels = [log.level for log in http_loggers]
    # The upstream repository has only pytorch_model.bin: transformers would then start a thread that asks a
    # conversion service (outside the hub endpoint) to open a safetensors pull request upstream. We save
    # safetensors ourselves.
    conversion = os.environ.get("DISABLE_SAFETENSORS_CONVERSION")
    os.environ["DISABLE_SAFETENSORS_CONVERSION"] = "1"
    try:
        for log in http_loggers:
            log.setLevel(logging.WARNING)
        with atomic_dir(model_dir, kind="base", option="--model-dir") as tmp:
            try:
                tokenizer = BertTokenizer.from_pretrained(hub_id)
                model = GPT2LMHeadModel.from_pretrained(hub_id)
            except (OSError, ValueError) as e:
                # transformers wraps network errors in a generic "Can't load the model" message: the cause says more.
                cause = e.__cause__ if e.__cause__ is not None and str(e.__cause__) else e
                reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
                if cause is not e:
                    reason = f"{type(cause).__name__}: {reason}"
                raise UserError(
                    f"base model {hub_id!r} is not in {model_dir} and could not be downloaded ({reason[:200]}); "
                    "pass --base-model DIR with a local model directory (e.g. one written by "
                    "`weibo-sentiment init-model`)"
                ) from None
            if tokenizer.model_max_length > model.config.n_positions:  # no tokenizer_config.json upstream
                tokenizer.model_max_length = model.config.n_positions
            for config in (model.config, model.generation_config):
                for key, value in special_token_ids(tokenizer).items():
                    setattr(config, key, value)
            tokenizer.save_pretrained(tmp)
            # The tokenizer saves tokenizer.json only; keep the upstream vocab.txt too, as init-model does.
            vocab = try_to_load_from_cache(hub_id, "vocab.txt")
            if isinstance(vocab, str) and not (tmp / "vocab.txt").exists():
                shutil.copyfile(vocab, tmp / "vocab.txt")
            model.save_pretrained(tmp, safe_serialization=True)
            write_marker(tmp, "base", {"base_model": hub_id})
    finally:
        for log, level in zip(http_loggers, levels):
            log.setLevel(level)
        if conversion is None:
            os.environ.pop("DISABLE_SAFETENSORS_CONVERSION", None)
        else:
            os.environ["DISABLE_SAFETENSORS_CONVERSION"] = conversion
    return model_dir


def special_token_ids(tokenizer: BertTokenizer) -> dict[str, int]:
    """The pad/bos/eos ids a GPT-2 config takes from the BERT tokenizer: [PAD], [CLS], [SEP]."""
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }


# GPT-2 has no segment embedding: given token_type_ids it adds their word embeddings to every position, so no
# tokenizer we load or save may produce them (BERT's tokenizer does by default).
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


def load_tokenizer(model_dir: str | Path) -> BertTokenizer:
    tokenizer = BertTokenizer.from_pretrained(str(model_dir))
    # BERT's all-zero segment ids must never reach GPT-2 (see MODEL_INPUT_NAMES).
    tokenizer.model_input_names = list(MODEL_INPUT_NAMES)
    return tokenizer


def save_tokenizer(tokenizer: BertTokenizer, directory: str | Path) -> None:
    """Save `tokenizer` so that a plain `AutoTokenizer.from_pretrained(directory)` (a `pipeline`, a PEFT snippet)
    emits no token_type_ids either: `model_input_names` set on a loaded tokenizer is not saved, so it is written
    into tokenizer_config.json, where transformers reads it back as an init argument."""
    tokenizer.save_pretrained(str(directory))
    tokenizer_config = Path(directory) / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    settings["model_input_names"] = list(MODEL_INPUT_NAMES)
    tokenizer_config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_classifier(
    base_dir: str | Path,
    label_names: list[str],
    tokenizer: BertTokenizer | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> GPT2ForSequenceClassification:
    """GPT-2 with a fresh `score` head for `label_names`, special token ids set from the tokenizer."""
    tokenizer = tokenizer or load_tokenizer(base_dir)
    # Patch the dict before building the config: the uer config's implicit 50256 ids would warn.
    config_dict, _ = GPT2Config.get_config_dict(str(base_dir))
    config_dict.update(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        **special_token_ids(tokenizer),
    )
    config = GPT2Config.from_dict(config_dict)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    # A merged classifier used as a base may carry a head for another label set: that head starts afresh.
    model = GPT2ForSequenceClassification.from_pretrained(str(base_dir), config=config, dtype=dtype,
                                                          ignore_mismatched_sizes=True, **kwargs)
    # The tokenizer and the config must agree on where padding is, or pooling reads the wrong token.
    assert tokenizer.padding_side == "right"
    return model
