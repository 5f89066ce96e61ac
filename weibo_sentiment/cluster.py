"""Batch scoring on a Ray cluster: Ray Data reads the shards, a pool of actors predicts, the shards are written.

`predict_dataset(ds, adapters=[...])` turns a Ray Dataset holding a text column into one of predictions (for
users who already hold a Dataset); `score_files(input, output, ...)` reads CSV/TSV, JSONL or Parquet shards (a
file, a directory or a glob), scores them and writes Parquet (or CSV/JSONL) shards into the output directory
(`weibo-sentiment predict --engine ray`). Each actor loads the model once (`inference.load_predictor`: torch over
adapters, or an ONNX export) and uses `cpus_per_worker` torch threads. Ray is an optional extra
(`pip install 'weibo-sentiment[cluster]'`), imported only here, inside the functions.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import UserError
from .output import SCORES_FILE, atomic_dir, check_output_dir, write_marker
from .streaming.rows import output_columns, output_row
from .tables import DELIMITED_FORMATS, ROUTING_COLUMN, codec, delimiter, file_format, output_format

logger = logging.getLogger(__name__)

MISSING_RAY = "--engine ray needs Ray: pip install 'weibo-sentiment[cluster]'"
DEFAULT_BATCH_ROWS = 1024  # rows handed to an actor per call (the model's own batches are `model_batch_size`)


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(MISSING_RAY) from None
    return ray


class _Scorer:
    """The actor: loads the predictor once, then predicts pandas batches."""

    def __init__(self, adapters, model, backend, base_model, model_dir, use, calibrated, threads, device,
                 allow_other_base, text_column, id_column, min_confidence, model_batch_size):
        import torch

        torch.set_num_threads(max(1, threads))  # Ray sets OMP_NUM_THREADS=1 in workers
        from .inference import load_predictor

        self.predictor = load_predictor(adapters or None, backend=backend, model=model, base_model=base_model,
                                        model_dir=model_dir, device=device, calibrated=calibrated,
                                        allow_other_base=allow_other_base)
        if use:
            self.predictor.use(use)
        self.text_column, self.id_column = text_column, id_column
        self.min_confidence, self.model_batch_size = min_confidence, model_batch_size

    def __call__(self, batch):
        import pandas as pd

        texts = []
        for i, t in enumerate(batch[self.text_column].tolist()):
            if t is None or (isinstance(t, float) and t != t) or not str(t).strip():
                where = f"id {batch[self.id_column].iloc[i]!r}" if self.id_column else "a row"
                raise UserError(f"{where}: empty text in column {self.text_column!r}")
            texts.append(str(t))
        routing = ROUTING_COLUMN in batch.columns
        if routing:
            names = [n if isinstance(n, str) and n else None for n in batch[ROUTING_COLUMN].tolist()]
            for n in names:
                if n is not None and n not in self.predictor.adapters:
                    raise UserError(f"unknown adapter {n!r} in the {ROUTING_COLUMN!r} column "
                                    f"(loaded: {', '.join(self.predictor.adapters)})")
            preds = self.predictor.predict_routed(texts, names, batch_size=self.model_batch_size)
        else:
            preds = self.predictor.predict(texts, batch_size=self.model_batch_size)
        columns = output_columns(self.predictor, routing, self.id_column, self.min_confidence)
        ids = batch[self.id_column].tolist() if self.id_column else None
        rows = []
        for i, p in enumerate(preds):
            row = {self.id_column: ids[i]} if ids is not None else {}
            if routing:
                row[ROUTING_COLUMN] = p.adapter
            row.update(output_row(p, self.min_confidence))
            rows.append([row.get(c) for c in columns])
        return pd.DataFrame(rows, columns=columns)


def predict_dataset(ds, adapters: Sequence[str | Path] | None = None, *, model: str | Path | None = None,
                    backend: str = "torch", workers: int = 2, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                    batch_size: int = DEFAULT_BATCH_ROWS, model_batch_size: int = 32, text_column: str = "review",
                    id_column: str | None = None, calibrated: bool = True, min_confidence: float | None = None,
                    use: str | None = None, base_model: str | Path | None = None,
                    model_dir: str | Path = "models/gpt2-chinese", allow_other_base: bool = False):
    """A Ray Dataset of predictions for `ds` (lazy; consume or write it as any Dataset).

    Rows come back with `id_column` (if given), `adapter` (when `ds` has that routing column: each row is
    answered by the adapter it names, blank for the default), text, label, label_name, confidence, `uncertain`
    (with `min_confidence`) and one prob_<label> column per label. `workers` actors each load the model once;
    `batch_size` rows go to an actor per call, `model_batch_size` texts per forward pass."""
    ray = _ray()
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    if cpus_per_worker <= 0 or gpus_per_worker < 0 or batch_size < 1:
        raise UserError("--cpus-per-worker must be positive, --gpus-per-worker not negative, --batch-size positive")
    if min_confidence is not None and not 0 < min_confidence < 1:
        raise UserError(f"--min-confidence {min_confidence:g}: must be between 0 and 1 (exclusive)")
    columns = ds.schema().names
    for column, option in ((text_column, "--text-column"), (id_column, "--id-column")):
        if column is not None and column not in columns:
            raise UserError(f"no column {column!r} in the input (columns: {', '.join(columns)}); set {option}")
    adapters = [str(a) for a in adapters or []]
    model = str(model) if model is not None else None
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    wanted = [c for c in (id_column, text_column, ROUTING_COLUMN) if c is not None and c in columns]
    return ds.select_columns(list(dict.fromkeys(wanted))).map_batches(
        _Scorer, batch_size=batch_size, batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_args=(adapters, model, backend, base_model and str(base_model), str(model_dir), use,
                             calibrated, max(1, int(cpus_per_worker)), device, allow_other_base, text_column,
                             id_column, min_confidence, model_batch_size),
        num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)


def expand_inputs(pattern: str | Path) -> list[Path]:
    """The input files: one file, every readable file of a directory, or a glob's matches (sorted)."""
    text = str(pattern)
    if any(ch in text for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
    elif Path(text).is_dir():
        files = sorted(p for p in Path(text).iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    elif Path(text).is_file():
        files = [Path(text)]
    else:
        raise UserError(f"{text}: no such file, directory or matching glob")
    if not files:
        raise UserError(f"{text}: matches no files")
    kinds = {_input_kind(p) for p in files}
    if len(kinds) != 1:
        raise UserError(f"{text}: mixes input types ({', '.join(sorted(kinds))}); score one type at a time")
    return files


def _input_kind(path: Path) -> str:
    kind = file_format(path)
    if kind == "txt":
        raise UserError(f"{path}: unknown input type (use .csv/.tsv, .jsonl or .parquet shards)")
    return "csv" if kind in DELIMITED_FORMATS else kind


def _read(ray, files: list[Path], blocks: int, encoding: str):
    kind = _input_kind(files[0])
    paths = [str(p.resolve()) for p in files]
    if kind == "parquet":
        return ray.data.read_parquet(paths, override_num_blocks=blocks)
    if kind == "jsonl":
        return ray.data.read_json(paths, lines=True, override_num_blocks=blocks)
    import pyarrow.csv as pacsv

    # UTF-8 (with or without a byte-order mark) is pyarrow's own; only other encodings need transcoding
    read = pacsv.ReadOptions() if codec(encoding) == "utf-8-sig" else pacsv.ReadOptions(encoding=encoding)
    return ray.data.read_csv(paths, override_num_blocks=blocks, read_options=read,
                             parse_options=pacsv.ParseOptions(delimiter=delimiter(files[0]), newlines_in_values=True),
                             convert_options=pacsv.ConvertOptions(strings_can_be_null=False))


def _user_error(exc: BaseException) -> UserError | None:
    """The UserError an actor raised, found in the chain Ray wraps it in."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    text = str(exc)
    marker = "UserError: "
    if marker in text:
        return UserError(text.rsplit(marker, 1)[1].strip().splitlines()[0])
    return None


def score_files(input: str | Path, output: str | Path, adapters: Sequence[str | Path] | None = None, *,
                address: str | None = None, fmt: str | None = None, encoding: str = "utf-8",
                quiet: bool = False, **options) -> dict:
    """Score every shard matching `input` on Ray and write the prediction shards into the directory `output`.

    `address`: a running cluster ("auto", "ray://host:10001", ...; default RAY_ADDRESS, else a local Ray).
    The files must be readable at the same paths on every node (shared storage). `output` must be missing,
    empty or an earlier output of this function: it is filled in a temporary directory beside it, renamed at
    the end, and marked with weibo_sentiment_scores.json (rows, adapters, format). `options` go to
    `predict_dataset`. Returns the marker's contents."""
    ray = _ray()
    output = Path(output)
    files = expand_inputs(input)
    inputs = [("an --input file", p) for p in files] + [("an --adapter", a) for a in adapters or []]
    fmt = output_format(output, fmt, default="parquet")  # (a directory of shards: any name)
    check_output_dir(output, "ray-output", inputs)
    started = False
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {}
        if not address and not os.environ.get("RAY_ADDRESS"):  # a local Ray: the actors' CPUs plus one to read
            need = options.get("workers", 2) * options.get("cpus_per_worker", 1) + 1
            kwargs.update(include_dashboard=False, num_cpus=max(os.cpu_count() or 1, int(need + 0.999)))
        ray.init(**kwargs, log_to_driver=not quiet, logging_level=logging.WARNING)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = not quiet
        workers = options.get("workers", 2)
        ds = _read(ray, files, max(len(files), 4 * workers), encoding)
        scored = predict_dataset(ds, adapters, **options)
        with atomic_dir(output, kind="ray-output", inputs=inputs) as tmp:
            shards = tmp / "shards"
            try:
                {"parquet": scored.write_parquet, "csv": scored.write_csv, "jsonl": scored.write_json}[fmt](
                    str(shards))
            except UserError:
                raise
            except Exception as exc:  # an actor's UserError arrives wrapped by Ray
                if (err := _user_error(exc)) is not None:
                    raise err from None
                raise
            for f in shards.iterdir() if shards.exists() else []:
                f.rename(tmp / f.name)
            if shards.exists():
                shards.rmdir()
            rows = _count_rows(tmp, fmt)
            marker = {"rows": rows, "format": fmt, "inputs": [str(p) for p in files],
                      "adapters": [str(a) for a in adapters or []], "model": options.get("model") and
                      str(options["model"]), "id_column": options.get("id_column")}
            write_marker(tmp, "ray-output", marker)
        return marker
    finally:
        if started:
            ray.shutdown()


def _count_rows(directory: Path, fmt: str) -> int:
    import pyarrow.dataset as pads

    files = [str(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != SCORES_FILE]
    if not files:
        return 0
    if fmt == "jsonl":
        return sum(sum(1 for line in open(f, encoding="utf-8") if line.strip()) for f in files)
    return pads.dataset(files, format=fmt).count_rows()
