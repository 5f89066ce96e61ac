"""One writer at a time: an OS-level lock on each streaming output and each checkpoint directory, held for the
whole run.

The lock is `filelock`'s (flock on POSIX) on a file beside the target (`.NAME.lock`); the kernel releases it when
the process dies, so a run killed with SIGKILL never blocks the next one. Who holds it (pid, host, since when,
command) is written beside it (`.NAME.lock.json`) for the refusal to name: the lock file itself may be
truncated by a contender's open (filelock < 4), so it carries nothing.

The lock file is removed on release, while still locked. A contender that opened the old file just before then
holds a lock on a deleted inode; so after locking, the file at the path must still be the one opened before the
lock was asked for (it cannot be replaced by the same inode: the open descriptor keeps that inode alive), and
otherwise the lock is let go and asked for again.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from .durable import write_json_record
from .errors import UserError

# A process just killed holds its lock until the kernel has torn it down (for a large process, under load, a
# second or more): a held lock is asked for again for this long before the run is refused.
WAIT_S = 5.0
RETRY_S = 0.05
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def lock_paths(target: Path) -> tuple[Path, Path]:
    """(lock file, holder record) of `target`."""
    return target.with_name(f".{target.name}.lock"), target.with_name(f".{target.name}.lock.json")


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(sys.argv)[:300]}


def _read_holder(path: Path) -> dict | None:
    """The holder's record, unless it is missing or left by a process of this host that is gone (killed before
    its successor wrote its own)."""
    try:
        with path.open("rb") as f:
            record = json.loads(f.read(4096))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    if os.name == "posix" and record.get("host") == socket.gethostname():  # (Windows' os.kill would end it)
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return None
        except OSError:  # alive, another user's
            pass
    return record


def _described(holder: dict) -> str:
    return (f"process {holder.get('pid')} on {holder.get('host')}, writing since {holder.get('since')}"
            + (f": {holder['command']}" if holder.get("command") else ""))


def _try_lock(lock_file: Path) -> FileLock | None:
    """The lock on `lock_file` if it is free and still the file at that path, else None (held, or replaced
    while it was being locked)."""
    try:
        pin = os.open(lock_file, os.O_RDONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise UserError(f"{lock_file}: cannot create the lock file ({e.strerror}); it must be an ordinary file "
                        "in a folder this user may write") from None
    try:
        lock = FileLock(str(lock_file), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return None
        try:
            same = os.path.samestat(os.lstat(lock_file), os.fstat(pin))
        except FileNotFoundError:
            same = False
        if not same:  # the holder before us removed it as we locked it: try again on the new one
            lock.release()
            return None
        return lock
    finally:
        os.close(pin)


@contextmanager
def one_writer(target: str | Path, what: str) -> Iterator[None]:
    """Hold the lock of `target` for the block; refuse (UserError naming the holder) if another process still holds
    it after `WAIT_S` seconds. `what` names the target in the refusal (e.g. "--output out.csv")."""
    target = Path(target)
    lock_file, holder_file = lock_paths(target)
    deadline = time.monotonic() + WAIT_S
    while (lock := _try_lock(lock_file)) is None:
        if time.monotonic() > deadline:
            holder = _read_holder(holder_file)
            by = _described(holder) if holder is not None else "a process that has not said which"
            raise UserError(f"{what}: another run is writing it ({by}); wait for it to end, or choose another "
                            f"path (a run killed outright releases its lock by itself)")
        time.sleep(RETRY_S)
    try:
        write_json_record(holder_file, _holder())
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        with suppress(OSError):  # (Windows: filelock removes it on release)
            lock_file.unlink()  # while still locked: see the module's docstring
        lock.release()
