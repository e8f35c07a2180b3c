"""Benchmark: the share of the train stage's time that goes to MLflow tracking (target <= 2%).

It runs the real train stage in this process, in a fresh working folder whose params.yaml is the
repository's (the default run unless `--subset-size` makes it smaller), after the validate and prepare
stages ran there as child processes. Every public method of `MlflowClient`, MLflow's fluent calls the
pipeline makes (`log_input`, `start_run`, `end_run`, the model logging) and the system-metrics monitor's
sampling and publishing are timed while the stage runs; nested calls count once. Printed side by side:
the stage's wall time, the time inside tracking, and their ratio.

    .venv/bin/python bench/tracking_overhead.py                      # the default run (minutes)
    .venv/bin/python bench/tracking_overhead.py --subset-size 5000   # a quicker look
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_SHARE = 0.02


class _Timer:
    """Seconds and calls per name; a call made inside a timed call of the same thread is not counted again."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self._depth = threading.local()

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "value", 0)
            self._depth.value = depth + 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth.value = depth
                if depth == 0:
                    self.seconds[name] += time.perf_counter() - started
                    self.calls[name] += 1

        return timed


def _instrument(timer: _Timer) -> None:
    import mlflow
    import mlflow.tensorflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.tracking import MlflowClient

    for name in dir(MlflowClient):
        attribute = getattr(MlflowClient, name)
        if not name.startswith("_") and callable(attribute):
            setattr(MlflowClient, name, timer.wrap(f"MlflowClient.{name}", attribute))
    for name in ("log_input", "start_run", "end_run"):
        setattr(mlflow, name, timer.wrap(f"mlflow.{name}", getattr(mlflow, name)))
    mlflow.tensorflow.log_model = timer.wrap("mlflow.tensorflow.log_model", mlflow.tensorflow.log_model)
    for name in ("collect_metrics", "publish_metrics"):
        setattr(SystemMetricsMonitor, name, timer.wrap(f"system_metrics.{name}", getattr(SystemMetricsMonitor, name)))


def _prepare(work: Path, subset_size: int | None) -> None:
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    config["data"]["subset_size"] = subset_size
    config["tracking"].update({"uri": f"sqlite:///{work / 'mlflow.db'}", "artifact_dir": str(work / "mlartifacts")})
    config["backbone"]["cache_dir"] = str(REPO / ".cache" / "backbones")
    (work / "params.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    for stage in ("validate", "prepare", "lr_find"):
        subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=work, env=environment, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset-size", type=int, default=None, help="images drawn (default: all, as params.yaml)")
    arguments = parser.parse_args()

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    work = Path(tempfile.mkdtemp(prefix="tracking-overhead-"))
    try:
        _prepare(work, arguments.subset_size)
        os.chdir(work)
        sys.path.insert(0, str(work))
        timer = _Timer()
        _instrument(timer)
        started = time.perf_counter()
        sys.argv = ["stages.train"]
        try:
            runpy.run_module("stages.train", run_name="__main__")
        except SystemExit as stopped:
            if stopped.code:
                raise
        wall = time.perf_counter() - started
    finally:
        os.chdir(REPO)
        shutil.rmtree(work, ignore_errors=True)

    tracked = sum(timer.seconds.values())
    print(f"\n{'call':<48}{'calls':>8}{'seconds':>10}")
    for name, seconds in timer.seconds.most_common():
        print(f"{name:<48}{timer.calls[name]:>8}{seconds:>10.3f}")
    share = tracked / wall
    print(f"\ntrain stage {wall:.1f} s, of which tracking {tracked:.2f} s: {share:.2%} (target <= {TARGET_SHARE:.0%})")


if __name__ == "__main__":
    main()
