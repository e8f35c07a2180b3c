"""Benchmark: a default `train` killed with SIGKILL and resumed, against the uninterrupted run of the same project.

Run it in a project where `make run` (or `dvc repro`) just finished: that run is the reference. The bench keeps
its model, history and test metrics, reruns `train` under `dvc repro` with a SIGKILL at the given moment
(tests/stages/fault_injection/sitecustomize.py), reruns it to resume, then `evaluate`, and prints:
- the wall time of the killed run up to the kill, of the resumed run, and of the reference `train`
  (a restart from nothing would cost the reference's time again);
- the largest weight difference and whether the weights are bit-identical;
- the history's and the test metrics' differences.
The project's outputs are the resumed run's afterwards (the same as the reference's when all is well).

    .venv/bin/python bench/resume.py /path/to/project --kill checkpoint:1:5:400 --every-steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "stages" / "fault_injection"


def _dvc(project: Path, *arguments: str, kill_at: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    environment = dict(os.environ, DVC_NO_ANALYTICS="1")
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    if kill_at:
        environment.update(PYTHONPATH=str(FAULTS), TEST_KILL_AT=kill_at)
    started = time.perf_counter()
    result = subprocess.run(["dvc", *arguments], cwd=project, env=environment, capture_output=True, text=True)
    return time.perf_counter() - started, result


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return [np.asarray(weight) for weight in keras.saving.load_model(path, compile=False).get_weights()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--kill", required=True, help="checkpoint:<phase>:<epochs done>:<batches done>, or pass:<n>")
    parser.add_argument("--every-steps", type=int, default=None, help="train.checkpoint_every_steps for the rerun")
    options = parser.parse_args()
    project = options.project.resolve()
    keep = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    for name in ("build/model.keras", "reports/history.json", "reports/metrics.json"):
        shutil.copy(project / name, keep / Path(name).name)
    reference_train = json.loads((keep / "history.json").read_text())["phases"]
    reference_seconds = sum(phase["seconds"] for phase in reference_train)
    if options.every_steps:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["train"]["checkpoint_every_steps"] = options.every_steps
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    killed_seconds, killed = _dvc(project, "repro", "--force", "--single-item", "train", kill_at=options.kill)
    if killed.returncode == 0:
        sys.exit(f"train was not killed at {options.kill}:\n{killed.stdout[-2000:]}")
    resumed_seconds, resumed = _dvc(project, "repro", "--single-item", "train")
    if resumed.returncode != 0:
        sys.exit(f"the resumed train failed:\n{resumed.stdout[-3000:]}{resumed.stderr[-3000:]}")
    line = next((text for text in resumed.stdout.splitlines() if text.startswith("resuming")), "(no resume line)")
    _, evaluated = _dvc(project, "repro", "--single-item", "evaluate")
    if evaluated.returncode != 0:
        sys.exit(f"evaluate failed:\n{evaluated.stderr[-3000:]}")

    expected, got = _weights(keep / "model.keras"), _weights(project / "build" / "model.keras")
    largest = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(expected, got, strict=True))
    identical = all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    rows_before = json.loads((keep / "history.json").read_text())["epochs"]
    rows_after = json.loads((project / "reports" / "history.json").read_text())["epochs"]
    metrics_before = json.loads((keep / "metrics.json").read_text())
    metrics_after = json.loads((project / "reports" / "metrics.json").read_text())
    print(line)
    print(f"killed run: {killed_seconds:.0f} s of dvc repro until the kill at {options.kill}")
    print(f"resumed run: {resumed_seconds:.0f} s of dvc repro; the reference's phases took {reference_seconds:.0f} s")
    print(f"weights: bit-identical {identical}, largest difference {largest:.3g}")
    print(f"history: {len(rows_after)} epochs, identical {rows_after == rows_before}")
    for key in ("accuracy", "macro_f1"):
        before, after = metrics_before["test"][key], metrics_after["test"][key]
        print(f"test {key}: reference {before:.4f}, resumed {after:.4f}, difference {after - before:+.4f}")


if __name__ == "__main__":
    main()
