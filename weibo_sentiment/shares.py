"""Sentiment shares per time bucket and/or group, corrected for the classifier's errors, with intervals.

Input: scored rows (predict's output, with prob_<label> columns) or posts (scored here by the adapter, a block
at a time). Rows are read a block at a time (share_input.py); only each bucket's posteriors are kept, as
float32, so memory grows with 8 bytes per row and two-label adapter, not with the file. Each bucket's shares
are then estimated by a quantifier fitted on a domain's labelled sample (domains.py, quantification.py): the
counted share (classify and count), the corrected share and its interval, and flags.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .adapter_io import read_run
from .calibration import softmax
from .domains import DEFAULT_DOMAIN, DEFAULT_DOMAIN_NOTE, Domain, load_domain
from .errors import UserError
from .output import atomic_open, check_output_file
from .quantification import DEFAULT_BOOTSTRAP, DEFAULT_METHOD, METHODS, Quantifier
from .share_input import (
    bucket_frequency,
    bucket_starts,
    check_every,
    check_input,
    input_columns,
    parse_times,
    read_blocks,
)

MIN_BUCKET_POSTS = 50  # below this a bucket is flagged few_posts: its own sampling noise dominates the interval
SCORED_WITH = ("training", "domain", "raw")  # the temperature predict's prob_ columns were computed with
OUTPUT_SUFFIXES = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
ALL = "all"


@dataclass
class Request:
    """What one report reads and how it buckets the rows."""

    data: Path
    adapter: Path
    time_column: str | None
    every: str | None
    group_column: str | None
    text_column: str
    encoding: str
    columns: list[str]  # the input's
    scored: bool = False  # prob_<label> columns (predict's output) rather than posts
    prob_columns: list[str] = field(default_factory=list)


class Buckets:
    """Each bucket's posteriors (float32), appended block by block; a key is (bucket start or None, group or
    None)."""

    def __init__(self) -> None:
        self.parts: dict[tuple, list[np.ndarray]] = {}
        self.rows = 0

    def add(self, keys: list[pd.Series], posteriors: np.ndarray) -> None:
        self.rows += len(posteriors)
        if not keys:
            self.parts.setdefault((None, None), []).append(posteriors.astype(np.float32))
            return
        frame = pd.DataFrame({k.name: k.to_numpy() for k in keys})
        for key, index in frame.groupby(list(frame.columns), sort=False).indices.items():
            named = dict(zip(frame.columns, key if isinstance(key, tuple) else (key,)))
            time = named.get("time")
            full = (pd.Timestamp(time) if time is not None else None, named.get("group"))
            self.parts.setdefault(full, []).append(posteriors[index].astype(np.float32))

    def posteriors(self, key: tuple) -> np.ndarray | None:
        parts = self.parts.get(key)
        return np.concatenate(parts) if parts else None


# ---- the API ----------------------------------------------------------------------------------------------
def report(data: str | Path, adapter: str | Path = "best_weibo_sentiment_lora", *, domain: str | None = None,
           method: str = DEFAULT_METHOD, confidence: float = 0.95, time_column: str | None = None,
           every: str | None = None, group_column: str | None = None, text_column: str = "review",
           encoding: str = "utf-8", scored_with: str = "training", output: str | Path | None = None,
           plot: str | Path | None = None, n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
           base_model: str | None = None, model_dir: str | Path = "models/gpt2-chinese", device: str | None = None,
           batch_size: int = 32, allow_other_base: bool = False) -> pd.DataFrame:
    """Shares per bucket (time, with `every` 1h/1d/1w..., and/or group) of `data`'s rows: scored rows (predict's
    output) or posts scored here by `adapter`, corrected with `method` fitted on `adapter`'s domain `domain`
    (default: `validation`, train's own split; see the note in the result's attrs). One row per bucket: n, the
    counted share per label, the corrected share with its `confidence` interval, and flags. `scored_with`: how
    predict computed the prob_ columns (training: its default; domain: with --domain the same as here; raw:
    --no-calibration). Writes `output` (.csv/.json/.parquet) and a `plot` PNG when given."""
    request = check_request(data, adapter, method, confidence, time_column, every, group_column, text_column,
                            encoding, scored_with, output, plot, n_bootstrap)
    name = domain or DEFAULT_DOMAIN
    chosen = load_domain(request.adapter, name)
    note = DEFAULT_DOMAIN_NOTE if name == DEFAULT_DOMAIN else ""  # in the result's attrs and JSON output
    find_prob_columns(request, chosen)
    quantifier = Quantifier.fit(method, chosen.posteriors(), chosen.labels, n_bootstrap=n_bootstrap, seed=seed)
    if request.scored:
        scored_t = {"training": run_temperature(request.adapter), "domain": chosen.temperature, "raw": 1.0}
        buckets = collect(request, scored_posteriors(chosen, scored_t[scored_with]))
    else:
        buckets = collect(request, post_posteriors(request, chosen, base_model, model_dir, device, batch_size,
                                                   allow_other_base))
    frame = bucket_table(buckets, quantifier, request, chosen, confidence)
    frame.attrs.update({"domain": name, "domain_rows": chosen.rows, "domain_counts": chosen.counts,
                        "method": method, "confidence": confidence, "every": request.every,
                        "min_bucket_posts": MIN_BUCKET_POSTS,
                        "label_names": chosen.label_names, "note": note, "input": str(request.data),
                        "rows": buckets.rows, "input_kind": "scored rows" if request.scored else "posts"})
    if output is not None:
        write_report(frame, output, inputs=[request.data])
    if plot is not None:
        from .trend_plot import trend_figure

        trend_figure(frame, plot)
    return frame


def check_request(data, adapter, method, confidence, time_column, every, group_column, text_column, encoding,
                  scored_with, output, plot, n_bootstrap) -> Request:
    """Every argument checked before any reading or scoring: one line for the first problem."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise UserError(f"--confidence {confidence!r}: must lie between 0 and 1 (e.g. 0.95)")
    if scored_with not in SCORED_WITH:
        raise UserError(f"--scored-with {scored_with!r}: choose one of {', '.join(SCORED_WITH)}")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 20:
        raise UserError(f"--bootstrap {n_bootstrap!r}: at least 20 resamples are needed for an interval")
    if every is not None and time_column is None:
        raise UserError("--every needs --time-column: the column holding each post's time")
    every = check_every(every or "1d") if time_column else None
    path = check_input(data)
    read_run(adapter)
    if output is not None:
        if Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
            raise UserError(f"{output}: unknown output type (use .csv, .json or .parquet)")
        check_output_file(output, "report", inputs=[path])
    if plot is not None:
        if Path(plot).suffix.lower() != ".png":
            raise UserError(f"--plot {plot}: the picture is a PNG; name it FILE.png")
        check_output_file(plot, "plot", inputs=[path])
    columns = input_columns(path, encoding)
    for option, column in (("--time-column", time_column), ("--group-column", group_column)):
        if column is not None and column not in columns:
            raise UserError(f"{path}: no column {column!r} ({option}); its columns: {', '.join(columns)}")
    return Request(path, Path(adapter), time_column, every, group_column, text_column, encoding, columns)


def find_prob_columns(request: Request, domain: Domain) -> None:
    """Scored rows when the input has prob_<label> for every label of the adapter, else posts in the text column."""
    columns = request.columns
    wanted = [f"prob_{name}" for name in domain.label_names]
    if all(c in columns for c in wanted):
        request.scored, request.prob_columns = True, wanted
        return
    others = [c for c in columns if c.startswith("prob_")]
    if others:
        raise UserError(f"{request.data}: its probability columns ({', '.join(others)}) are not the adapter's "
                        f"labels ({', '.join(wanted)}): score the posts with this adapter")
    if request.text_column not in columns:
        raise UserError(f"{request.data}: neither predict's {', '.join(wanted)} columns nor a text column "
                        f"{request.text_column!r} (--text-column); its columns: {', '.join(columns)}")


def run_temperature(adapter: Path) -> float:
    return float(read_run(adapter).get("temperature", 1.0))


# ---- reading and scoring ----------------------------------------------------------------------------------
def collect(request: Request, posteriors_of) -> Buckets:
    """Read `request.data` a block at a time; `posteriors_of(frame, first_row)` gives each block's posteriors."""
    columns = {c: "string" for c in (request.time_column, request.group_column) if c}
    if request.scored:
        columns.update({c: "float" for c in request.prob_columns})
    else:
        columns[request.text_column] = "string"
    buckets, first_row = Buckets(), 0
    for frame in read_blocks(request.data, columns, request.encoding):
        if not len(frame):
            continue
        keys = []
        if request.time_column:
            times = parse_times(frame[request.time_column], str(request.data), first_row)
            keys.append(bucket_starts(times, request.every).rename("time"))
        if request.group_column:
            keys.append(frame[request.group_column].fillna("").astype(str).str.strip().rename("group"))
        buckets.add(keys, posteriors_of(frame, first_row))
        first_row += len(frame)
    if not buckets.rows:
        raise UserError(f"{request.data}: no rows to report on (every bucket would be empty)")
    return buckets


def scored_posteriors(domain: Domain, scored_temperature: float):
    """Posteriors from predict's prob_ columns: their logits (log p, up to a constant per row) brought from the
    temperature they were computed with to the domain's."""
    columns = [f"prob_{name}" for name in domain.label_names]
    ratio = scored_temperature / domain.temperature

    def posteriors_of(frame: pd.DataFrame, first_row: int) -> np.ndarray:
        probs = frame[columns].to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1))
        if len(bad):
            raise UserError(f"row {first_row + int(bad[0]) + 1}: {', '.join(columns)} are not probabilities")
        return softmax(np.log(np.clip(probs, 1e-12, None)), 1.0 / ratio) if ratio != 1 else \
            probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)

    return posteriors_of


def post_posteriors(request: Request, domain: Domain, base_model, model_dir, device, batch_size: int,
                    allow_other_base: bool):
    """Posteriors of posts scored here: softmax(the adapter's logits / the domain's temperature)."""
    from .inference import Predictor

    predictor = Predictor.from_adapters([str(request.adapter)], base_model=base_model, model_dir=model_dir,
                                        device=device, allow_other_base=allow_other_base)

    def posteriors_of(frame: pd.DataFrame, first_row: int) -> np.ndarray:
        texts = frame[request.text_column].fillna("").astype(str)
        empty = np.flatnonzero(~texts.str.strip().astype(bool).to_numpy())
        if len(empty):
            raise UserError(f"{request.data}: row {first_row + int(empty[0]) + 1}: the text is empty")
        logits = predictor.predict_logits(texts.tolist(), batch_size=batch_size)
        return softmax(logits, domain.temperature)

    return posteriors_of


# ---- the table --------------------------------------------------------------------------------------------
def bucket_keys(buckets: Buckets, request: Request) -> list[tuple]:
    """Every bucket to report, in order: per group, each bucket start from the first to the last (a span
    without posts gets a row with n = 0, so a gap shows as one)."""
    groups = sorted({g for _, g in buckets.parts}, key=lambda g: (g is None, g))
    if not request.time_column:
        return [(None, g) for g in groups]
    starts = [t for t, _ in buckets.parts]
    span = pd.date_range(min(starts), max(starts), freq=bucket_frequency(request.every))
    return [(t, g) for g in groups for t in span]


def bucket_table(buckets: Buckets, quantifier: Quantifier, request: Request, domain: Domain,
                 confidence: float) -> pd.DataFrame:
    names = domain.label_names
    rows = []
    for time, group in bucket_keys(buckets, request):
        row: dict = {}
        if request.time_column:
            row["bucket"] = time
        if request.group_column:
            row["group"] = group
        posteriors = buckets.posteriors((time, group))
        n = 0 if posteriors is None else len(posteriors)
        row["n"] = n
        estimate = quantifier.estimate(posteriors, confidence) if n else None
        for i, name in enumerate(names):
            row[f"counted_{name}"] = round(float(estimate.counted[i]), 6) if n else math.nan
        for i, name in enumerate(names):
            for column, values in (("share", "corrected"), ("low", "low"), ("high", "high")):
                row[f"{column}_{name}"] = round(float(getattr(estimate, values)[i]), 6) if n else math.nan
        row.update({"few_posts": n < MIN_BUCKET_POSTS, "clipped": bool(estimate.clipped) if n else False,
                    "domain_sample_small": quantifier.sample_small, "method": quantifier.method,
                    "domain": domain.name})
        rows.append(row)
    if not request.time_column and not request.group_column:
        rows[0] = {"bucket": ALL, **rows[0]}
    return pd.DataFrame(rows)


def write_report(frame: pd.DataFrame, path: str | Path, inputs=()) -> Path:
    """`frame` to `path` by its suffix (.csv, .json with the report's settings, .parquet), atomically; only a
    table of ours is ever replaced."""
    path = Path(path)
    kind = OUTPUT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown output type (use .csv, .json or .parquet)")
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_open(path, "wb", encoding=None, kind="report", inputs=inputs) as f:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), f)
    elif kind == "csv":
        with atomic_open(path, kind="report", inputs=inputs) as f:
            frame.to_csv(f, index=False)
    else:
        records = json.loads(frame.to_json(orient="records", date_format="iso", force_ascii=False))
        with atomic_open(path, kind="report", inputs=inputs) as f:
            json.dump({"report": dict(frame.attrs), "rows": records}, f, ensure_ascii=False, indent=1)
            f.write("\n")
    return path
