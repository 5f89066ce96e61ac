"""Durable files: each written new beside its target (never through a link planted at the temporary name),
fsynced and renamed into place, so a process killed at any moment leaves the target whole, old or new; and the
directory fsyncs that make renames and removals survive a power cut. Progress records, checkpoint completion
records, Parquet chunk files and shards are written so."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import UserError


def fsync_dir(path: Path) -> None:
    """Make the renames and removals in the directory `path` durable (where the system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_exclusive(path: Path) -> BinaryIO:
    """`path` opened for writing as a new file (O_CREAT|O_EXCL|O_NOFOLLOW): a symbolic link planted at the name
    cannot redirect the write. A leftover there (a killed run's, or a planted link) is removed first: no other run
    of ours writes that name (the callers hold the target's writer lock, `locks.one_writer`, or write names of
    their own)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        if path.is_dir() and not path.is_symlink():
            raise UserError(f"{path}: a folder is in the way of a temporary file of this run; remove it") from None
        path.unlink()  # the link itself, never what it points to
        fd = os.open(path, flags, 0o666)
    return os.fdopen(fd, "wb")


@contextmanager
def synced_file(path: Path) -> Iterator[BinaryIO]:
    """A new file beside `path` (`NAME.tmp`, see `create_exclusive`) to write; when the block completes it is
    fsynced and renamed onto `path`, so a process killed at any moment leaves `path` whole, old or new."""
    tmp = path.with_name(path.name + ".tmp")
    f = create_exclusive(tmp)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_record(path: Path, record: dict) -> None:
    """`record` as JSON at `path`, fsynced and atomically replaced: a progress or ownership record that a
    later run (a resume) must find whole."""
    with synced_file(path) as f:
        f.write((json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    fsync_dir(path.parent)
