"""Benchmark: peak memory and speed of the image-file input path (prepare's cache, then the tf.data stream).

For each size it writes that many small PNGs in class folders, builds the memmap cache the prepare stage
builds (in a child process), then streams the training split once through `image_dataset` at the
model's input size (in another child process), and prints each child's peak RSS and images/s. Memory
should stay flat as the dataset grows: compare the peak RSS of the sizes.

    .venv/bin/python bench/image_cache.py --sizes 1000 20000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BUILD = """
import resource, sys, time
from pipeline.data.cache import build_cache
from pipeline.data.files import scan_folder
started = time.perf_counter()
cached = build_cache(scan_folder(sys.argv[1]), sys.argv[2], size=int(sys.argv[3]), color="rgb",
                     max_pixels=40_000_000, val_fraction=0.1, test_fraction=0.1, seed=0)
elapsed = time.perf_counter() - started
print(cached.report["images_used"] / elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

STREAM = """
import os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
from pipeline.data.datasets import EpochOrder, image_dataset
from pipeline.data.cache import open_cache
source = open_cache(sys.argv[1])
train = int(0.8 * len(source.labels))
# One training epoch in the run's order, as train streams it.
positions = EpochOrder(train, 64, seed=0).batches(first_epoch=0, end_epoch=1)
dataset = image_dataset(source.images[:train], source.labels[:train], image_size=int(sys.argv[2]),
                        batch_size=64, positions=positions)
started = time.perf_counter()
count = sum(int(labels.shape[0]) for _, labels in dataset)
elapsed = time.perf_counter() - started
print(count / elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _child(script: str, *arguments: str) -> tuple[float, int]:
    """Runs `script` in a fresh interpreter; returns its images/s and peak RSS in KiB."""
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    rate, peak = result.stdout.split()[-2:]
    return float(rate), int(peak)


def write_images(folder: Path, count: int, side: int) -> None:
    """Writes `count` random RGB PNGs of `side` pixels in 10 class folders."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    for item in range(count):
        label_folder = folder / f"class{item % 10}"
        label_folder.mkdir(parents=True, exist_ok=True)
        pixels = generator.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(label_folder / f"{item}.png", compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000], help="images per run")
    parser.add_argument("--file-side", type=int, default=64, help="side of the generated PNGs")
    parser.add_argument("--stored-size", type=int, default=64, help="data.stored_size")
    parser.add_argument("--image-size", type=int, default=96, help="the model's input size")
    arguments = parser.parse_args()

    print("images | prepare img/s | prepare peak RSS MiB | stream img/s | stream peak RSS MiB")
    for count in arguments.sizes:
        with tempfile.TemporaryDirectory() as work:
            folder, cache = Path(work) / "images", Path(work) / "cache"
            write_images(folder, count, arguments.file_side)
            build_rate, build_peak = _child(BUILD, str(folder), str(cache), str(arguments.stored_size))
            stream_rate, stream_peak = _child(STREAM, str(cache), str(arguments.image_size))
        print(f"{count} | {build_rate:.0f} | {build_peak / 1024:.0f} | {stream_rate:.0f} | {stream_peak / 1024:.0f}")


if __name__ == "__main__":
    main()
