from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from pipeline.runtime.native_log import filter_stream, harmless_patterns

REPO = Path(__file__).resolve().parents[2]
# Verbatim from a `make run` on this stack (TensorFlow 2.21, no GPU).
NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1795786835.108760    2165 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders. To "
    b"turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    b"I0000 00:00:1795786835.109691    2165 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    b"not be used.",
    b"E0000 00:00:1795786914.729105    2165 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool "
    b"which is not in the op definition: Op<name=MapDataset; signature=input_dataset:variant>",
]
CUINIT = (
    b"E0000 00:00:1795786837.940104    2165 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    b"call to cuInit: UNKNOWN ERROR (303)"
)


def _filtered(chunks: list[bytes], *, has_nvidia_device: bool = False) -> bytes:
    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()
    worker = threading.Thread(
        target=filter_stream, args=(source_read, sink_write, harmless_patterns(has_nvidia_device=has_nvidia_device))
    )
    worker.start()
    for chunk in chunks:
        os.write(source_write, chunk)
    os.close(source_write)
    worker.join()
    os.close(sink_write)
    output = b""
    while data := os.read(sink_read, 65536):
        output += data
    os.close(source_read)
    os.close(sink_read)
    return output


def test_known_lines_are_dropped_and_everything_else_kept() -> None:
    kept = [b"error: data.path is missing", b"I0000 something TensorFlow says that is not on the list", b""]
    lines = [NOISE[0], kept[0], NOISE[1], NOISE[2], kept[1], NOISE[3], CUINIT, kept[2]]
    assert _filtered([b"\n".join(lines) + b"\n"]) == b"\n".join(kept) + b"\n"


def test_a_failed_cuinit_is_kept_where_the_machine_has_an_nvidia_device() -> None:
    assert _filtered([CUINIT + b"\n"], has_nvidia_device=True) == CUINIT + b"\n"


def test_lines_split_across_writes_are_judged_whole() -> None:
    half = len(NOISE[1]) // 2
    assert _filtered([NOISE[1][:half], NOISE[1][half:] + b"\nkept\n"]) == b"kept\n"


def test_a_progress_bar_without_newline_is_forwarded_at_once() -> None:
    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()
    worker = threading.Thread(
        target=filter_stream, args=(source_read, sink_write, harmless_patterns(has_nvidia_device=False))
    )
    worker.start()
    os.write(source_write, b"\rextracting  40%")
    assert os.read(sink_read, 100) == b"\rextracting  40%"
    os.close(source_write)
    worker.join()
    for descriptor in (source_read, sink_read, sink_write):
        os.close(descriptor)


STAGE = textwrap.dedent(
    """
    import os, signal, sys
    from stages._entry import run_stage

    def main():
        os.write(2, b"{noise}\\n")
        os.write(2, b"last words\\n")
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("a real bug")

    run_stage(main)
    """
).format(noise=NOISE[2].decode())


@pytest.mark.parametrize("ending", ["traceback", "kill"])
def test_a_stage_keeps_its_last_words_and_drops_the_noise(ending: str) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    environment.pop("PIPELINE_RAW_STDERR", None)
    result = subprocess.run(
        [sys.executable, "-c", STAGE, ending], cwd=REPO, env=environment, capture_output=True, timeout=60
    )
    assert b"cudart_stub" not in result.stderr
    assert b"last words\n" in result.stderr
    if ending == "kill":
        assert result.returncode == -9
    else:
        assert result.returncode == 1
        assert result.stderr.rstrip().endswith(b"RuntimeError: a real bug")


def test_raw_stderr_shows_everything_when_asked() -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_RAW_STDERR": "1"}
    result = subprocess.run(
        [sys.executable, "-c", STAGE, "traceback"], cwd=REPO, env=environment, capture_output=True, timeout=60
    )
    assert NOISE[2] in result.stderr
