"""Benchmark: the Keras transfer-learning guide's recipe against our pipeline, on the same images, in one process.

The guide (keras.io/guides/transfer_learning, "the typical transfer-learning workflow" and its end-to-end
example): the pretrained base frozen inside `model.fit` (so the frozen base is recomputed on every batch of
every epoch), a new head (GlobalAveragePooling2D + Dropout 0.2 + Dense), Adam at its default LR; then the whole
base unfrozen (`base.trainable = True`) with its BatchNormalization layers kept in inference mode, as the guide
intends (under Keras 3 `base(x, training=False)` is overridden by `fit`'s training=True, so the BN layers are set
`trainable = False`, which is what keeps them in inference mode: see STACK_NOTES), and `fit` again at Adam 1e-5.

Ours: `pipeline.training.recipe.fine_tune` with params.yaml's `train` and `head` sections as they are
(`plan_phases`: every phase `epochs: auto`, early stopping on val_loss, the blocks `blocks: auto` gives this
split), frozen activations computed once in this run (no activation store: a first run pays the pass). No
tracking, checkpoints or diagnostics (their cost is bench/fit_overhead.py's).

Both on the same Fashion-MNIST images at params.yaml's input size (96 px), EfficientNet-Lite0 with ImageNet
weights, batch 64, each epoch in the order `EpochOrder` draws from seed 42, op determinism on as in the train
stage: `--train` images of the official training part (the first 6,000), the next `--val` (1,000) as the
validation split both recipes fit with, and a fixed test subset: the first `--test` (2,000) images of the
official t10k part. Ours runs first: the guide's frozen phase then runs as many epochs as ours ran, capped by
`--guide-frozen-max` (10), and its fine-tune phase `--guide-finetune-epochs` (3).

Test accuracy is measured at every epoch's end of both recipes (the full model on the 2,000 test images; the
frozen layers below the phase's trainable part are run once per phase, which is exact since they do not change
within a phase), off the clock: each recipe's elapsed times leave those evaluations out, and include everything
else (the one-time pass, compiling, tracing, validation). Printed: each recipe's epochs, the median time of a
frozen epoch, total time, best and final test accuracy (final: the model as training returns it; ours restores
each phase's best epoch by val_loss), our elapsed time when our test accuracy first reached the guide's best, and
the ratios against the targets: guide frozen epoch / ours >= 50x; our time to the guide's best <= 0.3x the
guide's total; our final test accuracy above the guide's best.

    PYTHONPATH=. .venv/bin/python bench/keras_guide.py            # the full comparison (~25 min on 2 cores)
    PYTHONPATH=. .venv/bin/python bench/keras_guide.py --quick    # a smoke run (~3 min): 1,000 / 250 / 500 images,
                                                                  # ours 3 + 2 + 1 fixed epochs, the guide 2 + 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _machine  # bench/ is the script's folder, first on sys.path

REPO = Path(__file__).resolve().parents[1]
FROZEN_EPOCH_TARGET = 50.0
TIME_TO_BEST_TARGET = 0.3


@dataclass
class Point:
    """One epoch of a recipe: where it ended on the recipe's clock (test evaluations left out) and its scores."""

    epoch: int
    phase_index: int
    phase: str
    elapsed: float
    seconds: float
    val_accuracy: float
    test_accuracy: float


@dataclass
class Curve:
    """A recipe's epochs as they ended, and the clock they are measured on."""

    points: list[Point] = field(default_factory=list)
    started: float = 0.0
    evaluation_seconds: float = 0.0
    first_epoch_at: float | None = None

    def elapsed(self) -> float:
        """Seconds since the recipe started, without the test evaluations."""
        return time.perf_counter() - self.started - self.evaluation_seconds


def _accuracy(probabilities: Any, labels: Any) -> float:
    import numpy as np

    return float(np.mean(np.argmax(probabilities, axis=-1) == labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000, help="training images (the first of the official part)")
    parser.add_argument("--val", type=int, default=1000, help="validation images (the next ones)")
    parser.add_argument("--test", type=int, default=2000, help="test images (the first of the official t10k part)")
    parser.add_argument(
        "--guide-frozen-max", type=int, default=10, help="the guide's frozen epochs: ours, at most this"
    )
    parser.add_argument(
        "--guide-finetune-epochs", type=int, default=3, help="the guide's epochs with the base unfrozen"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: few images, fixed short phases")
    parser.add_argument("--source-dir", default="/usr/share/datasets/fashion-mnist")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.train, arguments.val, arguments.test = 1000, 250, 500
        arguments.guide_frozen_max, arguments.guide_finetune_epochs = 2, 1

    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.backbones.registry import load_backbone
    from pipeline.data.datasets import EpochOrder, image_dataset
    from pipeline.data.sources import load_idx_dataset
    from pipeline.model.head import build_head
    from pipeline.params import parse
    from pipeline.training.features import ImageSplit, InputSettings, _forward_pass, cut_tensor
    from pipeline.training.recipe import fine_tune, plan_phases

    machine = _machine.describe()
    tf.config.experimental.enable_op_determinism()
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    if arguments.quick:
        raw["train"]["frozen_epochs"] = 3
        for stage, epochs in zip(raw["train"]["unfreeze"], (2, 1), strict=False):
            for bound in ("min_steps", "max_steps", "max_epochs"):
                stage.pop(bound, None)
            stage["epochs"] = epochs
    config = parse(raw)
    size, seed, batch_size = config.backbone.image_size, config.train.seed, config.train.batch_size
    cache_dir = REPO / config.backbone.cache_dir

    source = load_idx_dataset(arguments.source_dir)
    official = source.parts == "train"
    images, labels = source.images[official], source.labels[official]
    end = arguments.train + arguments.val
    train = ImageSplit(images[: arguments.train], labels[: arguments.train])
    val = ImageSplit(images[arguments.train : end], labels[arguments.train : end])
    test_images = source.images[source.parts == "t10k"][: arguments.test]
    test_labels = source.labels[source.parts == "t10k"][: arguments.test]

    def test_inputs(preprocessing: keras.layers.Layer | None) -> tf.data.Dataset:
        return image_dataset(test_images, test_labels, image_size=size, batch_size=256, preprocessing=preprocessing)

    class TestCurve(keras.callbacks.Callback):
        """Notes each epoch's time and val accuracy, and scores the test images off the recipe's clock.

        Args:
            curve: Where the epochs go.
            split: For the model being fit: (key, prefix, rest): the frozen part to run once per key (None: none)
                and the part to run at every epoch on its output.
            inputs: The test images as the prefix (or the whole model) takes them.
            phase: The index and name of the phase being fit (read at each epoch).
        """

        def __init__(
            self,
            curve: Curve,
            split: Callable[[keras.Model], tuple[object, keras.Model | None, keras.Model]],
            inputs: tf.data.Dataset,
            phase: Callable[[], tuple[int, str]],
        ) -> None:
            super().__init__()
            self._curve, self._split, self._inputs, self._phase = curve, split, inputs, phase
            self._frozen: dict[object, np.ndarray] = {}
            self._began = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._began = self._curve.elapsed()
            if self._curve.first_epoch_at is None:
                self._curve.first_epoch_at = self._began

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            ended = self._curve.elapsed()
            evaluating = time.perf_counter()
            key, prefix, rest = self._split(self.model)
            if key not in self._frozen:
                self._frozen[key] = _forward_pass(prefix, self._inputs, batch_size=256) if prefix is not None else None
            inputs = self._frozen[key] if self._frozen[key] is not None else self._inputs
            accuracy = _accuracy(_forward_pass(rest, inputs, batch_size=256), test_labels)
            phase_index, phase = self._phase()
            self._curve.points.append(
                Point(
                    epoch=len(self._curve.points) + 1,
                    phase_index=phase_index,
                    phase=phase,
                    elapsed=ended,
                    seconds=ended - self._began,
                    val_accuracy=float((logs or {}).get("val_accuracy", float("nan"))),
                    test_accuracy=accuracy,
                )
            )
            self._curve.evaluation_seconds += time.perf_counter() - evaluating
            point = self._curve.points[-1]
            print(
                f"  epoch {point.epoch:>3} {point.phase_index + 1}:{point.phase:<16} {point.seconds:7.1f} s "
                f"(at {point.elapsed:7.1f} s)  val {point.val_accuracy:.4f}  test {point.test_accuracy:.4f}",
                flush=True,
            )

    # Ours.
    print(f"ours: fine_tune with params.yaml's train section; {_machine.load_now()}", flush=True)
    keras.utils.set_random_seed(seed)
    backbone = load_backbone(config.backbone.name, image_size=size, cache_dir=cache_dir)
    classifier = build_head(backbone, config.head, num_classes=10, seed=seed)
    inputs = InputSettings(
        image_size=size,
        batch_size=batch_size,
        seed=seed,
        cache_limit_bytes=config.train.feature_cache_mb * 2**20,
    )
    phases = plan_phases(
        config.train,
        base_learning_rate=config.train.base_learning_rate,
        block_count=len(backbone.blocks_top_down),
        steps_per_epoch=inputs.steps_per_epoch(len(train.labels)),
        train_examples=len(train.labels),
    )
    for phase in phases:
        print(f"  {phase.describe_plan()}")

    class PhaseName(keras.callbacks.Callback):
        """Knows the phase `fine_tune` is in (it tells callbacks with a `begin_phase`)."""

        record: Any = None

        def begin_phase(self, record: object) -> None:
            self.record = record

    ours_phase = PhaseName()

    def ours_split(model: keras.Model) -> tuple[object, keras.Model | None, keras.Model]:
        # The phase's model starts at its cut (`cut_tensor`): the layers below it are frozen for the whole phase,
        # and in every phase of a plan that unfreezes from the top (phases of the same depth share the key).
        blocks = ours_phase.record.trainable_blocks
        cut = cut_tensor(classifier, blocks)
        if cut is classifier.model.input:
            return "images", None, model
        return blocks, keras.Model(classifier.model.input, cut), model

    ours = Curve()
    ours_callback = TestCurve(
        ours,
        ours_split,
        test_inputs(backbone.make_preprocessing()),
        lambda: (ours_phase.record.index, ours_phase.record.name),
    )
    ours.started = time.perf_counter()
    history = fine_tune(
        classifier,
        train=train,
        val=val,
        phases=phases,
        inputs=inputs,
        callbacks=[ours_phase, ours_callback],
        verbose=0,
    )
    ours_total = ours.elapsed()
    ours_final = _accuracy(
        _forward_pass(classifier.model, test_inputs(backbone.make_preprocessing()), batch_size=256), test_labels
    )
    ours_setup = ours.first_epoch_at
    ours_epochs = [(record.name, record.end_epoch - record.first_epoch) for record in history.phases]
    print(f"ours: {ours_total:.1f} s, final test accuracy {ours_final:.4f}; {_machine.load_now()}", flush=True)

    # The guide.
    frozen_epochs = min(ours_epochs[0][1], arguments.guide_frozen_max)
    print(
        f"\nthe guide: {frozen_epochs} frozen epochs, then {arguments.guide_finetune_epochs} with the base unfrozen; "
        f"{_machine.load_now()}",
        flush=True,
    )
    keras.utils.set_random_seed(seed)
    guide_backbone = load_backbone(config.backbone.name, image_size=size, cache_dir=cache_dir)
    base = guide_backbone.model
    base.trainable = False
    image_input = keras.Input((size, size, 3))
    tensor = guide_backbone.make_preprocessing()(image_input)
    tensor = base(tensor, training=False)
    pooled = keras.layers.GlobalAveragePooling2D()(tensor)
    tensor = keras.layers.Dropout(0.2)(pooled)
    logits = keras.layers.Dense(10)(tensor)
    guide = keras.Model(image_input, logits)
    guide_features = keras.Model(image_input, pooled)
    guide_head = keras.Model(pooled, keras.layers.Softmax()(logits))
    guide_whole = keras.Model(image_input, keras.layers.Softmax()(logits))
    guide_phase = [0, "frozen"]

    def guide_split(model: keras.Model) -> tuple[object, keras.Model | None, keras.Model]:
        if not base.trainable:
            return "frozen", guide_features, guide_head
        return "images", None, guide_whole

    guide_curve = Curve()
    guide_callback = TestCurve(guide_curve, guide_split, test_inputs(None), lambda: tuple(guide_phase))
    order = EpochOrder(len(train.labels), batch_size, seed)

    def guide_fit(first_epoch: int, epochs: int) -> None:
        guide.fit(
            image_dataset(
                train.images,
                train.labels,
                image_size=size,
                batch_size=batch_size,
                positions=order.batches(first_epoch=first_epoch, end_epoch=first_epoch + epochs),
            ),
            validation_data=image_dataset(val.images, val.labels, image_size=size, batch_size=batch_size),
            initial_epoch=first_epoch,
            epochs=first_epoch + epochs,
            steps_per_epoch=order.batches_per_epoch,
            callbacks=[guide_callback],
            shuffle=False,  # each epoch's order is drawn by EpochOrder, as ours
            verbose=0,
        )

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    guide_curve.started = time.perf_counter()
    guide.compile(
        optimizer=keras.optimizers.Adam(), loss=loss, metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")]
    )
    guide_fit(0, frozen_epochs)
    base.trainable = True
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    guide_phase[:] = [1, "unfreeze_all"]
    guide.compile(
        optimizer=keras.optimizers.Adam(1e-5), loss=loss, metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")]
    )
    guide_fit(frozen_epochs, arguments.guide_finetune_epochs)
    guide_total = guide_curve.elapsed()
    print(f"the guide: {guide_total:.1f} s; {_machine.load_now()}", flush=True)

    # The comparison.
    def frozen_epoch(curve: Curve) -> float:
        return statistics.median(point.seconds for point in curve.points if point.phase == "frozen")

    guide_best = max(guide_curve.points, key=lambda point: point.test_accuracy)
    ours_best = max(ours.points, key=lambda point: point.test_accuracy)
    reached = next((point for point in ours.points if point.test_accuracy >= guide_best.test_accuracy), None)
    guide_final = guide_curve.points[-1].test_accuracy
    print(
        f"\n{len(train.labels)} training, {len(val.labels)} validation images of Fashion-MNIST's training part, "
        f"test: the first {len(test_labels)} of t10k; {size} px, EfficientNet-Lite0 (ImageNet), batch {batch_size}"
        f"\nmachine: {machine}; at the end {_machine.load_now()}\n"
    )
    ours_plan = " + ".join(f"{name} {epochs}" for name, epochs in ours_epochs)
    guide_plan = f"frozen {frozen_epochs} + unfreeze_all {arguments.guide_finetune_epochs}"
    print(f"epochs of the guide: {guide_plan}\nepochs of ours: {ours_plan}\n")
    print(f"{'':<34} {'the guide':>14} {'ours':>14}")
    print(
        f"{'before the first epoch s':<34} {guide_curve.first_epoch_at:>14.1f} {ours_setup:>14.1f}  "
        "(ours: the one-time pass)"
    )
    print(f"{'frozen epoch s (median)':<34} {frozen_epoch(guide_curve):>14.2f} {frozen_epoch(ours):>14.2f}")
    print(f"{'total s (test evaluations left out)':<34} {guide_total:>14.1f} {ours_total:>14.1f}")
    print(
        f"{'best test accuracy (epoch)':<34} {f'{guide_best.test_accuracy:.4f} ({guide_best.epoch})':>14} "
        f"{f'{ours_best.test_accuracy:.4f} ({ours_best.epoch})':>14}"
    )
    print(f"{'final test accuracy':<34} {guide_final:>14.4f} {ours_final:>14.4f}")
    print()
    frozen_ratio = frozen_epoch(guide_curve) / frozen_epoch(ours)
    print(f"frozen epoch, guide / ours: {frozen_ratio:.1f}x (target >= {FROZEN_EPOCH_TARGET:g}x)")
    if reached is not None:
        print(
            f"ours reached the guide's best test accuracy {guide_best.test_accuracy:.4f} at epoch {reached.epoch} "
            f"(phase {reached.phase_index + 1}, {reached.phase}, test {reached.test_accuracy:.4f}) after "
            f"{reached.elapsed:.1f} s: "
            f"{reached.elapsed / guide_total:.2f}x the guide's total {guide_total:.1f} s "
            f"(target <= {TIME_TO_BEST_TARGET:g}x)"
        )
    else:
        print(f"ours never reached the guide's best test accuracy {guide_best.test_accuracy:.4f}")
    print(
        f"our final test accuracy {ours_final:.4f} against the guide's best {guide_best.test_accuracy:.4f}: "
        f"{ours_final - guide_best.test_accuracy:+.4f} (target > 0)"
    )


if __name__ == "__main__":
    main()
