"""Benchmark: three queued DVC experiments run two at a time (`-j 2`) against the same three one at a time (`-j 1`).

Why: README's "Many experiments at once" runs queued experiments in parallel against one tracking store;
this measures what the parallel queue saves over the sequential one, side by side in one run. Each side is
a fresh copy of the tests' tiny queue project (`tests.tiny_project.build_queue_project`: 160 + 40 tiny
IDX images at 32 px, a 2-convolution .keras backbone frozen for 3 epochs, a new `sqlite:///mlflow.db`), with
train.seed 1, 2, 3 queued as `make seeds` queues them; the time is that of `dvc exp run --run-all -j N`,
which starts N queue workers as `dvc queue start -j N` does, then waits for the last experiment. Most of an
experiment's time on a CPU is starting processes (TensorFlow and MLflow imports in six stages, DVC's copy of
the project), which two cores share: the ratio is bounded by the cores the machine leaves free.

    .venv/bin/python bench/queue_parallel.py                  # -j 2 first, then -j 1
    .venv/bin/python bench/queue_parallel.py --order 1 2      # the other order
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.runtime.processes import process_alive  # noqa: E402
from tests.tiny_project import build_queue_project, dvc_environment, queue_seeds, queue_statuses  # noqa: E402

SEEDS = (1, 2, 3)


def run_queue(workdir: Path, jobs: int) -> float:
    """Builds the queue project in `workdir`, queues the seeds, runs them `jobs` at a time; returns the seconds.

    Raises:
        SystemExit: An experiment did not end in Success (its log is named).
    """
    build_queue_project(workdir)
    queue_seeds(workdir, SEEDS)
    log_path = workdir.parent / f"run-all-j{jobs}.log"
    with log_path.open("w") as log:
        # To a file, not a pipe: the queue workers keep the command's output open after it returns.
        started = time.perf_counter()
        subprocess.run(
            ["dvc", "exp", "run", "--run-all", "-j", str(jobs)],
            cwd=workdir,
            env=dvc_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
        elapsed = time.perf_counter() - started
    statuses = queue_statuses(workdir)
    _stop_workers(workdir)
    if statuses != {f"seed-{seed}": "Success" for seed in SEEDS}:
        raise SystemExit(f"-j {jobs}: the queue ended {statuses}; see {log_path}")
    return elapsed


def _stop_workers(workdir: Path) -> None:
    """Stops the project's queue workers and waits up to a minute for their processes to end.

    Why: a worker stays idle for a while after the last experiment and writes into .dvc/tmp/exps when it
    exits; removed before that, the project would come back as a folder of worker files.
    """
    subprocess.run(["dvc", "queue", "stop"], cwd=workdir, env=dvc_environment(), capture_output=True, check=False)
    deadline = time.monotonic() + 60
    for pid_file in (workdir / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        pid = int(pid_file.read_text().strip() or 0)
        while pid and process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", type=int, nargs=2, default=[2, 1], metavar="JOBS", help="default: 2 1")
    parser.add_argument("--keep", action="store_true", help="keep the two projects (their path is printed)")
    args = parser.parse_args()
    if sorted(args.order) != [1, 2]:
        parser.error("--order takes 1 and 2, in the order to run them")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    root = Path(tempfile.mkdtemp(prefix="queue-parallel-"))
    times = {}
    try:
        for jobs in args.order:
            workdir = root / f"j{jobs}" / "project"
            workdir.mkdir(parents=True)
            before = os.getloadavg()[0]
            times[jobs] = run_queue(workdir, jobs)
            # Other jobs on the machine change the figure: the 1-minute load average before and after says how much.
            load = f"load average {before:.1f} before, {os.getloadavg()[0]:.1f} after"
            print(f"-j {jobs}: {len(SEEDS)} experiments in {times[jobs]:.1f} s ({load})", flush=True)
    finally:
        if args.keep:
            print(f"projects kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"sequential / parallel: {times[1] / times[2]:.2f}x ({os.cpu_count()} CPU cores)")


if __name__ == "__main__":
    main()
