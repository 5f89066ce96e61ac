"""Streaming prediction that survives: kill -9 at a random chunk then --resume, for every output format; a Parquet
partial checked against its record and made durable; a run killed after its output was put in place; an output
path taken while the run wrote it (the finished result is kept); record files never written through a link."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_streaming import sample_texts, write_csv

pq = pytest.importorskip("pyarrow.parquet")

from weibo_sentiment.streaming.record import partial_paths  # noqa: E402

FORMATS = ["csv", "jsonl", "parquet"]


def lock_files(out: Path) -> list[Path]:
    """The writer lock beside `out` and the record of who holds it."""
    return [out.with_name(f".{out.name}.lock"), out.with_name(f".{out.name}.lock.json")]


def same_output(out: Path, reference: Path) -> None:
    """Byte for byte (CSV, JSONL); Parquet: the same table."""
    if out.suffix == ".parquet":
        assert pq.read_table(out).equals(pq.read_table(reference))
    else:
        assert out.read_bytes() == reference.read_bytes()


def leftovers(out: Path) -> list[str]:
    """The run's own files still beside `out`: partial, record, lock."""
    return [p.name for p in (*partial_paths(out), *lock_files(out)) if os.path.lexists(p)]


def predict_args(adapter: Path, source: Path, chunk: int = 4) -> list:
    return ["predict", "--adapter", adapter, "--input", source, "--chunk-size", str(chunk), "--id-column", "id"]


def with_reference(tmp_path: Path, adapter: Path, cli, fmt: str, rows: int) -> tuple[list, Path, Path]:
    """(predict arguments, output path, an uninterrupted run's output) for `rows` input rows."""
    source = write_csv(tmp_path / "in.csv", sample_texts(rows))
    out, reference = tmp_path / f"out.{fmt}", tmp_path / f"reference.{fmt}"
    args = predict_args(adapter, source)
    assert cli(*args, "--output", reference).code == 0
    return args, out, reference


@pytest.mark.parametrize("fmt", FORMATS)
def test_kill_9_at_a_random_chunk_then_resume_gives_the_uninterrupted_output(tmp_path, sample_adapter, cli, fmt):
    rng = random.Random(f"kill-9-{fmt}")
    source = write_csv(tmp_path / "in.csv", sample_texts(150) * 4)  # 600 rows: 150 chunks of 4
    kill_after = rng.randrange(2, 50)  # chunks recorded before the kill
    out, reference = tmp_path / f"out.{fmt}", tmp_path / f"reference.{fmt}"
    args = predict_args(sample_adapter, source)
    partial, record = partial_paths(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "weibo_sentiment", *map(str, args), "--output", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(record.read_text())["chunks"] >= kill_after:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert not out.exists() and partial.exists() and json.loads(record.read_text())["chunks"] >= kill_after
    assert lock_files(out)[0].exists()  # the lock file stays, released by the kernel: it blocks nothing

    assert cli(*args, "--output", reference).code == 0
    r = cli(*args, "--output", out, "--resume")
    assert r.code == 0, r.err
    assert "600 predictions written" in r.err and "resumed after row" in r.err
    same_output(out, reference)
    assert leftovers(out) == []


def interrupt_at(monkeypatch, chunk: int, then=None):
    """Stop the in-process run at its `chunk`-th chunk (Ctrl-C), or only call `then` there."""
    import weibo_sentiment.streaming.run as run

    real, calls = run._predict_chunk, []

    def predict(*a, **k):
        calls.append(1)
        if len(calls) == chunk:
            if then is None:
                raise KeyboardInterrupt
            then()
        return real(*a, **k)

    monkeypatch.setattr(run, "_predict_chunk", predict)


def test_parquet_resume_checks_the_chunk_files_against_the_record(tmp_path, sample_adapter, cli, monkeypatch):
    import pyarrow as pa

    source = write_csv(tmp_path / "in.csv", sample_texts(30))
    out = tmp_path / "out.parquet"
    args = predict_args(sample_adapter, source)
    partial, record = partial_paths(out)
    interrupt_at(monkeypatch, 5)
    assert cli(*args, "--output", out).code == 130
    monkeypatch.undo()
    assert json.loads(record.read_text())["rows_done"] == 16

    second = partial / "00000002.parquet"
    kept = second.read_bytes()
    second.unlink()
    r = cli(*args, "--output", out, "--resume")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert f"its partial output {partial} lacks 1 of its 4 chunk files (00000002.parquet)" in r.err
    table = pq.read_table(partial / "00000001.parquet")
    pq.write_table(table.slice(0, 2), second)  # 2 rows where 4 were written
    r = cli(*args, "--output", out, "--resume")
    assert r.code == 2 and f"its chunk files in {partial} hold 14 rows, the record says 16" in r.err
    second.write_bytes(b"PAR1 damaged")
    r = cli(*args, "--output", out, "--resume")
    assert r.code == 2 and f"the chunk file {second} is damaged" in r.err
    assert not out.exists()

    second.write_bytes(kept)
    assert cli(*args, "--output", out, "--resume").code == 0
    reference = tmp_path / "reference.parquet"
    assert cli(*args, "--output", reference).code == 0
    assert pq.read_table(out).equals(pq.read_table(reference)) and pq.read_table(out).num_rows == 30
    assert isinstance(pq.read_table(out), pa.Table)


def test_parquet_chunks_are_made_durable_before_the_record_claims_them(tmp_path, sample_adapter, cli, monkeypatch):
    import weibo_sentiment.streaming.record as record_module
    import weibo_sentiment.streaming.sink as sink_module
    from weibo_sentiment.durable import fsync_dir

    source = write_csv(tmp_path / "in.csv", sample_texts(12))
    out = tmp_path / "out.parquet"
    partial, record = partial_paths(out)
    events = []
    real_record = record_module.write_json_record

    def fsync_spy(path):
        events.append(("fsync", Path(path)))
        fsync_dir(path)

    def record_spy(path, content):
        if Path(path) == record:
            events.append(("record", content["chunks"]))
        real_record(path, content)

    monkeypatch.setattr(sink_module, "fsync_dir", fsync_spy, raising=False)
    monkeypatch.setattr(record_module, "write_json_record", record_spy)
    assert cli(*predict_args(sample_adapter, source), "--output", out).code == 0
    saves = [i for i, e in enumerate(events) if e[0] == "record"]
    assert [events[i][1] for i in saves][:3] == [1, 2, 3]
    for before, at in zip([-1, *saves], saves):
        if before >= 0 and events[before][1] == events[at][1]:
            continue  # the same chunks recorded again (with the final output's checksum)
        synced = {e[1] for e in events[before + 1:at] if e[0] == "fsync"}
        assert {partial, tmp_path} <= synced, f"chunk {events[at][1]}: the folder and its parent not fsynced"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_run_killed_after_its_output_was_put_in_place_completes(tmp_path, sample_adapter, cli, monkeypatch, fmt):
    args, out, reference = with_reference(tmp_path, sample_adapter, cli, fmt, 12)
    partial, record = partial_paths(out)
    real_unlink = Path.unlink

    def killed_at_the_record(self, missing_ok=False):  # the process dies as it removes the record
        if self == record:
            raise KeyboardInterrupt
        return real_unlink(self, missing_ok=missing_ok)

    for resume in (["--resume"], []):
        monkeypatch.setattr(Path, "unlink", killed_at_the_record)
        assert cli(*args, "--output", out).code == 130
        monkeypatch.undo()
        same_output(out, reference)
        assert record.exists()
        r = cli(*args, "--output", out, *resume)  # with --resume: done; without: a fresh run, as asked
        assert r.code == 0, r.err
        assert "12 predictions written" in r.err and (("resumed after row 12" in r.err) == bool(resume))
        same_output(out, reference)
        assert leftovers(out) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_output_taken_during_the_run_keeps_the_finished_result(tmp_path, sample_adapter, cli, monkeypatch, fmt):
    args, out, reference = with_reference(tmp_path, sample_adapter, cli, fmt, 14)
    interrupt_at(monkeypatch, 2, then=lambda: out.write_text("the user's own notes\n"))
    r = cli(*args, "--output", out)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.complete-")]
    assert len(kept) == 1 and kept[0].suffix == f".{fmt}"
    assert r.err.strip() == (f"error: {out}: another file took this path while the run was writing it and is not "
                             f"ours to replace; the complete result (14 predictions) is kept in {kept[0]}")
    assert out.read_text() == "the user's own notes\n"
    same_output(kept[0], reference)
    assert leftovers(out) == []


def test_record_files_are_never_written_through_a_planted_link(tmp_path, sample_adapter, cli):
    source = write_csv(tmp_path / "in.csv", sample_texts(12))
    out = tmp_path / "out.csv"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    record = partial_paths(out)[1]
    holder = lock_files(out)[1]
    for tmp in (record.with_name(record.name + ".tmp"), holder.with_name(holder.name + ".tmp")):
        tmp.symlink_to(victim)
    r = cli(*predict_args(sample_adapter, source), "--output", out)
    assert r.code == 0, r.err
    assert victim.read_text() == "precious\n"
    assert len(out.read_text(encoding="utf-8").splitlines()) > 12  # header + rows (one text spans two lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv", "victim.txt"]


def test_a_result_kept_aside_never_replaces_a_file(tmp_path, monkeypatch):
    import weibo_sentiment.output as output

    monkeypatch.setattr(output.time, "strftime", lambda fmt: "20260101-000000")
    taken = tmp_path / "out.complete-20260101-000000.csv"
    taken.write_text("someone else's\n")
    complete = tmp_path / ".out.csv.partial"
    complete.write_text("ours\n")
    kept = output.keep_aside(complete, tmp_path / "out.csv")
    assert kept == tmp_path / "out.complete-20260101-000000-1.csv" and kept.read_text() == "ours\n"
    assert taken.read_text() == "someone else's\n" and not complete.exists()
