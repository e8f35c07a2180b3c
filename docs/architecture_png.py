"""Draws docs/architecture.png: the packages of `pipeline/` by level, and the one direction of imports.

The text diagram in docs/architecture.md is the reference; this picture draws the same levels (those of
`tests/test_architecture.py`): a package may import its own level's modules or any level below it.

    .venv/bin/python docs/architecture_png.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUTPUT = Path(__file__).with_name("architecture.png")
# Levels top-down: (level, its packages, what they are).
LEVELS: tuple[tuple[int, tuple[str, ...], str], ...] = (
    (6, ("stages/", "pipeline/cli/"), "entry points"),
    (5, ("training/", "evaluation/", "serving/"), "the work"),
    (4, ("params/",), "the schema"),
    (3, ("model/", "optim/"), ""),
    (2, ("data/", "backbones/"), ""),
    (1, ("runtime/",), ""),
    (0, ("errors.py",), "PipelineError"),
)
SIDE_X, SIDE_Y = 10.6, 3.0
BOX_WIDTH, BOX_HEIGHT = 2.0, 0.56
ROW_LEFT, ROW_RIGHT = 0.4, 9.0
ROW_CENTRE, BOX_SPACING = 3.9, 2.4


def _box(axes: plt.Axes, x: float, y: float, label: str, colour: str) -> None:
    axes.add_patch(
        FancyBboxPatch(
            (x - BOX_WIDTH / 2, y - BOX_HEIGHT / 2),
            BOX_WIDTH,
            BOX_HEIGHT,
            boxstyle="round,pad=0.05",
            facecolor=colour,
            edgecolor="#333333",
        )
    )
    axes.text(x, y, label, ha="center", va="center", fontsize=10, family="monospace")


def _dashed(axes: plt.Axes, start: tuple[float, float], end: tuple[float, float]) -> None:
    axes.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle="-|>", mutation_scale=12, color="#b5651d", linestyle="--", shrinkA=2, shrinkB=2
        )
    )


def main() -> None:
    figure, axes = plt.subplots(figsize=(11, 7.2))
    centres: dict[str, tuple[float, float]] = {}
    for level, packages, note in LEVELS:
        axes.add_patch(
            FancyBboxPatch(
                (ROW_LEFT, level - 0.42),
                ROW_RIGHT - ROW_LEFT,
                0.84,
                boxstyle="round,pad=0.02",
                facecolor="#f4f6fa" if level % 2 else "#e9eef6",
                edgecolor="none",
            )
        )
        axes.text(0.1, level, str(level), ha="center", va="center", fontsize=10, color="#666666")
        if note:
            axes.text(ROW_RIGHT - 0.1, level, note, ha="right", va="center", fontsize=8, color="#666666")
        for position, package in enumerate(packages):
            x = ROW_CENTRE + (position - (len(packages) - 1) / 2) * BOX_SPACING
            colour = "#eeeeee" if level in (0, 6) else "#dfe8f5"
            _box(axes, x, float(level), package, colour)
            centres[package] = (x, float(level))
    axes.add_patch(
        FancyArrowPatch(
            (-0.45, 6.3), (-0.45, -0.3), arrowstyle="-|>", mutation_scale=18, color="#4a6fa5", linewidth=2.0
        )
    )
    axes.text(
        -0.7,
        3.0,
        "imports point down: to a lower level, never sideways or up",
        rotation=90,
        ha="center",
        va="center",
        fontsize=9,
        color="#4a6fa5",
    )
    _box(axes, SIDE_X, SIDE_Y, "tracking/", "#f7e3cf")
    axes.text(
        SIDE_X,
        SIDE_Y - 0.5,
        "an adapter at the side:\nthe only mlflow import;\ncalled by stages and cli\nonly; imports errors.py alone",
        ha="center",
        va="top",
        fontsize=8,
    )
    # One arrow from the entry points' row: only level 6 calls the adapter.
    _dashed(axes, (ROW_RIGHT, 6.0), (SIDE_X, SIDE_Y + BOX_HEIGHT / 2))
    x, y = centres["errors.py"]
    _dashed(axes, (SIDE_X, SIDE_Y - 1.5), (x + BOX_WIDTH / 2, y))
    axes.set_xlim(-1.0, 12.0)
    axes.set_ylim(-0.6, 6.6)
    axes.axis("off")
    axes.set_title("pipeline/: the packages by level (tests/test_architecture.py)")
    figure.tight_layout()
    figure.savefig(OUTPUT, dpi=110)
    plt.close(figure)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
