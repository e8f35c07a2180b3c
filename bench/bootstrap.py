"""What the bootstrap intervals every run logs cost: 1,000 resamples of 7,000 test images, accuracy and macro F1.

The issue's target is well under a second (`pipeline.evaluation.significance.bootstrap_intervals`); this
prints the median of five calls on constructed predictions (10 classes, 93% right, the default's scale).

    .venv/bin/python bench/bootstrap.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from pipeline.evaluation.significance import bootstrap_intervals


def main() -> None:
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 10, size=7000)
    predictions = np.where(generator.random(7000) < 0.93, labels, (labels + 1) % 10)
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        bootstrap_intervals(labels, predictions, classes=10)
        seconds.append(time.perf_counter() - started)
    print(f"bootstrap intervals of 7,000 images, 1,000 resamples: median {statistics.median(seconds):.3f} s of 5 calls")


if __name__ == "__main__":
    main()
