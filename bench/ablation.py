"""Ablation of the training techniques over several seeds: one `dvc exp run -S ...` per variant and seed.

Why several seeds: one run's test accuracy moves by a few tenths of a point with `train.seed` alone (the
head's initial weights, the order of the batches, dropout), which is as large as most effects a switch
has. Each row is therefore measured over `--seeds` (3 by default), reported as mean +- standard deviation,
and its difference to the reference (the current default) gets a 95% Welch interval: an effect is larger
than the noise only when that interval excludes zero.

Every variant changes one switch of params.yaml's default. `--subset` (13,000 images by default: a training
split of 10,400, above `train.unfreeze_depth.small_data_images`, so the same 2 unfrozen blocks as on all the
data) and the default `epochs: auto` phases (which follow the data, `train.phase_length`) size one run to a
few minutes on 2 CPU cores; the frozen activations are computed once and read from the activation store by
every later run. The classical baselines are off (they do not change the model). Every run is a full
pipeline execution (train, evaluate, register), an MLflow run tagged `ablation=<variant>` and a DVC
experiment `ablation-<variant>-seed<N>`; each row goes to `reports/ablation.csv` as it finishes, and a rerun
skips the (variant, seed) pairs already there, so an interrupted ablation resumes.

    .venv/bin/python bench/ablation.py                          # every variant, 3 seeds
    .venv/bin/python bench/ablation.py --only default cosine --seeds 1 2 3 4 5
    .venv/bin/python bench/ablation.py --summary                # the table of reports/ablation.csv only

The workspace's params.yaml is restored before every run and at the end. Run it in a clone (`git clone .
/tmp/ablate`): an interrupted `dvc exp run` can leave the workspace's git on a detached HEAD.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

REFERENCE = "default"
# Settings every run shares: the subset is added from --subset; the baselines cost time and change nothing.
COMMON = [
    "evaluate.baselines.probe.enabled=false",
    "evaluate.baselines.pixels.enabled=false",
    "tracking.gate_baselines=[majority]",
]
# Each variant changes one switch of the default (params.yaml: a 256-unit ReLU hidden layer with BatchNorm
# before the activation, BatchNorm of the unfrozen blocks trainable, Adam at 1e-3, constant LR, no flips).
VARIANTS: dict[str, list[str]] = {
    REFERENCE: [],
    "head-linear": ["head.hidden_units=[]", "head.batch_norm=none", "head.hidden_dropout=0.0"],
    "head-no-bn": ["head.batch_norm=none"],
    "head-gelu": ["head.activation=gelu"],
    "onecycle": ["train.schedule=onecycle"],
    "cosine": ["train.schedule=cosine"],
    "discriminative-lr": ["train.lr_decay_per_block=2.6"],
    "bn-frozen": ["train.bn_policy=frozen"],
    "flip": ["train.augmentation.flip=horizontal"],
}
RESULTS = Path("reports/ablation.csv")
COLUMNS = ("variant", "seed", "settings", "test_accuracy", "test_macro_f1", "train_seconds", "run_id")
METRICS = ("test_accuracy", "test_macro_f1")
CONFIDENCE = 0.95


def _run(name: str, seed: int, settings: list[str]) -> dict[str, str]:
    command = ["dvc", "exp", "run", "--name", f"ablation-{name}-seed{seed}"]
    for setting in [*settings, f"train.seed={seed}"]:
        command += ["-S", setting]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    metrics = json.loads(Path("reports/metrics.json").read_text())["test"]
    phases = json.loads(Path("reports/history.json").read_text())["phases"]
    run = json.loads(Path("build/run.json").read_text())
    print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s for the experiment", flush=True)
    return {
        "variant": name,
        "seed": str(seed),
        "settings": " ".join(VARIANTS[name]) or "(params.yaml)",
        "test_accuracy": f"{metrics['accuracy']:.4f}",
        "test_macro_f1": f"{metrics['macro_f1']:.4f}",
        "train_seconds": f"{sum(phase['seconds'] for phase in phases):.0f}",
        "run_id": run["run_id"],
    }


def _tag(variant: str) -> None:
    from pipeline.tracking import lifecycle, runs

    reference = runs.RunReference.read(Path("build/run.json"))
    with lifecycle.tracked_run(tracking_uri=reference.tracking_uri, resume=reference) as run:
        run.set_tags({"ablation": variant})


def _read_rows() -> list[dict[str, str]]:
    if not RESULTS.exists():
        return []
    with RESULTS.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _append(row: dict[str, str]) -> None:
    new_file = not RESULTS.exists()
    with RESULTS.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        if new_file:
            writer.writeheader()
        writer.writerow(row)


def _difference(values: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """The difference of means to the reference and its Welch 95% interval (SciPy's)."""
    result = stats.ttest_ind(values, reference, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    return float(values.mean() - reference.mean()), float(interval.low), float(interval.high)


def summary(rows: list[dict[str, str]]) -> str:
    """The Markdown table: per variant n, mean +- std of each metric, the difference to the reference with its
    95% interval, whether that interval excludes zero, and the mean train seconds."""
    by_variant: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    reference = {
        metric: np.array([float(row[metric]) for row in by_variant.get(REFERENCE, [])]) for metric in METRICS
    }
    lines = [
        "| variant | n | test accuracy (mean ± std) | difference to default (95% CI) | beyond noise | "
        "macro F1 (mean ± std) | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in [name for name in VARIANTS if name in by_variant]:
        runs = by_variant[name]
        accuracy = np.array([float(row["test_accuracy"]) for row in runs])
        macro_f1 = np.array([float(row["test_macro_f1"]) for row in runs])
        seconds = np.mean([float(row["train_seconds"]) for row in runs])
        spread = accuracy.std(ddof=1) if len(runs) > 1 else float("nan")
        f1_spread = macro_f1.std(ddof=1) if len(runs) > 1 else float("nan")
        if name == REFERENCE:
            difference, verdict = "(the reference)", ""
        elif len(runs) < 2 or len(reference["test_accuracy"]) < 2:
            difference, verdict = "needs 2 seeds on both", ""
        else:
            mean, low, high = _difference(accuracy, reference["test_accuracy"])
            difference = f"{mean:+.4f} ({low:+.4f} to {high:+.4f})"
            verdict = "yes, better" if low > 0 else "yes, worse" if high < 0 else "no"
        lines.append(
            f"| {name} | {len(runs)} | {accuracy.mean():.4f} ± {spread:.4f} | {difference} | {verdict} | "
            f"{macro_f1.mean():.4f} ± {f1_spread:.4f} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="train.seed values (default 1 2 3)")
    parser.add_argument("--subset", type=int, default=13000, help="data.subset_size of every run (default 13000)")
    parser.add_argument("--summary", action="store_true", help="print the table of reports/ablation.csv and stop")
    arguments = parser.parse_args()
    if not arguments.summary:
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        params = Path("params.yaml")
        original = params.read_text(encoding="utf-8")
        done = {(row["variant"], row["seed"]) for row in _read_rows()}
        common = [*COMMON, f"data.subset_size={arguments.subset}"]
        try:
            for seed in arguments.seeds:
                for name in arguments.only or VARIANTS:
                    if (name, str(seed)) in done:
                        continue
                    params.write_text(original, encoding="utf-8")
                    row = _run(name, seed, [*common, *VARIANTS[name]])
                    _tag(name)
                    _append(row)
        finally:
            params.write_text(original, encoding="utf-8")
    print(summary(_read_rows()))


if __name__ == "__main__":
    main()
