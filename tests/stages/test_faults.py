"""Faults at every stage: a real SIGKILL during prepare, evaluate and register, a full disk and a read-only folder.

Each test works on a copy of the session's tiny run (tests/conftest.py). A kill is made exact with
`PIPELINE_PAUSE_BEFORE_REPLACE` (pipeline/runtime/atomic.py): the stage prints one line and waits right
before an output is renamed into place, the moment a non-atomic writer would leave half a file, and the
test SIGKILLs it there. A full disk is `RLIMIT_FSIZE` in the child (CPython ignores SIGXFSZ, so a write past
it fails with EFBIG); a read-only `models/` is a read-only bind mount in a mount namespace of the child's own.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.runtime.atomic import PAUSE_VARIABLE, PAUSED_LINE
from tests.tiny_project import REGISTERED_MODEL, dvc

# Apart from test_pipeline and test_server (group tiny_run): a second worker builds its own shared tiny run, and
# the two halves of the end-to-end tests run side by side instead of one after the other.
pytestmark = pytest.mark.xdist_group("tiny_run_faults")
EXPORTS = ("models/model.keras", "models/saved_model")


def _environment(**extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    return {**environment, **extra}


def _digests(project: Path, *names: str) -> dict[str, str]:
    """sha256 of each file under the given paths (a folder: every file in it), by relative path."""
    found = {}
    for name in names:
        root = project / name
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file():
                found[str(path.relative_to(project))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _kill_at(project: Path, stage: str, target: str) -> None:
    """Runs `python -m stages.<stage>`, SIGKILLs it once it waits before renaming `target` into place."""
    process = subprocess.Popen(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=project,
        env=_environment(**{PAUSE_VARIABLE: target}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for line in process.stderr:
            seen.append(line)
            if line.startswith(f"{PAUSED_LINE} {target}"):
                break
        assert process.poll() is None, "".join(seen)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()


def _versions(project: Path) -> list:
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    return sorted(client.search_model_versions(f"name = '{REGISTERED_MODEL}'"), key=lambda item: int(item.version))


def _assert_exports_load(project: Path) -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    pixels = np.full((1, 32, 32, 3), 128.0, np.float32)
    from_keras = keras.saving.load_model(project / "models" / "model.keras").predict(pixels, verbose=0)
    saved_model = tf.saved_model.load(str(project / "models" / "saved_model"))  # kept: serve needs its variables
    from_saved_model = saved_model.serve(pixels).numpy()
    np.testing.assert_allclose(from_keras, from_saved_model, atol=1e-5)


def test_a_killed_prepare_leaves_the_previous_manifest_and_cache(tiny_run_copy: Path) -> None:
    project = tiny_run_copy
    before = _digests(project, "data/manifest.csv", "data/cache", "reports/data_report.json")
    _kill_at(project, "prepare", "data/manifest.csv")  # after the new cache is in place, before the manifest
    assert _digests(project, "data/manifest.csv", "data/cache", "reports/data_report.json") == before
    assert len(list((project / "data").glob(".manifest.csv.tmp-*"))) == 1  # the killed write, beside
    result = dvc(project, "repro")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _digests(project, "data/manifest.csv", "data/cache", "reports/data_report.json") == before


def test_a_killed_evaluate_leaves_no_half_written_comparison(tiny_run_copy: Path) -> None:
    project = tiny_run_copy
    before = _digests(project, "reports/champion_comparison.json")
    _kill_at(project, "evaluate", "reports/champion_comparison.json")
    assert _digests(project, "reports/champion_comparison.json") == before
    result = dvc(project, "repro")
    assert result.returncode == 0, result.stdout + result.stderr
    status = dvc(project, "status")
    assert "up to date" in status.stdout, status.stdout


def test_a_killed_register_keeps_the_exports_and_its_rerun_withdraws_the_leftover(tiny_run_copy: Path) -> None:
    project = tiny_run_copy
    before = _digests(project, *EXPORTS)
    (version,) = _versions(project)
    _kill_at(project, "register", "models/saved_model")  # the new version exists, the exports are not in place
    assert _digests(project, *EXPORTS) == before
    _assert_exports_load(project)
    leftover = _versions(project)[-1]
    # Its gate decision is recorded (the other pipelines' turn may come), its files are not in place.
    assert int(leftover.version) == int(version.version) + 1
    assert (leftover.tags["gate.settled"], leftover.tags.get("pipeline.registration")) == ("true", None)
    rerun = subprocess.run(
        [sys.executable, "-m", "stages.register"], cwd=project, env=_environment(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    versions = _versions(project)
    # The killed attempt's version is gone; the rerun's is the one of this run, settled.
    assert [int(item.version) for item in versions] == [int(version.version), int(version.version) + 2]
    assert (versions[-1].tags["gate.settled"], versions[-1].tags["pipeline.registration"]) == ("true", "complete")
    _assert_exports_load(project)
    assert sorted(path.name for path in (project / "models").glob(".*.tmp-*")) == []  # the killed one's, removed


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _run_failing(project: Path, command: list[str], **options) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=project, env=_environment(), capture_output=True, text=True, **options)


def _read_only(folder: str, stage: str) -> list[str]:
    """The command running `stage` with `folder` read-only, for root too (a read-only bind mount)."""
    mount = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"
    return ["unshare", "--mount", "--map-root-user", "sh", "-c", f"{mount} && exec {sys.executable} -m stages.{stage}"]


def _run_with_fault(
    project: Path, stage: str, fault: str, *, folder: str, headroom: int
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Runs `stage` with a full disk (a file size limit of the store's size + `headroom`, below the size of the
    model in `folder`) or with `folder` read-only; returns the result and the reason its error must give."""
    if fault == "disk full":
        limit = (project / "mlflow.db").stat().st_size + headroom
        assert limit < (project / folder / "model.keras").stat().st_size
        command = [sys.executable, "-m", f"stages.{stage}"]
        return _run_failing(project, command, preexec_fn=_limit_file_size(limit)), "File too large"
    return _run_failing(project, _read_only(folder, stage)), "Read-only file system"


@pytest.mark.parametrize("fault", ["disk full", "read-only models"])
def test_register_stops_in_one_line_and_keeps_the_previous_exports(tiny_run_copy: Path, fault: str) -> None:
    project = tiny_run_copy
    before = _digests(project, *EXPORTS)
    versions = _versions(project)
    # A full disk: past the store's own size (its writes go on), below the model's: the first export fails.
    result, reason = _run_with_fault(project, "register", fault, folder="models", headroom=1 << 20)
    assert result.returncode == 2, result.stderr
    expected = f"error: cannot write models/model.keras: {reason}; "
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        line for line in result.stderr.splitlines() if line.startswith(expected)
    ]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert _digests(project, *EXPORTS) == before
    _assert_exports_load(project)
    assert [item.version for item in _versions(project)] == [item.version for item in versions]  # none added
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(versions[0].run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["pipeline.error"].startswith(f"OutputWriteError: cannot write models/model.keras: {reason}")


@pytest.mark.parametrize("fault", ["disk full", "read-only build"])
def test_train_with_a_full_disk_or_a_read_only_build_folder_keeps_the_previous_model(
    tiny_run_copy: Path, fault: str
) -> None:
    project = tiny_run_copy
    before = _digests(project, "build/model.keras", "build/run.json")
    # A full disk: past the store's growth over a run, below the model's size: a checkpoint or the model fails first.
    result, reason = _run_with_fault(project, "train", fault, folder="build", headroom=4 << 20)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write build/"), result.stderr
    assert reason in errors[0]
    assert "Traceback" not in result.stderr
    assert _digests(project, "build/model.keras", "build/run.json") == before
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id], order_by=["start_time DESC"])
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["pipeline.error"].startswith("OutputWriteError: cannot write build/")
