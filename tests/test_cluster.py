"""`predict --engine ray` / weibo_sentiment.cluster: shards scored by a pool of Ray actors on a local Ray."""

from __future__ import annotations

import builtins
import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray  # `make install` installs the cluster extra: a missing Ray fails here, it is never skipped
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import SAMPLE
from weibo_sentiment.cluster import MISSING_RAY, score_files
from weibo_sentiment.errors import UserError
from weibo_sentiment.output import SCORES_FILE

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray Data's own settings


@pytest.fixture(scope="session")
def local_ray():
    """One small local Ray for the whole session (2 CPUs, no dashboard), shut down at the end. The actors take
    half a CPU each, so that reading the shards always has a CPU left."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def texts(n: int) -> list[str]:
    with open(SAMPLE, encoding="utf-8", newline="") as f:
        base = [row["review"] for row in csv.DictReader(f)]
    return [f"{base[i % len(base)]} #{i}" for i in range(n)]


def write_shards(directory: Path, rows: list[dict], shards: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with open(directory / f"part-{s}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows[s::shards])
    return directory


def read_output(directory: Path) -> list[dict]:
    files = sorted(p for p in directory.iterdir() if p.suffix == ".parquet")
    return [row for p in files for row in pq.read_table(p).to_pylist()]


def test_two_actors_score_every_row_once(tmp_path, local_ray, sample_adapter, cli):
    from weibo_sentiment.inference import Predictor

    items = texts(300)
    shards = write_shards(tmp_path / "in", [{"mid": 1000 + i, "review": t} for i, t in enumerate(items)])
    out = tmp_path / "scores"
    r = cli("predict", "--engine", "ray", "--adapter", sample_adapter, "--input", f"{shards}/*.csv",
            "--output", out, "--workers", "2", "--cpus-per-worker", "0.5", "--id-column", "mid",
            "--min-confidence", "0.6", "--quiet", "--chunk-size", "64")
    assert r.code == 0, r.err
    rows = read_output(out)
    assert sorted(row["mid"] for row in rows) == sorted(str(i) for i in range(1000, 1300))  # CSV ids: text
    marker = json.loads((out / SCORES_FILE).read_text())
    assert marker["rows"] == 300 and marker["adapters"] == [str(sample_adapter)]
    expected = {p.text: p for p in Predictor.from_adapters([sample_adapter], device="cpu").predict(items)}
    assert list(rows[0])[:6] == ["mid", "text", "label", "label_name", "confidence", "uncertain"]
    for row in rows:
        p = expected[row["text"]]
        assert row["label"] == p.label and row["uncertain"] == (p.confidence < 0.6)
        for name, prob in p.probabilities.items():
            assert abs(row[f"prob_{name}"] - prob) < 1e-5
    # A second run replaces our own earlier output.
    r = cli("predict", "--engine", "ray", "--adapter", sample_adapter, "--input", shards, "--output", out,
            "--format", "csv", "--quiet", "--cpus-per-worker", "0.5")
    assert r.code == 0, r.err
    assert {p.suffix for p in out.iterdir()} == {".csv", ".json"}


def test_routing_column(tmp_path, local_ray, sample_adapter, adapter_copy):
    from weibo_sentiment.cluster import predict_dataset
    from weibo_sentiment.inference import Predictor

    items = texts(40)
    routes = ["a", "b", ""] * 13 + ["b"]
    ds = ray.data.from_items([{"review": t, "adapter": a} for t, a in zip(items, routes, strict=True)])
    scored = predict_dataset(ds, [f"a={sample_adapter}", f"b={adapter_copy}"], use="b", workers=1, cpus_per_worker=0.5,
                             batch_size=16).take_all()
    predictor = Predictor.from_adapters({"a": sample_adapter, "b": adapter_copy}, device="cpu")
    predictor.use("b")
    expected = {p.text: p for p in predictor.predict_routed(items, routes)}
    assert len(scored) == 40
    assert sorted(r["adapter"] for r in scored) == sorted(x or "b" for x in routes)
    for row in scored:
        p = expected[row["text"]]
        assert row["adapter"] == p.adapter and abs(row["confidence"] - p.confidence) < 1e-5


def test_unknown_routed_adapter_is_a_user_error(tmp_path, local_ray, sample_adapter, cli):
    shards = write_shards(tmp_path / "in", [{"review": "好", "adapter": "nope"}, {"review": "差", "adapter": ""}])
    r = cli("predict", "--engine", "ray", "--adapter", f"a={sample_adapter}", "--input", shards,
            "--output", tmp_path / "out", "--quiet", "--workers", "1", "--cpus-per-worker", "0.5")
    assert r.code == 2 and "unknown adapter 'nope'" in r.err, r.err
    assert not (tmp_path / "out").exists()


def test_refuses_a_foreign_output_dir(tmp_path, sample_adapter, cli):
    shards = write_shards(tmp_path / "in", [{"review": t} for t in texts(4)])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    r = cli("predict", "--engine", "ray", "--adapter", sample_adapter, "--input", shards, "--output", foreign)
    assert r.code == 2 and "already exists and is not scores written by" in r.err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_missing_ray_says_how_to_install(tmp_path, sample_adapter, cli, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    r = cli("predict", "--engine", "ray", "--adapter", sample_adapter, "--input", SAMPLE, "--output", tmp_path / "o")
    assert r.code == 2 and r.err.strip() == f"error: {MISSING_RAY}"


# ---- every row out once, ids as the local engine writes them ----------------------------------------------------
ON_RAY = {"workers": 1, "cpus_per_worker": 0.5, "quiet": True}


def read_rows(path: Path) -> list[dict]:
    """The rows of a predictions file, or of every shard in a directory of them."""
    if path.is_dir():
        return [row for p in sorted(path.iterdir()) if p.name != SCORES_FILE for row in read_rows(p)]
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def error_line(r) -> str:
    """The CLI's error line, which must be the last thing it printed and the only line that starts `error:`."""
    lines = [line for line in r.err.splitlines() if line.startswith("error: ")]
    assert r.code == 2 and len(lines) == 1 and r.err.rstrip().endswith(lines[0]), r.err
    return lines[0]


def test_csv_ids_stay_text_byte_for_byte(tmp_path, local_ray, sample_adapter, cli):
    # numbers to a type-inferring reader (00123 → 123.0, a blank → NaN): text to both engines
    ids = ["00123", "", "007", "1e3", "-0", " 42 ", "0", "12345678901234567890123", "+5", "1.50"]
    source = tmp_path / "in.csv"
    with source.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["id", "review"]] + [[i, f"{t} #{n}"] for n, (i, t) in enumerate(zip(ids, texts(10)))])
    for fmt in ("parquet", "csv"):
        out = tmp_path / f"scores-{fmt}"
        r = cli("predict", "--engine", "ray", "--adapter", sample_adapter, "--input", source, "--output", out,
                "--format", fmt, "--id-column", "id", "--workers", "1", "--cpus-per-worker", "0.5", "--quiet")
        assert r.code == 0, r.err
        local = tmp_path / f"local.{fmt}"
        assert cli("predict", "--adapter", sample_adapter, "--input", source, "--output", local, "--id-column", "id",
                   "--quiet").code == 0
        got = {row["text"]: row["id"] for row in read_rows(out)}
        assert got == {row["text"]: row["id"] for row in read_rows(local)}
        assert sorted(got.values()) == sorted(i.strip() for i in ids)  # " 42 " is stripped by both engines


def test_a_row_over_one_mib_is_scored(tmp_path, local_ray, sample_adapter, cli):
    """Rows of any length: no parser block size for a row to straddle (pyarrow's is 1 MiB)."""
    wide = ["a" * 120_000] * 9  # 1.08 MB in fields under the CSV field limit
    source = tmp_path / "in.csv"
    with source.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "review"] + [f"extra{i}" for i in range(len(wide))])
        w.writerows([str(i), t] + [""] * len(wide) for i, t in enumerate(texts(40)))
        w.writerow(["long", "好" * 40_000] + wide)
        w.writerows([str(i), t] + [""] * len(wide) for i, t in enumerate(texts(5), start=40))
    assert source.stat().st_size > 1 << 20
    out = tmp_path / "scores"
    r = cli("predict", "--engine", "ray", "--adapter", sample_adapter, "--input", source, "--output", out,
            "--id-column", "id", "--workers", "1", "--cpus-per-worker", "0.5", "--quiet")
    assert r.code == 0, r.err
    rows = read_rows(out)
    assert sorted(row["id"] for row in rows) == sorted([str(i) for i in range(45)] + ["long"])
    # A single field over the CSV module's limit is refused by both engines, naming its line.
    big = tmp_path / "big.csv"
    big.write_text("id,review\n1,短\n2," + "好" * 400_000 + "\n", encoding="utf-8")
    r = cli("predict", "--engine", "ray", "--adapter", sample_adapter, "--input", big, "--output",
            tmp_path / "big-out", "--workers", "1", "--cpus-per-worker", "0.5", "--quiet")
    assert error_line(r) == f"error: {big}: line 3: malformed csv: field larger than field limit (131072)"
    assert not (tmp_path / "big-out").exists()


def test_rows_the_driver_cannot_see_fail_the_run(tmp_path, local_ray, sample_adapter, cli, monkeypatch):
    """A worker that writes its shard to a disk of its own: simulated by deleting one shard as the write ends."""
    real_write = ray.data.Dataset.write_datasink

    def write_elsewhere(self, datasink, *args, **kwargs):
        real_write(self, datasink, *args, **kwargs)
        shards = sorted(p for p in tmp_path.glob(".scores.*/**/*") if p.suffix == ".parquet")
        shards[0].unlink()

    monkeypatch.setattr(ray.data.Dataset, "write_datasink", write_elsewhere)
    shards = write_shards(tmp_path / "in", [{"mid": i, "review": t} for i, t in enumerate(texts(60))], shards=3)
    r = cli("predict", "--engine", "ray", "--adapter", sample_adapter, "--input", shards, "--output",
            tmp_path / "scores", "--workers", "1", "--cpus-per-worker", "0.5", "--chunk-size", "16", "--quiet")
    line = error_line(r)
    assert "the workers wrote 60 rows but" in line and "storage that every worker and the driver can see" in line
    assert not (tmp_path / "scores").exists()


def test_a_worker_error_is_one_line(tmp_path, local_ray, sample_adapter, cli):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "review": "好"}\n{"id": "b", "review": "差"}\n', encoding="utf-8")
    r = cli("predict", "--engine", "ray", "--adapter", sample_adapter, "--input", source, "--output",
            tmp_path / "out", "--id-column", "id", "--workers", "1", "--cpus-per-worker", "0.5", "--quiet")
    assert error_line(r) == (f"error: {source}: line 2: the 'id' value is text but line 1 has an integer; "
                             "--engine ray needs one kind of value per column (the local engine takes mixed ones)")


# ---- property: Ray writes the rows the local engine writes, for the same shards ----------------------------
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(str.strip)
TEXTS = st.one_of(TEXT, st.sampled_from(["好评 😀", "差评，不推荐\n第二行", ' "quoted", comma ', "\ufeff开头"]))
IDS = {
    "zeros": st.from_regex(r"\A0[0-9]{1,6}\Z"),
    "text": st.one_of(st.just(""), st.just("  "), TEXT),
    "int": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "mixed": st.one_of(st.integers(-5, 5), st.from_regex(r"\A0[0-9]{1,3}\Z"), st.none()),
}
table = st.sampled_from(sorted(IDS)).flatmap(
    lambda kind: st.tuples(st.just(kind), st.lists(st.tuples(st.one_of(st.none(), IDS[kind]), TEXTS),
                                                   min_size=1, max_size=12)))


@pytest.fixture(scope="module")
def local_predictor(sample_adapter):
    from weibo_sentiment.inference import Predictor

    return Predictor.from_adapters([sample_adapter], device="cpu")


def write_table(path: Path, rows: list[tuple]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": i, "review": t}, ensure_ascii=False) + "\n" for i, t in rows),
                        encoding="utf-8")
        return
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("id", "review"), *(("" if i is None else i, t) for i, t in rows)])


def comparable(rows: list[dict]) -> list[tuple]:
    def key(row):
        return (repr(row["id"]), row["text"], str(row["label"]), row["label_name"], float(row["confidence"]))

    return sorted(key(row) for row in rows)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@settings(max_examples=1, deadline=None, derandomize=True, database=None,  # (each example is a Ray run)
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=table, fmt=st.sampled_from(["parquet", "csv", "jsonl"]))
@example(case=("zeros", [("00123", "好评 😀"), ("", "差评"), (None, "中"), ("0", ' "q", c ')]), fmt="csv")
@example(case=("mixed", [(1, "好"), ("01", "差"), (None, "中")]), fmt="parquet")  # JSONL: refused on Ray
def test_ray_writes_the_rows_the_local_engine_writes(tmp_path_factory, local_ray, sample_adapter, local_predictor,
                                                     suffix, case, fmt):
    from weibo_sentiment.streaming.run import predict_file

    kind, rows = case
    folder = tmp_path_factory.mktemp("prop")
    shards = [folder / "in" / f"part-{n}{suffix}" for n in range(2)]
    shards[0].parent.mkdir()
    write_table(shards[0], rows[: len(rows) // 2 + 1])
    write_table(shards[1], rows[len(rows) // 2 + 1:] or rows[:1])
    local_fmt = "jsonl" if fmt == "parquet" else fmt  # (local Parquet output of typed ids: issue 17's types fix)
    expected: list[dict] | UserError = []
    try:
        for n, shard in enumerate(shards):
            out = folder / f"local-{n}.{local_fmt}"
            predict_file(local_predictor, shard, out, id_column="id", chunk_size=5, progress=False)
            expected += read_rows(out)
    except UserError as e:
        expected = e
    try:
        score_files(folder / "in", folder / "ray", [sample_adapter], fmt=fmt, id_column="id", batch_size=4, **ON_RAY)
    except UserError as e:
        message = str(e)
        assert "\n" not in message and "Traceback" not in message, message
        if isinstance(expected, UserError):  # the same reader refuses the same file the same way
            assert message == str(expected)
        else:  # only what an arrow column cannot hold: JSON values of several kinds in one column
            assert suffix == ".jsonl" and kind == "mixed" and "--engine ray" in message, message
        return
    assert not isinstance(expected, UserError), f"Ray wrote what the local engine refused: {expected}"
    got = read_rows(folder / "ray")
    if fmt == "csv":
        assert [r["id"] for r in got] and all(isinstance(r["id"], str) for r in got)
    assert len(got) == len(expected)
    for a, b in zip(comparable(got), comparable(expected)):
        assert a[:4] == b[:4]
        assert abs(a[4] - b[4]) < 1e-5
