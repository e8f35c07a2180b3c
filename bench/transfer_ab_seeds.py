"""The Hands-On ML task A -> task B example (examples/transfer_ab) over several seeds per arm.

Why: the example's two arms differ by a few test images out of 2,000 on one seed, which says nothing about
which arm is better. For each `train.seed` this sets the seed in both arms' params.yaml (task A stays as
it is: the question is what task B gains from it) and runs `dvc repro examples/transfer_ab/dvc.yaml`, so
each arm's runs form one seed group in the example's MLflow store. Then `tl-seeds` aggregates each arm
and `tl-compare --groups` gives the difference of the means with its 95% Welch interval.

    .venv/bin/python bench/transfer_ab_seeds.py                 # seeds 1 to 5
    .venv/bin/python bench/transfer_ab_seeds.py --seeds 1 2 3 4 5 6 7 8

Both params files are restored at the end (their own seed, 42); the example's outputs are then those of
the last seed, until the next `dvc repro examples/transfer_ab/dvc.yaml`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

EXAMPLE = Path("examples/transfer_ab")
ARMS = ("transfer", "scratch")
STORE = f"sqlite:///{EXAMPLE / 'mlflow.db'}"
EXPERIMENT = "transfer-ab-task-b"
# `train:` then its `seed:` line: the train seed alone (data.seed, which draws the 200 images, stays).
TRAIN_SEED = re.compile(r"^(train:\n(?:[ \t]+#.*\n)*[ \t]+seed:[ \t]*)(\d+)", re.MULTILINE)


def _set_seed(text: str, seed: int) -> str:
    changed, count = TRAIN_SEED.subn(rf"\g<1>{seed}", text)
    if count != 1:
        raise SystemExit("bench/transfer_ab_seeds.py: no `train:` section starting with `seed:` in a params.yaml")
    return changed


def _group(arm: str) -> str:
    """The seed group of an arm's params, as `train` tags it (read in the arm's folder, where its stages run:
    its backbone path is relative to it)."""
    from pipeline import params

    here = Path.cwd()
    os.chdir(EXAMPLE / arm)
    try:
        return params.seed_group_key(params.load(Path("params.yaml")))
    finally:
        os.chdir(here)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="train.seed values")
    arguments = parser.parse_args()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    files = {arm: EXAMPLE / arm / "params.yaml" for arm in ARMS}
    originals = {arm: path.read_text(encoding="utf-8") for arm, path in files.items()}
    try:
        for seed in arguments.seeds:
            for arm, path in files.items():
                path.write_text(_set_seed(originals[arm], seed), encoding="utf-8")
            started = time.perf_counter()
            subprocess.run(["dvc", "repro", str(EXAMPLE / "dvc.yaml")], check=True)
            print(f"train.seed {seed}: both arms in {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        for arm, path in files.items():
            path.write_text(originals[arm], encoding="utf-8")
    store = ["--tracking-uri", STORE, "--experiment", EXPERIMENT]
    groups = {arm: _group(arm) for arm in ARMS}
    for arm in ARMS:
        print(f"\n{arm} arm:", flush=True)
        subprocess.run(["tl-seeds", "--group", groups[arm], *store, "--format", "markdown"], check=True)
    print("\nscratch - transfer:", flush=True)
    subprocess.run(
        ["tl-compare", "--groups", groups["transfer"], groups["scratch"], *store, "--format", "markdown"], check=True
    )


if __name__ == "__main__":
    main()
