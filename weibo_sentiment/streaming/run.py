"""A streaming run: read a chunk, predict it, append it, record how far it got, repeat (`predict_file`)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..data import DEFAULT_TEXT_COLUMN
from ..errors import UserError
from ..locks import one_writer
from ..output import check_output_file, place_file
from ..tables import ROUTING_COLUMN, output_format
from .record import Progress, run_fingerprint
from .rows import add_counts, count_truncated_by_length, output_columns, output_row, warn_truncated
from .sink import Sink
from .source import DEFAULT_CHUNK_SIZE, Row, Source

logger = logging.getLogger(__name__)


@dataclass
class StreamResult:
    rows: int  # predictions written
    blank: int  # blank lines skipped
    truncated: dict[int, int]  # max length → texts longer than it
    resumed_from: int  # rows already done by the interrupted run (0 for a fresh one)
    output: Path | None


def predict_file(
    predictor,
    input: str | Path,
    output: str | Path | None,
    *,
    text_column: str = DEFAULT_TEXT_COLUMN,
    encoding: str = "utf-8",
    id_column: str | None = None,
    keep_columns: bool = False,
    fmt: str | None = None,
    batch_size: int = 32,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    min_confidence: float | None = None,
    resume: bool = False,
    progress: bool | None = None,
    explain: int | None = None,
) -> StreamResult:
    """Predict every text of `input` (CSV/TSV, JSONL, Parquet, .txt) into `output` (.csv, .jsonl, .parquet;
    None or `-`: JSON lines, or `fmt`, on stdout), `chunk_size` rows at a time, in input order.

    `predictor` is a `Predictor` or `OnnxPredictor` (`inference.load_predictor`); a `routing` column named
    `adapter` sends each row to that adapter (blank: the predictor's default). `id_column` is copied into every
    output row (first column); `keep_columns` copies all other input columns after the prediction's (renamed
    `input_NAME` where a name is taken). `resume` continues an interrupted run; without it, the leftovers of one
    are an error. `progress` (None: when stderr is a terminal) shows a bar on stderr. `explain` K adds each
    row's K most influential spans and the completeness error (weibo_sentiment.explanation; torch only).

    Memory stays flat whatever the file's length (`Predictor.predict` sorts each chunk by length, so batches
    pad little). The output path is touched only once, complete; a resumed run's final file equals an
    uninterrupted run's byte for byte. One run at a time writes an output (`locks.one_writer`): another is
    refused, naming the process that holds it.
    """
    if chunk_size < 1:
        raise UserError(f"--chunk-size {chunk_size}: must be at least 1")
    input = Path(input)
    out_path = None if output is None or str(output) == "-" else Path(output)
    out_fmt = _check_output(out_path, fmt, resume, input)
    with _one_writer(out_path):
        source = Source(input, text_column=text_column, encoding=encoding, id_column=id_column,
                        keep_columns=keep_columns, chunk_size=chunk_size).open()
        columns, renamed, types = _columns(predictor, source, id_column, min_confidence, explain is not None)
        fingerprint = run_fingerprint(predictor, out_fmt, columns, {
            "explain": explain, "min_confidence": min_confidence, "text_column": text_column,
            "id_column": id_column, "keep_columns": keep_columns, "encoding": encoding, "batch_size": batch_size,
            "chunk_size": chunk_size, **long_text_option(predictor)})
        state = Progress.start(out_path, fingerprint, source, resume)
        if not state.finished:
            sink = Sink(out_fmt, columns, types, state)
            show = sys.stderr.isatty() if progress is None else progress
            options = _Options(id_column, renamed, batch_size, min_confidence, explain)
            _write_all(predictor, source, sink, state, options, show)
            _finish(sink, state, source, input)
    if source.blank:
        logger.warning("%s: skipped %d blank line(s)", input, source.blank)
    warn_truncated(state.truncated, predictor)
    return StreamResult(rows=state.rows_done, blank=source.blank, truncated=state.truncated,
                        resumed_from=state.resumed_from, output=out_path)


@dataclass
class _Options:
    id_column: str | None
    renamed: dict[str, str]  # kept input column → its output name
    batch_size: int
    min_confidence: float | None
    explain: int | None


def _one_writer(out_path: Path | None):
    """The output's writer lock for the whole run (none for stdout): a second run on it is refused."""
    if out_path is None:
        return nullcontext()
    return one_writer(out_path.parent.resolve() / out_path.name, f"--output {out_path}")


def _write_all(predictor, source: Source, sink: Sink, state: Progress, options: _Options, show: bool) -> None:
    """Every row after the ones already done, a chunk at a time, each recorded once written. A UserError (a bad
    row, no rows) means this input can never complete: the partial output and the record go with it."""
    from tqdm.auto import tqdm

    bar = tqdm(total=source.total_rows, initial=state.rows_done, unit="row", desc="predict", disable=not show,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    try:
        rows = _skip_done(source, state.resumed_from)
        started = time.monotonic()
        for chunk in _chunks(rows, source.chunk_size):
            predicted = _predict_chunk(predictor, source, chunk, options.id_column, source.routing,
                                       options.renamed, options.batch_size, options.min_confidence,
                                       state.truncated, options.explain)
            state.chunks += 1
            state.partial_bytes = sink.write(predicted, state.chunks, lambda i, c=chunk: source.where(c[i]))
            state.rows_done += len(chunk)
            state.save(source)
            if show:
                _advance(bar, source, state.rows_done, len(chunk))
        if state.rows_done == 0:
            raise source.no_rows_error()
        logger.debug("%d rows in %.1f s", state.rows_done - state.resumed_from, time.monotonic() - started)
    except UserError:
        sink.close()
        state.discard()
        raise
    except KeyboardInterrupt:
        if state.output is not None:
            logger.warning("interrupted after %d rows; run the same command with --resume to continue",
                           state.rows_done)
        raise
    finally:
        bar.close()
        sink.close()


def long_text_option(predictor) -> dict:
    """How long texts are read, for the run's fingerprint: windows change what a run writes. Nothing under
    truncation, so the records of runs from before windows existed still resume."""
    long_text = predictor.long_text
    if not long_text.windowed:
        return {}
    return {"long_text": {"mode": long_text.mode, "stride": long_text.stride, "combine": long_text.combine}}


def _check_output(out_path: Path | None, fmt: str | None, resume: bool, input: Path) -> str:
    """The output format, once the output is known to be one this run may write."""
    out_fmt = output_format(out_path, fmt)
    if out_path is None and out_fmt == "parquet":
        raise UserError("Parquet output needs a file: pass --output NAME.parquet")
    if out_path is None and resume:
        raise UserError("--resume needs an --output file to continue")
    if out_path is not None:
        check_output_file(out_path, "predictions", inputs=[input])
    return out_fmt


def _columns(predictor, source: Source, id_column: str | None, min_confidence: float | None,
             explain: bool) -> tuple[list[str], dict[str, str], dict]:
    """The output's columns (fixed before the first row), the output names of the kept input columns, and
    the arrow types of the input columns copied (for a Parquet output)."""
    columns = output_columns(predictor, source.routing, id_column, min_confidence, explain)
    if id_column and columns.count(id_column) > 1:
        raise UserError(f"--id-column {id_column}: the predictions have a column of that name; the id needs "
                        "a column of its own (keep it with --keep-columns instead)")
    renamed = {}
    for c in source.kept:
        new = c
        while new in columns:
            new = f"input_{new}"
        renamed[c] = new
        columns.append(new)
    types = {renamed[c]: t for c, t in source.types.items() if c in renamed}
    if id_column and id_column in source.types:
        types[id_column] = source.types[id_column]
    return columns, renamed, types


def _skip_done(source: Source, done: int) -> Iterator[Row]:
    """`source`'s rows after the `done` ones an interrupted run completed: those are read (and checked)
    again, not predicted."""
    rows = source.rows()
    for _ in range(done):
        if next(rows, None) is None:
            raise UserError(f"{source.path}: has fewer rows than the interrupted run completed ({done})")
    return rows


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while True:
        chunk = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= size:
                break
        if not chunk:
            return
        yield chunk


def _advance(bar, source: Source, written: int, n: int) -> None:
    """Move the progress bar on by `n` rows; without a row count (all but Parquet), estimate the total from
    the share of the file read."""
    if source.total_rows is None and source.offset:
        bar.total = max(written, int(written * source.size / source.offset))
    bar.update(n)


def _finish(sink: Sink, state: Progress, source: Source, input: Path) -> None:
    """The complete output goes in place, its size and sha256 recorded first (a rerun after a kill at this
    point finds the output finished); then the partial and the record go. If another file has taken the output
    path meanwhile, the complete output is kept beside it (never deleted) and the error says where."""
    complete = sink.complete(state.chunks)
    if complete is None:
        return
    state.save_final(source, complete)
    aside = place_file(complete, state.output, "predictions", inputs=[input])
    state.done()
    if aside is not None:
        raise UserError(f"{state.output}: another file took this path while the run was writing it and is not "
                        f"ours to replace; the complete result ({state.rows_done} predictions) is kept in {aside}")


def _predict_chunk(predictor, source: Source, chunk: Sequence[Row], id_column: str | None, routing: bool,
                   renamed: dict[str, str], batch_size: int, min_confidence: float | None,
                   truncated: dict[int, int], explain: int | None = None) -> list[dict]:
    texts = [r.text for r in chunk]
    if routing:
        names = []
        for r in chunk:
            name = r.values.get(ROUTING_COLUMN) or None
            if name is not None and name not in predictor.adapters:
                raise UserError(source.where(r) + f"unknown adapter {name!r} (loaded: "
                                f"{', '.join(predictor.adapters)})")
            names.append(name)
        preds = predictor.predict_routed(texts, names, batch_size=batch_size)
    else:
        preds = predictor.predict(texts, batch_size=batch_size)
    add_counts(truncated, count_truncated_by_length(predictor, preds))
    rows = []
    for r, p in zip(chunk, preds, strict=True):
        row = {id_column: r.values.get(id_column)} if id_column else {}
        if routing:
            row[ROUTING_COLUMN] = p.adapter
        row.update(output_row(p, min_confidence))
        rows.append(row)
    if explain is not None:
        from ..explanation import add_explanations  # (captum: only when asked for)

        add_explanations(predictor, preds, rows, explain)
    for r, row in zip(chunk, rows):
        for c, new in renamed.items():
            row[new] = r.values.get(c)
    return rows
