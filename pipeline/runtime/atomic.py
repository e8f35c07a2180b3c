"""Atomic outputs: a file or a folder is either the previous complete one or the new complete one, never half.

Why: DVC reruns a stage that died, but between the death and the rerun another stage, a user or a
server reads what is there. A file is written to a temporary sibling (same folder, so same filesystem),
flushed to disk with `fsync`, then renamed over the target (`os.replace`, atomic on POSIX). A folder is
built as a temporary sibling too, then exchanged with the old one in one `renameat2(RENAME_EXCHANGE)`
call, so that at no instant is there no folder; where the kernel or filesystem lacks it, two renames
are the fallback, and `replace_directory` puts the old folder back if the second fails.

A write that fails with an `OSError` (disk full, a file past `RLIMIT_FSIZE`, a read-only folder) leaves
the target untouched, removes its temporary sibling and raises `OutputWriteError` naming the path.
Temporary siblings left by a killed process (`.NAME.tmp-PID-...`) are removed by the next write of the
same target, once their process is gone.

`PIPELINE_PAUSE_BEFORE_REPLACE=SUFFIX` (tests only) prints one line and sleeps right before a target
ending in SUFFIX is renamed into place: the moment a kill must not leave half an output, made exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.errors import OutputWriteError
from pipeline.runtime.processes import process_alive

PAUSE_VARIABLE = "PIPELINE_PAUSE_BEFORE_REPLACE"
PAUSED_LINE = "paused before replacing"
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{os.getpid()}-"


def _write_error(target: Path, error: OSError) -> OutputWriteError:
    reason = error.strerror or str(error)
    hint = {
        errno.ENOSPC: "free some disk space",
        errno.EFBIG: "free some disk space or raise the file size limit (ulimit -f)",
        errno.EDQUOT: "free some disk space within your quota",
        errno.EROFS: "make the folder writable",
        errno.EACCES: "make the folder writable",
        errno.EPERM: "make the folder writable",
    }.get(error.errno or 0, "check the disk and the folder's permissions")
    return OutputWriteError(f"cannot write {target}: {reason}; {hint}, then rerun (the previous {target} is kept)")


def _pause_for_tests(target: Path) -> None:
    suffix = os.environ.get(PAUSE_VARIABLE)
    if suffix and str(target).endswith(suffix):
        print(f"{PAUSED_LINE} {target}", file=sys.stderr, flush=True)
        time.sleep(600)


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Removes the temporary siblings of `target` whose writing process is gone (killed mid-write).

    Returns:
        The paths removed.
    """
    removed = []
    for sibling in Path(target).parent.glob(f".{Path(target).name}.tmp-*"):
        pid = sibling.name.removeprefix(f".{Path(target).name}.tmp-").split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


def _fsync_path(path: Path) -> None:
    """Flushes a file, or a folder's entries, to disk (a folder is opened read-only, which fsync allows)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(folder: Path) -> None:
    for parent, _, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(parent) / name)
        _fsync_path(Path(parent))


class Staged:
    """A file or folder written beside its target, then renamed into its place by `commit`.

    Why a class as well as the context managers: the register stage writes both exports first, registers
    the model, and only then puts the exports in place; an error of the registry in between must not be
    reported as a write error of the exports, and must leave the previous exports untouched.

    Args:
        target: The final path.
        directory: Whether the output is a folder (`path` is then an empty folder to fill).
        suffix: The temporary file's extension, for writers that insist on one (`.keras`).

    Raises:
        OutputWriteError: The temporary sibling could not be made (a read-only folder).
    """

    def __init__(self, target: str | Path, *, directory: bool = False, suffix: str = "") -> None:
        self.target, self.directory = Path(target), directory
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.target)
            prefix, folder = _temporary_prefix(self.target), self.target.parent
            if directory:
                self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
            else:
                handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
                os.close(handle)
                self.path = Path(name)
        except OSError as error:
            raise _write_error(self.target, error) from None

    def write(self, writer: Callable[[Path], object]) -> None:
        """Runs `writer(self.path)`; an OSError it raises becomes `OutputWriteError` naming the target."""
        try:
            writer(self.path)
        except OutputWriteError:
            raise
        except OSError as error:
            raise _write_error(self.target, error) from None

    def commit(self) -> Path:
        """Flushes the temporary output to disk and renames it into the target's place.

        Returns:
            The target.
        """
        try:
            if self.directory:
                _fsync_tree(self.path)
                _pause_for_tests(self.target)
                replace_directory(self.path, self.target)
            else:
                _fsync_path(self.path)
                _pause_for_tests(self.target)
                os.replace(self.path, self.target)
                _fsync_path(self.target.parent)
        except OSError as error:
            raise _write_error(self.target, error) from None
        finally:
            self.discard()
        return self.target

    def discard(self) -> None:
        """Removes the temporary output (after a commit, the folder it swapped out); the target is untouched."""
        if self.directory:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `target` to write the whole file to; on success it replaces `target`.

    For writers that take a path (Keras' `model.save`, Matplotlib's `savefig`, `np.save`). `suffix` keeps
    the extension a writer insists on (`.keras`). The block should only write the file: an OSError it
    raises is reported as a failure to write `target`.

    Raises:
        OutputWriteError: Writing failed with an OSError; `target` is unchanged and the temporary file gone.
    """
    with _staged(Staged(target, suffix=suffix)) as path:
        yield path


@contextlib.contextmanager
def _staged(staged: Staged) -> Iterator[Path]:
    """Yields the staged path; commits it when the block succeeds, turning an OSError into `OutputWriteError`."""
    try:
        try:
            yield staged.path
        except OutputWriteError:
            raise
        except OSError as error:
            raise _write_error(staged.target, error) from None
        staged.commit()
    finally:
        staged.discard()


def write_text(target: str | Path, text: str) -> Path:
    """Writes `text` (UTF-8) to `target` atomically; see `atomic_path` for the guarantees and errors."""
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(target)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside `target`; once the block succeeds it takes `target`'s place.

    Raises:
        OutputWriteError: Building the folder failed with an OSError; `target` is unchanged.
    """
    with _staged(Staged(target, directory=True)) as path:
        yield path


def _exchange(first: Path, second: Path) -> bool:
    """Swaps two paths in one step with Linux's renameat2(RENAME_EXCHANGE); False where it is not available.

    Why ctypes: the standard library has no binding for it (os.replace cannot replace a non-empty folder).
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    status = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if status == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_directory(source: str | Path, target: str | Path) -> None:
    """Puts the folder `source` in the place of `target` (which may not exist); `source` then holds the old one.

    Atomic where `renameat2(RENAME_EXCHANGE)` exists (Linux 3.15+ on ext4, xfs, btrfs, tmpfs, overlayfs):
    readers see the old folder or the new, never none. Elsewhere, two renames with a rollback.
    """
    source, target = Path(source), Path(target)
    if not target.exists():
        os.replace(source, target)
        _fsync_path(target.parent)
        return
    if not _exchange(source, target):
        previous = source.with_name(source.name + "-previous")
        os.replace(target, previous)
        try:
            os.replace(source, target)
        except BaseException:
            os.replace(previous, target)
            raise
        os.replace(previous, source)
    _fsync_path(target.parent)
