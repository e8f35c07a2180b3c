"""Benchmark: the cost of the evaluate stage's two classical baselines, alone, at the size of the default run.

Splits Fashion-MNIST as the default `make run` does (70,000 images: 56,000 train, 7,000 val, 7,000 test,
stratified, seed 42), then runs the pixel baseline and the linear probe (EfficientNet-Lite0, ImageNet
weights, 96 px) with the caps of `evaluate.baselines` in params.yaml, or with the caps given, and prints
each one's line (what it used, accuracy, seconds) and their total as a share of a train stage of
`--train-seconds` (the default: the train stage of the figures in README.md, on 2 CPU cores).

    .venv/bin/python bench/baselines_cost.py
    .venv/bin/python bench/baselines_cost.py --probe-images 5000 --pixel-images 20000
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the caps of its evaluate.baselines")
    parser.add_argument("--probe-images", type=int, help="override evaluate.baselines.probe.max_train_images")
    parser.add_argument("--pixel-images", type=int, help="override evaluate.baselines.pixels.max_train_images")
    parser.add_argument("--train-seconds", type=float, default=300.0, help="the train stage to compare with")
    arguments = parser.parse_args()

    from pipeline import params

    config = params.load(arguments.params)
    from pipeline.runtime import devices

    devices.configure(config.device)

    from pipeline.backbones.registry import load_backbone
    from pipeline.data.sources import load_idx_dataset
    from pipeline.data.split import stratified_split
    from pipeline.evaluation.baselines import linear_probe, pixel_baseline

    settings = config.evaluate.baselines
    probe_settings = settings.probe.model_copy(
        update={"max_train_images": arguments.probe_images or settings.probe.max_train_images}
    )
    pixel_settings = settings.pixels.model_copy(
        update={"max_train_images": arguments.pixel_images or settings.pixels.max_train_images}
    )
    source = load_idx_dataset(config.data.path)
    data = config.data
    split = stratified_split(
        source.labels,
        subset_size=data.subset_size,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.seed,
    )
    train, test = split["train"], split["test"]
    print(f"{len(train)} training images, {len(test)} test images")
    classes = source.class_names

    pixels = pixel_baseline(
        source.images[train],
        source.labels[train],
        source.images[test],
        source.labels[test],
        settings=pixel_settings,
        class_names=classes,
        seed=data.seed,
    )
    print(pixels.line(), flush=True)
    started = time.perf_counter()
    backbone_settings = config.backbone
    backbone = load_backbone(
        backbone_settings.name,
        image_size=backbone_settings.image_size,
        cache_dir=backbone_settings.cache_dir,
        weights=backbone_settings.weights,
        **backbone_settings.kind_options(),
    )
    loading = time.perf_counter() - started
    print(f"backbone loaded in {loading:.1f} s")
    probe = linear_probe(
        backbone,
        source.images[train],
        source.labels[train],
        source.images[test],
        source.labels[test],
        settings=probe_settings,
        pooling=config.head.pooling,
        class_names=classes,
        image_size=backbone_settings.image_size,
        batch_size=config.evaluate.batch_size,
        seed=data.seed,
    )
    print(probe.line())
    total = pixels.seconds + probe.seconds + loading
    print(
        f"both baselines: {total:.1f} s (pixels {pixels.seconds:.1f} s, probe {probe.seconds:.1f} s, backbone "
        f"loading {loading:.1f} s), {100 * total / arguments.train_seconds:.1f}% of a "
        f"{arguments.train_seconds:.0f} s train stage"
    )


if __name__ == "__main__":
    main()
