"""The one exception type that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, flag, model directory), not a bug.

    The message is a single sentence meant to be shown as-is, without a traceback.
    """


def file_error(path: object, problem: str, line: int | None = None) -> UserError:
    """Build the standard `FILE: line N: problem` message."""
    where = f"{path}: line {line}: " if line is not None else f"{path}: "
    return UserError(where + problem)
