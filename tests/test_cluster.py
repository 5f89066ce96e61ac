"""`predict --engine ray` / weibo_sentiment.cluster: shards scored by a pool of Ray actors on a local Ray."""

from __future__ import annotations

import builtins
import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray  # `make install` installs the cluster extra: a missing Ray fails here, it is never skipped

from tests.conftest import SAMPLE
from weibo_sentiment.cluster import MISSING_RAY
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
    assert sorted(row["mid"] for row in rows) == list(range(1000, 1300))
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
