"""`PipelineError`, the base of every error a user can fix: a setting, the data, the hardware, a store.

Why one base: the stages and the console commands catch this one class, print its message as one line
on stderr and exit with code 2 (`USER_ERROR_EXIT`). Every other exception is a bug and keeps its
traceback, wherever it is raised. Each subclass names what went wrong and what is allowed; most also
derive from the builtin their kind of mistake has always been (`ValueError`, `FileNotFoundError`, ...),
so code that catches those keeps working.
"""

from __future__ import annotations

# The exit code of a mistake the user can fix (DVC stops on any non-zero code and shows stderr).
USER_ERROR_EXIT = 2


class PipelineError(Exception):
    """A mistake the user can fix; its message is one line naming the key or file, the value and the fix."""


class OutputWriteError(PipelineError, OSError):
    """An output could not be written (disk full, file too large, read-only folder); the message names the path.

    Why its own class: the fix is the user's (free space, permissions), and whoever wrote the output
    kept the previous one intact (`pipeline.runtime.atomic`), so one line is all there is to say.
    """
