"""Writing a trained adapter: PEFT files + tokenizer + run.json + model card, renamed into place in one step (the
format itself: adapter_io)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .adapter_io import cast_weights, write_run
from .model_card import adapter_card, write_card
from .modeling import save_tokenizer
from .output import Inputs, atomic_dir


def save_adapter(model, tokenizer, run: dict, output: str | Path, save_dtype: str = "float32",
                 adapter_name: str = "default", inputs: Inputs = (),
                 extras: Callable[[Path], None] | None = None) -> Path:
    """Write adapter + tokenizer + run.json to a temporary directory, then rename it onto `output`.

    `output` may only be new, empty or an earlier adapter, and none of `inputs` (see `check_output_dir`).
    `extras(tmp)` may add files (pictures, reports) to the directory before it is renamed into place."""
    output = Path(output)
    with atomic_dir(output, kind="adapter", inputs=inputs) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=[adapter_name])
        if adapter_name != "default":  # PEFT writes non-default adapters into a sub-folder
            for f in (tmp / adapter_name).iterdir():
                f.rename(tmp / f.name)
            (tmp / adapter_name).rmdir()
        cast_weights(tmp, save_dtype)
        save_tokenizer(tokenizer, tmp)  # no token_type_ids from a plain AutoTokenizer either
        write_run(tmp, {**run, "save_dtype": save_dtype})
        if extras is not None:
            extras(tmp)
        # The model card replaces PEFT's empty template README.md (after extras: it shows their pictures).
        write_card(tmp, adapter_card({**run, "save_dtype": save_dtype}, output, directory=tmp))
    return output
