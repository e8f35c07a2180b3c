"""Drops TensorFlow's known, harmless C++ start-up lines from a stage's stderr; everything else passes.

Why a filter process: TensorFlow 2.21 writes these lines from C++ before absl's logging is set up, so
`TF_CPP_MIN_LOG_LEVEL` (which does silence later INFO and WARNING lines) cannot reach them, and no
Python logging setting can either. They go to file descriptor 2 directly. The stage therefore points
descriptor 2 at a pipe read by this small child process, which forwards every line but the listed
ones. A child, not a thread: when the stage dies (a C++ abort, SIGKILL) the child still reads what was
written up to that moment and forwards it, so a crash's last words are never swallowed.

Run as `python -m pipeline.runtime.native_log`; `install` and `uninstall` are what a stage calls.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# Each is one line TensorFlow prints on every start on a machine like ours and that asks nothing of
# the user. Anything not matching in full is forwarded unchanged.
_ALWAYS_HARMLESS = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    # The oneDNN notice: float round-off may differ from a build without oneDNN, which nobody compares with.
    r"I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\. .*",
    r"I\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.",
    # tf.data in TF 2.21 sets an attribute its own MapDataset kernel does not declare; nothing a user can
    # change, and the map runs as it should (the pipeline's throughput is measured in bench/).
    r"E\d{4} [\d:. ]+\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool .*",
)
# Only harmless where the machine has no NVIDIA device at all: with one, a failed cuInit is a broken
# driver the user must hear about.
_HARMLESS_WITHOUT_GPU = (r"E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*",)
# A partial line that may still become one of the above is held back until its newline arrives.
_MAYBE_NOISE_PREFIX = re.compile(rb"^(W|WA|WAR|WARN|WARNI|WARNIN|WARNING.*|[IE]\d{0,4}(?: .*)?)$", re.DOTALL)


def harmless_patterns(*, has_nvidia_device: bool) -> list[re.Pattern[bytes]]:
    """The lines to drop, compiled for bytes.

    Args:
        has_nvidia_device: Whether the machine has an NVIDIA device node (cuInit failures then matter).

    Returns:
        The patterns; a line is dropped when one matches it in full.
    """
    texts = _ALWAYS_HARMLESS if has_nvidia_device else _ALWAYS_HARMLESS + _HARMLESS_WITHOUT_GPU
    return [re.compile(text.encode()) for text in texts]


def filter_stream(source: int, sink: int, patterns: list[re.Pattern[bytes]]) -> None:
    """Copies `source` to `sink` until end of file, leaving out whole lines that match a pattern.

    Why byte chunks, not lines: a progress bar redraws one line with carriage returns and must show up
    at once, so any partial text that cannot become a dropped line is forwarded as it arrives.

    Args:
        source: File descriptor to read.
        sink: File descriptor to write.
        patterns: Lines (without their newline) to drop.
    """
    pending = b""
    while chunk := os.read(source, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not any(pattern.fullmatch(line) for pattern in patterns))
        if pending and not _MAYBE_NOISE_PREFIX.match(pending):
            kept, pending = kept + pending, b""
        if kept:
            os.write(sink, kept)
    if pending and not any(pattern.fullmatch(pending) for pattern in patterns):
        os.write(sink, pending)


class NativeLogFilter:
    """Descriptor 2 of this process, pointed at the filter child; `uninstall` puts it back."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self._original = os.dup(2)
        self._child = subprocess.Popen(
            [sys.executable, "-m", "pipeline.runtime.native_log"],
            stdin=subprocess.PIPE,
            stdout=self._original,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if self._child.stdin is None:
            raise RuntimeError("the stderr filter has no input pipe")
        os.dup2(self._child.stdin.fileno(), 2)
        self._child.stdin.close()

    def uninstall(self) -> None:
        """Restores descriptor 2 and waits until the child has forwarded everything written so far."""
        sys.stderr.flush()
        os.dup2(self._original, 2)
        os.close(self._original)
        self._child.wait(timeout=10)


def quiet_libraries() -> None:
    """Silences what the libraries print on their own before they load: TensorFlow's later C++ INFO and
    WARNING lines, MLflow's telemetry and its artifact-download progress bars (a bar per model load)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def install() -> NativeLogFilter | None:
    """Filters this process's descriptor 2, unless `PIPELINE_RAW_STDERR=1` asks for everything.

    Returns:
        The installed filter, or None when raw output was asked for.
    """
    if os.environ.get("PIPELINE_RAW_STDERR") == "1":
        return None
    return NativeLogFilter()


def main() -> None:
    """The child: stdin to stdout, TensorFlow's harmless start-up lines left out."""
    has_nvidia_device = Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()
    filter_stream(0, 1, harmless_patterns(has_nvidia_device=has_nvidia_device))


if __name__ == "__main__":
    main()
