"""Benchmark: the course's diagnostics on versus off, side by side in one process.

Runs the same small fine-tune (the default head, a frozen phase, then the top 2 blocks unfrozen, the
feature cache on as in the default run) with `diagnostics` off and on, alternating `--repeats` times,
and prints each wall time, the total of each, and the ratio on / off. The diagnostics add a squared sum
per gradient to each step and, at each epoch's end, one read of the accumulator and one prediction of
the dead-ReLU probe.

    .venv/bin/python bench/diagnostics_overhead.py --images 2000 --epochs 2 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="training images (validation gets a quarter)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each phase")
    parser.add_argument("--repeats", type=int, default=1, help="off/on pairs")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--source-dir", default="/usr/share/datasets/fashion-mnist")
    arguments = parser.parse_args()

    import keras

    from pipeline.backbones.registry import load_backbone
    from pipeline.data.sources import load_idx_dataset
    from pipeline.model.head import build_head
    from pipeline.params import parse
    from pipeline.params.diagnostics import DiagnosticsParams
    from pipeline.params.optimizer import AdamParams
    from pipeline.params.schedule import ConstantParams
    from pipeline.training.diagnostics import TrainingDiagnostics
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
    head = parse({}).head

    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(arguments.repeats):
        for label in ("off", "on"):
            keras.utils.set_random_seed(0)
            backbone = load_backbone(
                "efficientnet_lite0", image_size=arguments.image_size, cache_dir=".cache/backbones"
            )
            classifier = build_head(backbone, head, num_classes=10, seed=0)
            diagnostics = TrainingDiagnostics(DiagnosticsParams()) if label == "on" else None
            started = time.perf_counter()
            history = fine_tune(
                classifier,
                train=train,
                val=val,
                phases=phases,
                inputs=InputSettings(image_size=arguments.image_size, batch_size=64, seed=0, cache_limit_bytes=8 << 30),
                verbose=0,
                diagnostics=diagnostics,
            )
            seconds[label].append(time.perf_counter() - started)
            print(
                f"  {label:>3}: {seconds[label][-1]:7.1f} s   final val_accuracy {history.rows[-1]['val_accuracy']:.4f}"
            )
    total_off, total_on = sum(seconds["off"]), sum(seconds["on"])
    print(
        f"{arguments.images} training images at {arguments.image_size}px, "
        f"{arguments.epochs}+{arguments.epochs} epochs, "
        f"{arguments.repeats} pair(s): off {total_off:.1f} s, on {total_on:.1f} s, "
        f"ratio {total_on / total_off:.3f} ({(total_on / total_off - 1):+.1%})"
    )


if __name__ == "__main__":
    main()
