"""pipeline/runtime/processes.py: a process is alive while it runs, whoever owns it, and not once reaped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.runtime import processes
from pipeline.runtime.processes import process_alive


def test_this_process_is_alive() -> None:
    assert process_alive(os.getpid()) is True


def test_a_running_child_is_alive_and_a_reaped_one_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(child.pid) is True
    finally:
        child.kill()
        child.wait()
    assert process_alive(child.pid) is False


def test_a_process_of_another_user_is_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(pid: int, signal_number: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(processes.os, "kill", refuse)
    assert process_alive(12345) is True
