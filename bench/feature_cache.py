"""Benchmark: fine-tuning with the frozen-prefix cache versus recomputing the frozen layers.

Runs the same recipe (frozen phase, then the top 2 blocks unfrozen) twice on the same Fashion-MNIST
images, once with `InputSettings.cache_limit_bytes` large enough to cache and once with 0, and prints both
wall times, their ratio, and the final validation accuracies (they should agree: the cache changes
speed, not results).

    .venv/bin/python bench/feature_cache.py --images 3000 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="training images (validation gets a quarter)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each phase")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--source-dir", default="/usr/share/datasets/fashion-mnist")
    arguments = parser.parse_args()

    import keras

    from pipeline.backbones.registry import load_backbone
    from pipeline.data.sources import load_idx_dataset
    from pipeline.model.head import build_head
    from pipeline.params.head import HeadParams
    from pipeline.params.optimizer import AdamParams
    from pipeline.params.schedule import ConstantParams
    from pipeline.training.features import ImageSplit, InputSettings
    from pipeline.training.recipe import Phase, fine_tune

    source = load_idx_dataset(arguments.source_dir)
    validation_count = arguments.images // 4
    train = ImageSplit(source.images[: arguments.images], source.labels[: arguments.images])
    end = arguments.images + validation_count
    val = ImageSplit(source.images[arguments.images : end], source.labels[arguments.images : end])
    adam, constant = AdamParams(name="adam"), ConstantParams(name="constant")
    phases = [
        Phase("frozen", 0, arguments.epochs, 1e-3, optimizer=adam, schedule=constant),
        Phase("unfreeze_top_2", 2, arguments.epochs, 5e-4, optimizer=adam, schedule=constant),
    ]

    results = {}
    for label, cache_bytes in (("cached", 8 << 30), ("images", 0)):
        keras.utils.set_random_seed(0)
        backbone = load_backbone("efficientnet_lite0", image_size=arguments.image_size, cache_dir=".cache/backbones")
        classifier = build_head(backbone, HeadParams(pooling="avg", dropout=0.2), num_classes=10, seed=0)
        started = time.perf_counter()
        history = fine_tune(
            classifier,
            train=train,
            val=val,
            phases=phases,
            inputs=InputSettings(image_size=arguments.image_size, batch_size=64, seed=0, cache_limit_bytes=cache_bytes),
            verbose=0,
        )
        results[label] = (time.perf_counter() - started, history.rows[-1]["val_accuracy"])

    print(
        f"{arguments.images} training images at {arguments.image_size}px, {arguments.epochs}+{arguments.epochs} epochs"
    )
    for label, (seconds, accuracy) in results.items():
        print(f"  {label:>7}: {seconds:7.1f} s   final val_accuracy {accuracy:.4f}")
    print(f"  speed-up of the cache: {results['images'][0] / results['cached'][0]:.2f}x")


if __name__ == "__main__":
    main()
