"""pipeline/runtime/atomic.py: a target is the old complete output or the new one, and a failed write says where."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import OutputWriteError
from pipeline.runtime import atomic


def test_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "metrics.json"
    atomic.write_text(target, "old\n")
    atomic.write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(path.name for path in target.parent.iterdir()) == ["metrics.json"]


def test_a_failing_writer_keeps_the_previous_file_and_names_it(tmp_path: Path) -> None:
    target = tmp_path / "model.keras"
    target.write_text("previous")

    def fail(path: Path) -> None:
        path.write_text("half")
        raise OSError(28, "No space left on device")

    staged = atomic.Staged(target, suffix=".keras")
    with pytest.raises(OutputWriteError, match=f"^cannot write {target}: No space left on device; free some disk"):
        staged.write(fail)
    staged.discard()
    assert target.read_text() == "previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.keras"]


def test_a_folder_is_swapped_whole(tmp_path: Path) -> None:
    target = tmp_path / "saved_model"
    with atomic.atomic_directory(target) as folder:
        (folder / "saved_model.pb").write_text("one")
    with atomic.atomic_directory(target) as folder:
        (folder / "saved_model.pb").write_text("two")
        (folder / "variables").mkdir()
    assert (target / "saved_model.pb").read_text() == "two"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved_model"]

    def broken_export() -> None:
        with atomic.atomic_directory(target) as folder:
            (folder / "saved_model.pb").write_text("three")
            raise ValueError("broken")

    with pytest.raises(ValueError, match="^broken$"):
        broken_export()
    assert (target / "saved_model.pb").read_text() == "two"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved_model"]


def test_the_two_rename_fallback_swaps_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)
    target, source = tmp_path / "out", tmp_path / "new"
    target.mkdir()
    (target / "file").write_text("old")
    source.mkdir()
    (source / "file").write_text("new")
    atomic.replace_directory(source, target)
    assert ((target / "file").read_text(), (source / "file").read_text()) == ("new", "old")


def test_a_dead_writers_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "manifest.csv"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".manifest.csv.tmp-{finished.stdout.strip()}-abc"
    stale.write_text("half")
    mine = tmp_path / f".manifest.csv.tmp-{os.getpid()}-xyz"  # a live process's: kept
    mine.write_text("busy")
    atomic.write_text(target, "rows\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == [mine.name, "manifest.csv"]


def test_a_file_past_the_size_limit_fails_with_the_path(tmp_path: Path) -> None:
    # RLIMIT_FSIZE in a child (CPython ignores SIGXFSZ, so the write fails with EFBIG).
    target = tmp_path / "model.keras"
    target.write_text("previous")
    code = (
        "import resource, sys\n"
        "from pipeline.runtime import atomic\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        f"    atomic.write_text({str(target)!r}, 'x' * 5000)\n"
        "except OSError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == (
        f"OutputWriteError cannot write {target}: File too large; free some disk space or raise the file size "
        f"limit (ulimit -f), then rerun (the previous {target} is kept)\n"
    )
    assert target.read_text() == "previous"
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] != 1000
