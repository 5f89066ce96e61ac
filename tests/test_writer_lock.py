"""The writer lock (`locks.one_writer`): refused while another process holds it, naming that process; released
by the kernel when the holder is killed; removed on release; safe when the lock file is replaced under it; never
opened through a planted link."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_concurrency import ENV, holder_line
from weibo_sentiment.errors import UserError
from weibo_sentiment.locks import lock_paths, one_writer

HOLD = """
import sys, time
from weibo_sentiment.locks import one_writer
with one_writer(sys.argv[1], "the target"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_killed_holder_blocks_nothing_and_a_released_lock_leaves_nothing(tmp_path):
    target = tmp_path / "out.csv"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target), "120"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as refused:
            with one_writer(target, "--output out.csv"):
                pass
        assert str(refused.value).startswith("--output out.csv: " + holder_line(holder.pid))
        assert "\n" not in str(refused.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
    assert all(p.exists() for p in lock_paths(target))  # left by the kill...
    with one_writer(target, "--output out.csv"):  # ...and blocking nothing
        assert json.loads(lock_paths(target)[1].read_text())["pid"] == os.getpid()
    assert list(tmp_path.iterdir()) == []


def test_a_lock_let_go_within_the_wait_is_taken(tmp_path):
    # A holder just killed (or ending) keeps its lock until the kernel has torn it down: that is waited for.
    target = tmp_path / "out.csv"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target), "1"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with one_writer(target, "--output out.csv"):
            assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_replaced_while_it_is_locked_is_locked_again(tmp_path, monkeypatch):
    import filelock

    import weibo_sentiment.locks as locks

    target = tmp_path / "out.csv"
    lock_file = lock_paths(target)[0]
    replaced = []

    class Racing(filelock.FileLock):
        def acquire(self, *a, **k):  # the previous holder removes the file between our open and our lock
            if not replaced:
                replaced.append(1)
                lock_file.unlink()
                lock_file.touch()
            return super().acquire(*a, **k)

    monkeypatch.setattr(locks, "FileLock", Racing)
    with one_writer(target, "x"):
        assert replaced
        fd = os.open(lock_file, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the file at the path is the one locked
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_a_link_planted_at_the_lock_file_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    target = tmp_path / "out.csv"
    lock_paths(target)[0].symlink_to(victim)
    with pytest.raises(UserError, match="cannot create the lock file"):
        with one_writer(target, "--output out.csv"):
            pass
    assert victim.read_text() == "precious\n"
