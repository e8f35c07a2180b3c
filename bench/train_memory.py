"""Benchmark: peak RSS of the real prepare and train stages as the folder dataset grows.

For each size it writes that many small PNGs in 10 class folders, writes a params.yaml (the repository's,
with `data.kind: folder` and tiny training settings) into a fresh working folder, and runs
`python -m stages.prepare` then `python -m stages.train` there as child processes, exactly as DVC runs
them. Each child's own peak RSS comes from `os.wait4`, which reports the usage of that one child. Memory
should not grow with the dataset: the train stage's peak at the largest size over its peak at the
smallest is printed, target <= 1.5.

    .venv/bin/python bench/train_memory.py --sizes 1000 20000
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

import yaml
from image_cache import write_images

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.5


def _params(
    data_path: Path, work: Path, cache_dir: Path, image_size: int, unfreeze_epochs: int, feature_cache_mb: int | None
) -> dict:
    """The repository's params with a folder source and the smallest training that still unfreezes."""
    config = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    config["data"].update({"kind": "folder", "path": str(data_path), "stored_size": image_size})
    config["backbone"].update({"image_size": image_size, "cache_dir": str(cache_dir)})
    config["train"].update(
        {
            "frozen_epochs": 1,
            "unfreeze": [{"blocks": 1, "epochs": unfreeze_epochs, "lr_factor": 0.5}] if unfreeze_epochs else [],
        }
    )
    if feature_cache_mb is not None:
        config["train"]["feature_cache_mb"] = feature_cache_mb
    config["tracking"].update({"uri": f"sqlite:///{work / 'mlflow.db'}", "artifact_dir": str(work / "mlartifacts")})
    return config


def _stage(name: str, work: Path) -> tuple[float, int]:
    """Runs one stage in `work`; returns its wall seconds and its own peak RSS in KiB."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("MLFLOW_TRACKING_URI", None)  # the params' store in `work`, never the caller's
    log = (work / f"{name}.log").open("w")
    started = time.perf_counter()
    command = [sys.executable, "-m", f"stages.{name}"]
    child = subprocess.Popen(command, cwd=work, env=environment, stdout=log, stderr=log)
    # wait4, not RUSAGE_CHILDREN: that one is the maximum over every child waited for so far.
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    log.close()
    if child.returncode:
        raise RuntimeError(f"stage {name} failed ({child.returncode}); see {work / f'{name}.log'}")
    return elapsed, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000], help="images per run")
    parser.add_argument("--image-size", type=int, default=32, help="side of the PNGs, stored_size and image_size")
    parser.add_argument("--unfreeze-epochs", type=int, default=1, help="epochs of the top block unfrozen (0: none)")
    parser.add_argument(
        "--feature-cache-mb", type=int, default=None, help="train.feature_cache_mb (default: params.yaml's; 0: none)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folders (their logs) and print them")
    arguments = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="train_memory_"))
    peaks: dict[int, int] = {}
    print("images | prepare s | prepare peak RSS MiB | train s | train peak RSS MiB")
    for count in arguments.sizes:
        work = root / str(count)
        (work / "images").mkdir(parents=True)
        write_images(work / "images", count, arguments.image_size)
        config = _params(
            work / "images",
            work,
            root / "backbones",
            arguments.image_size,
            arguments.unfreeze_epochs,
            arguments.feature_cache_mb,
        )
        (work / "params.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        prepare_seconds, prepare_peak = _stage("prepare", work)
        train_seconds, train_peak = _stage("train", work)
        peaks[count] = train_peak
        mib = (prepare_peak / 1024, train_peak / 1024)
        print(f"{count} | {prepare_seconds:.0f} | {mib[0]:.0f} | {train_seconds:.0f} | {mib[1]:.0f}")
    smallest, largest = min(peaks), max(peaks)
    if smallest != largest:
        ratio = peaks[largest] / peaks[smallest]
        verdict = "within" if ratio <= TARGET_RATIO else "OVER"
        print(f"train peak RSS {largest} / {smallest} images: {ratio:.2f} ({verdict} the {TARGET_RATIO} target)")
    if arguments.keep:
        print(f"working folders kept in {root}")
    else:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
