"""Batch scoring on a Ray cluster: Ray Data reads the shards, a pool of actors predicts, the shards are written.

`predict_dataset(ds, adapters=[...])` turns a Ray Dataset holding a text column into one of predictions (for
users who already hold a Dataset); `score_files(input, output, ...)` reads CSV/TSV, JSONL or Parquet shards (a
file, a directory or a glob), scores them and writes Parquet (or CSV/JSONL) shards into the output directory
(`weibo-sentiment predict --engine ray`). The shards are read and written as the local engine reads and writes
a file (`shards`), and the rows the driver finds written are checked against the rows the workers wrote. Each
actor loads the model once (`inference.load_predictor`: torch over adapters, or an ONNX export) and uses
`cpus_per_worker` torch threads. Ray is an optional extra
(`pip install 'weibo-sentiment[cluster]'`), imported only here, inside the functions.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .data import DEFAULT_TEXT_COLUMN, clean_text
from .errors import UserError
from .output import atomic_dir, check_output_dir, write_marker
from .streaming.rows import output_columns, output_row
from .tables import DELIMITED_FORMATS, ROUTING_COLUMN, codec, file_format, output_format

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


PREDICTION_TYPES = {"text": "string", "label": "int64", "label_name": "string", "confidence": "float64",
                    "uncertain": "bool", ROUTING_COLUMN: "string"}  # prob_<label>: float64


class _Scorer:
    """The actor: loads the predictor once, then predicts arrow batches (arrow, so that an id column passes
    through as it came: integers with nulls stay integers, text stays text)."""

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

    def _texts(self, batch) -> list[str]:
        """The batch's texts, cleaned as the local engine cleans them; a missing, empty or non-text one is an
        error naming the row by its id."""
        texts = []
        for i, value in enumerate(batch.column(self.text_column).to_pylist()):
            text = clean_text(value) if isinstance(value, str) else ""
            if not text:
                where = f"id {batch.column(self.id_column)[i].as_py()!r}" if self.id_column else "a row"
                problem = "empty text" if value is None or isinstance(value, str) else "a value that is not text"
                raise UserError(f"{where}: {problem} in column {self.text_column!r}")
            texts.append(text)
        return texts

    def __call__(self, batch):
        import pyarrow as pa

        texts = self._texts(batch)
        routing = ROUTING_COLUMN in batch.column_names
        if routing:
            names = [n if isinstance(n, str) and n else None for n in batch.column(ROUTING_COLUMN).to_pylist()]
            for n in names:
                if n is not None and n not in self.predictor.adapters:
                    raise UserError(f"unknown adapter {n!r} in the {ROUTING_COLUMN!r} column "
                                    f"(loaded: {', '.join(self.predictor.adapters)})")
            preds = self.predictor.predict_routed(texts, names, batch_size=self.model_batch_size)
        else:
            preds = self.predictor.predict(texts, batch_size=self.model_batch_size)
        columns = output_columns(self.predictor, routing, self.id_column, self.min_confidence)
        if self.id_column and columns.count(self.id_column) > 1:
            raise UserError(f"--id-column {self.id_column}: the predictions have a column of that name; the id "
                            "needs a column of its own")
        rows = [output_row(p, self.min_confidence) for p in preds]
        if routing:
            for row, p in zip(rows, preds):
                row[ROUTING_COLUMN] = p.adapter
        data = {self.id_column: batch.column(self.id_column)} if self.id_column else {}
        for c in columns[len(data):]:
            data[c] = pa.array([row.get(c) for row in rows], PREDICTION_TYPES.get(c, "float64"))
        return pa.table(data)


def predict_dataset(ds, adapters: Sequence[str | Path] | None = None, *, model: str | Path | None = None,
                    backend: str = "torch", workers: int = 2, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                    batch_size: int | None = DEFAULT_BATCH_ROWS, model_batch_size: int = 32,
                    text_column: str = DEFAULT_TEXT_COLUMN, id_column: str | None = None, calibrated: bool = True,
                    min_confidence: float | None = None, use: str | None = None, base_model: str | Path | None = None,
                    model_dir: str | Path = "models/gpt2-chinese", allow_other_base: bool = False):
    """A Ray Dataset of predictions for `ds` (lazy; consume or write it as any Dataset).

    Rows come back with `id_column` (if given), `adapter` (when `ds` has that routing column: each row is
    answered by the adapter it names, blank for the default), text, label, label_name, confidence, `uncertain`
    (with `min_confidence`) and one prob_<label> column per label. `workers` actors each load the model once;
    `batch_size` rows go to an actor per call (None: each block of `ds` as it is, never two blocks merged, so
    that no column's type is promoted to fit another block's), `model_batch_size` texts per forward pass."""
    ray = _ray()
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    if cpus_per_worker <= 0 or gpus_per_worker < 0 or (batch_size is not None and batch_size < 1):
        raise UserError("--cpus-per-worker must be positive, --gpus-per-worker not negative, --batch-size positive")
    if min_confidence is not None and not 0 < min_confidence < 1:
        raise UserError(f"--min-confidence {min_confidence:g}: must be between 0 and 1 (exclusive)")
    schema = ds.schema()
    if schema is None:
        raise UserError("the input has no rows to score")
    columns = schema.names
    for column, option in ((text_column, "--text-column"), (id_column, "--id-column")):
        if column is not None and column not in columns:
            raise UserError(f"no column {column!r} in the input (columns: {', '.join(columns)}); set {option}")
    adapters = [str(a) for a in adapters or []]
    model = str(model) if model is not None else None
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    wanted = [c for c in (id_column, text_column, ROUTING_COLUMN) if c is not None and c in columns]
    return ds.select_columns(list(dict.fromkeys(wanted))).map_batches(
        _Scorer, batch_size=batch_size, batch_format="pyarrow",
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


def _read(ray, files: list[Path], blocks: int, encoding: str, text_column: str, id_column: str | None,
          block_rows: int):
    """The input shards as a Dataset: Parquet through Ray's reader (Arrow keeps every column's type), CSV/TSV
    and JSONL through the local engine's reader (`shards.SourceFiles`)."""
    paths = [str(p.resolve()) for p in files]
    if _input_kind(files[0]) == "parquet":
        return ray.data.read_parquet(paths, override_num_blocks=blocks)
    from .shards import SourceFiles

    codec(encoding)  # an unknown encoding is an error here, before any worker starts
    return ray.data.read_datasource(SourceFiles(paths, text_column=text_column, id_column=id_column,
                                                encoding=encoding, block_rows=block_rows),
                                    override_num_blocks=blocks)


def _user_error(exc: BaseException) -> UserError | None:
    """The error to show for `exc`, in one line: the UserError a worker raised, found in the chain Ray wraps it
    in (Ray appends its retry notes to the message), or what Arrow said of a table it could not read."""
    import pyarrow as pa

    seen, chain = set(), []
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        chain.append(e)
        cause = getattr(e, "cause", None)  # a RayTaskError(UserError) is a UserError too, with a traceback as text
        if isinstance(e, UserError) and not isinstance(cause, BaseException):
            return UserError(str(e).split("\n", 1)[0])
        stack += [e.__cause__, e.__context__, cause]
    text = str(exc)
    marker = "UserError: "
    if marker in text:
        return UserError(text.rsplit(marker, 1)[1].strip().splitlines()[0])
    for e in chain:
        if (merge := re.search(r"Unable to merge: [^\n]*", str(e))) is not None:  # shards of different schemas
            return UserError(f"the input's shards disagree on a column's type ({merge.group(0)}); --engine ray "
                             "needs one type per column")
    for e in chain:
        if isinstance(e, pa.ArrowException) or type(e).__name__ == "ArrowConversionError":
            return UserError(f"Arrow could not read or write the data: {str(e).strip().splitlines()[0]}")
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
        with _console_logs(quiet):
            return _score(ray, files, output, adapters, fmt, encoding, inputs, options)
    finally:
        if started:
            ray.shutdown()


@contextmanager
def _console_logs(quiet: bool) -> Iterator[None]:
    """Ray Data's console log, less its error reports (a failed task's traceback, logged before the error is
    raised: the error is said once, in one line; the traceback stays in Ray's session log files), and with
    `quiet` less its progress lines."""
    def shown(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR and (record.levelno >= logging.WARNING or not quiet)

    consoles = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    for handler in consoles:
        handler.addFilter(shown)
    try:
        yield
    finally:
        for handler in consoles:
            handler.removeFilter(shown)


def _score(ray, files: list[Path], output: Path, adapters, fmt: str, encoding: str, inputs, options: dict) -> dict:
    """Read, score and write `files` into `output`; the marker written with the shards."""
    if options.get("batch_size", DEFAULT_BATCH_ROWS) < 1:
        raise UserError(f"--chunk-size {options['batch_size']}: must be at least 1")
    with atomic_dir(output, kind="ray-output", inputs=inputs) as tmp:
        try:
            rows = _score_into(ray, files, tmp, fmt, output, adapters, encoding, options)
        except UserError as exc:
            raise _user_error(exc) or exc from None
        except Exception as exc:  # a worker's UserError arrives wrapped by Ray
            if (err := _user_error(exc)) is not None:
                raise err from None
            raise
        marker = {"rows": rows, "format": fmt, "inputs": [str(p) for p in files],
                  "adapters": [str(a) for a in adapters or []], "model": options.get("model") and
                  str(options["model"]), "id_column": options.get("id_column")}
        write_marker(tmp, "ray-output", marker)
    return marker


def _score_into(ray, files: list[Path], directory: Path, fmt: str, output: Path, adapters, encoding: str,
                options: dict) -> int:
    """Score `files` into shard files in `directory`; the rows written, once the driver has found every one."""
    from .shards import ShardSink, check_written

    batch_rows = options.get("batch_size", DEFAULT_BATCH_ROWS)
    ds = _read(ray, files, max(len(files), 4 * options.get("workers", 2)), encoding,
               options.get("text_column", DEFAULT_TEXT_COLUMN), options.get("id_column"), batch_rows)
    if _input_kind(files[0]) != "parquet":  # read in blocks of batch_rows: one block a call, never two merged
        options = {**options, "batch_size": None}  # (Ray would promote an integer id column to fit a decimal one)
    sink = ShardSink(directory, fmt)
    predict_dataset(ds, adapters, **options).write_datasink(sink)
    return check_written(directory, fmt, sink, output)
