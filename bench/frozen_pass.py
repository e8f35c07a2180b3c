"""Benchmark: the one-time pass of the frozen layers (features.py `_forward_pass`) by batch size, XLA on and off.

The frozen phase's activations are computed once per run, by `pipeline.training.features._forward_pass` over
every training and validation image (63,000 in the default run): the largest single cost of the frozen
phase. This bench runs that very function on Fashion-MNIST images at the input size of params.yaml, for the
prefix of EfficientNet-Lite0 below the cut the default plan computes (`--blocks 2`: the input of the top 2
blocks; 0: the pooled features), fed by the pipeline's own image pipeline (`image_dataset`, resize and
preprocessing per batch) at inference batch sizes 64, 128 and 256, with XLA (`jit_compile`) off and on.

Side by side in one process: `--rounds` rounds, each running every configuration once, in an order rotated
each round; XLA on a CPU computes about 10x slower per batch, so its configurations run `--xla-rounds` rounds
of `--xla-images` images. Printed per configuration: the set-up of a pass (tracing the concrete function, and the first
batch, where XLA compiles), the steady images/s (the batches after the first; median over rounds), the time
one pass over the default run's 63,000 images would take (set-up + images / rate), the ratio to today's
default (the training batch size 64, XLA as Keras decides: off on a CPU), and whether the activations are
bit-identical to it. Op determinism as the train stage's `train.deterministic: auto` sets it: on for a CPU, off
for GPUs (`--determinism on|off` to choose; Keras turns XLA off while it is on). Runs unchanged on a GPU machine,
where "today" is XLA on (Keras' choice for a GPU) and the XLA rows take as many images and rounds as the others.

    .venv/bin/python bench/frozen_pass.py        # 2,048 images, 3 rounds, XLA 512 images once (~10 min on 2 cores)
    .venv/bin/python bench/frozen_pass.py --images 512 --rounds 1 --xla-images 512   # a smoke run

(From a git worktree whose venv is another checkout's, prefix `PYTHONPATH=.` so that `pipeline` is this one.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _machine  # bench/ is the script's folder, first on sys.path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PASS_IMAGES = 63000  # the default run's training and validation images: what its one-time pass computes


class _Timed:
    """Iterates (images, labels) batches of a dataset and notes the moment each batch is asked for.

    `_forward_pass` traces its concrete function, then asks for batch k + 1 only once batch k's output is in
    numpy: the gaps between the moments are the time of each batch (the first one's includes XLA's compile).
    """

    def __init__(self, dataset: object) -> None:
        self._dataset = dataset
        self.moments: list[float] = []

    def __iter__(self) -> Iterator[object]:
        for batch in self._dataset:
            self.moments.append(time.perf_counter())
            yield batch
        self.moments.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images per pass (a multiple of every batch size)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration, interleaved")
    parser.add_argument(
        "--xla-images", type=int, default=None, help="images per XLA pass (default: 512 on a CPU, where XLA is slow)"
    )
    parser.add_argument("--xla-rounds", type=int, default=None, help="rounds with XLA (default: 1 on a CPU)")
    parser.add_argument("--blocks", type=int, default=2, help="the cut: below the top N blocks (0: pooled features)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--determinism", choices=("auto", "on", "off"), default="auto", help="auto: on for a CPU")
    parser.add_argument("--source-dir", default="/usr/share/datasets/fashion-mnist")
    arguments = parser.parse_args()
    # The steady rate leaves the first batch out (where XLA compiles): a pass of a single batch has none to time.
    for option, images in (("--images", arguments.images), ("--xla-images", arguments.xla_images)):
        if images is not None and images < 2 * max(arguments.batch_sizes):
            smallest = 2 * max(arguments.batch_sizes)
            parser.error(f"{option} {images}: at least two batches of the largest size, {smallest}")

    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.backbones.registry import load_backbone
    from pipeline.data.datasets import image_dataset
    from pipeline.data.sources import load_idx_dataset
    from pipeline.model.head import build_head
    from pipeline.params import load
    from pipeline.training.features import _forward_pass, cut_tensor

    machine = _machine.describe()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    deterministic = arguments.determinism == "on" or (arguments.determinism == "auto" and not gpus)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if arguments.xla_images is None:
        arguments.xla_images = arguments.images if gpus else 512
    if arguments.xla_rounds is None:
        arguments.xla_rounds = arguments.rounds if gpus else 1
    config = load(REPO / "params.yaml")
    source = load_idx_dataset(arguments.source_dir)
    images, labels = source.images, source.labels
    keras.utils.set_random_seed(0)
    backbone = load_backbone(
        "efficientnet_lite0", image_size=arguments.image_size, cache_dir=REPO / config.backbone.cache_dir
    )
    classifier = build_head(backbone, config.head, num_classes=10, seed=0)
    cut = cut_tensor(classifier, arguments.blocks)
    prefix = keras.Model(classifier.model.input, cut)
    cut_layer = cut._keras_history.operation.name

    configurations = [(batch, xla) for batch in arguments.batch_sizes for xla in (False, True)]
    # `_forward_pass` before this bench: the training batch size, XLA as `model.jit_compile` resolves it for the
    # prefix (Keras: off on a CPU, and wherever op determinism is on; on elsewhere).
    today = (config.train.batch_size, bool(prefix.jit_compile))
    if today not in configurations:
        configurations.insert(0, today)
    setup: dict[tuple[int, bool], list[float]] = {key: [] for key in configurations}
    rates: dict[tuple[int, bool], list[float]] = {key: [] for key in configurations}
    outputs: dict[tuple[int, bool], np.ndarray] = {}
    for round_index in range(arguments.rounds):
        shift = round_index % len(configurations)
        for batch, xla in configurations[shift:] + configurations[:shift]:
            if xla and round_index >= arguments.xla_rounds:
                continue
            count = arguments.xla_images if xla else arguments.images
            dataset = image_dataset(
                images[:count],
                labels[:count],
                image_size=arguments.image_size,
                batch_size=batch,
                preprocessing=backbone.make_preprocessing(),
            )
            timed = _Timed(dataset)
            started = time.perf_counter()
            result = _forward_pass(prefix, timed, batch_size=batch, jit_compile=xla)
            moments = timed.moments
            # Set-up: from the call to the second batch's request (tracing, the first batch and XLA's compile).
            setup[batch, xla].append(moments[1] - started)
            steady_images = count - batch
            rates[batch, xla].append(steady_images / (moments[-1] - moments[1]) if steady_images else float("nan"))
            outputs.setdefault((batch, xla), result[: min(arguments.images, arguments.xla_images)])
            print(
                f"round {round_index + 1}: batch {batch:>3}, XLA {'on' if xla else 'off'}: "
                f"set-up {setup[batch, xla][-1]:.1f} s, {rates[batch, xla][-1]:.0f} images/s",
                flush=True,
            )

    reference = outputs[today]
    compared = min(arguments.images, arguments.xla_images)
    today_seconds = statistics.median(setup[today]) + DEFAULT_PASS_IMAGES / statistics.median(rates[today])
    print(
        f"\nfrozen pass of EfficientNet-Lite0 up to {cut_layer} ({tuple(cut.shape[1:])}), {arguments.images} images "
        f"per pass ({arguments.xla_images} with XLA) at {arguments.image_size} px, {arguments.rounds} round(s) "
        f"({arguments.xla_rounds} with XLA), op determinism "
        f"{'on' if deterministic else 'off'}\nmachine: {machine}; at the end {_machine.load_now()}\n"
    )
    print(
        f"{'batch':>5} {'XLA':>4} {'set-up s':>9} {'images/s':>9} {'63,000 images s':>16} {'vs today':>9}  "
        f"bit-identical to today (first {compared} images)"
    )
    best = None
    for key in configurations:
        batch, xla = key
        if not rates[key]:
            print(f"{batch:>5} {'on' if xla else 'off':>4}  not measured (--xla-rounds 0)")
            continue
        rate, first = statistics.median(rates[key]), statistics.median(setup[key])
        projected = first + DEFAULT_PASS_IMAGES / rate
        identical = np.array_equal(outputs[key], reference)
        difference = float(np.max(np.abs(outputs[key].astype(np.float64) - reference)))
        marker = " (today)" if key == today else ""
        print(
            f"{batch:>5} {'on' if xla else 'off':>4} {first:>9.1f} {rate:>9.0f} {projected:>16.0f} "
            f"{today_seconds / projected:>8.2f}x  {'yes' if identical else f'no, max |diff| {difference:.2e}'}{marker}"
        )
        if best is None or projected < best[1]:
            best = (key, projected)
    (batch, xla), projected = best
    print(
        f"\nfastest for a default run's pass: batch {batch}, XLA {'on' if xla else 'off'}: {projected:.0f} s against "
        f"{today_seconds:.0f} s today, {today_seconds / projected:.2f}x"
    )


if __name__ == "__main__":
    main()
