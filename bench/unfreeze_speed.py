"""Benchmark: images/s of the unfreeze step at two input sizes, float32 against mixed_float16 (with and without XLA).

The unfreeze phases train the top blocks of the backbone with the head: on a GPU that step is where mixed
precision and XLA should pay. This bench builds EfficientNet-Lite0 (ImageNet weights) with params.yaml's head
under each dtype policy, unfreezes the top `--blocks` blocks as the pipeline does
(`pipeline.model.freezing.set_trainable_blocks`, params.yaml's `train.bn_policy`), compiles Adam with
`jit_compile` as the configuration says, and times `fit` over the same in-memory batches of Fashion-MNIST
images, for two models:

- `cached`: the sub-model from the phase's cut to the output, on the frozen activations below it (computed
  once, as `pipeline.training.features` hands a cached phase to `fit`): what the default run trains;
- `images`: the whole classifier on images, its lower blocks frozen (a run whose augmentation turns the cache off).

Configurations: float32; mixed_float16; mixed_float16 + XLA (`jit_compile=True`); with `--configs` also
float32_xla. Every model is built and traced first; then `--rounds` rounds each time every (size, model,
configuration) once, in an order rotated each round. Each measurement is one `fit` epoch of `--steps` steps,
timed per step by a callback from the end of its first step to the end of its last (so neither `fit`'s set-up
nor the first step's warm-up counts; Keras hands a callback that is not async-safe the step's results as numbers,
so on a GPU each time includes the step's computation); the median images/s is printed with the ratio to float32
of the same size and model. XLA is checked after compiling (`model.jit_compile`): Keras turns it off with a warning
where the model does not support it. On a GPU the target is mixed_float16 + XLA >= 3x float32. On a CPU,
mixed_float16 is emulated and runs ~4x slower than float32 (see STACK_NOTES), and XLA's CPU convolutions are
slow: those rows are skipped unless `--cpu-mixed` asks for them, and are marked "(CPU)" when run.
Runs unchanged on a GPU machine (memory growth on, more steps: `--steps` defaults to 50 there, 12 on a CPU).

    .venv/bin/python bench/unfreeze_speed.py                        # 96 and 160 px
    .venv/bin/python bench/unfreeze_speed.py --cpu-mixed --rounds 1 # the mixed rows on a CPU too (slow)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _machine  # bench/ is the script's folder, first on sys.path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    # name: (dtype policy, jit_compile)
    "float32": ("float32", False),
    "float32_xla": ("float32", True),
    "mixed_float16": ("mixed_float16", False),
    "mixed_float16_xla": ("mixed_float16", True),
}
GPU_TARGET = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 160], help="input sizes (px)")
    parser.add_argument("--models", nargs="+", choices=("cached", "images"), default=["cached", "images"])
    parser.add_argument(
        "--configs", nargs="+", choices=tuple(CONFIGS), default=["float32", "mixed_float16", "mixed_float16_xla"]
    )
    parser.add_argument("--blocks", type=int, default=2, help="top blocks unfrozen (the default run's 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="steps per measurement (default 50 GPU, 12 CPU)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of every row, interleaved")
    parser.add_argument("--cpu-mixed", action="store_true", help="on a CPU, run the mixed and XLA rows too")
    parser.add_argument("--source-dir", default="/usr/share/datasets/fashion-mnist")
    arguments = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    machine = _machine.describe()

    from pipeline.backbones.registry import load_backbone
    from pipeline.data.datasets import to_model_input
    from pipeline.data.sources import load_idx_dataset
    from pipeline.model.freezing import set_trainable_blocks
    from pipeline.model.head import build_head
    from pipeline.params import load
    from pipeline.training.features import cut_tensor

    config = load(REPO / "params.yaml")
    steps = arguments.steps or (50 if gpus else 12)
    count = steps * arguments.batch_size
    source = load_idx_dataset(arguments.source_dir)
    labels = source.labels[:count]
    skipped = [] if gpus or arguments.cpu_mixed else [name for name in arguments.configs if name != "float32"]
    configs = [name for name in arguments.configs if name not in skipped]

    # (size, model, config) -> (compiled model, inputs); all built and traced before any timing.
    rows: dict[tuple[int, str, str], tuple[keras.Model, np.ndarray]] = {}
    xla_used: dict[tuple[int, str, str], bool] = {}
    for size in arguments.sizes:
        pixels = keras.ops.convert_to_numpy(to_model_input(source.images[:count], image_size=size))
        for name in configs:
            policy, jit_compile = CONFIGS[name]
            keras.mixed_precision.set_global_policy(policy)
            try:
                keras.utils.set_random_seed(0)
                backbone = load_backbone(
                    "efficientnet_lite0", image_size=size, cache_dir=REPO / config.backbone.cache_dir
                )
                classifier = build_head(backbone, config.head, num_classes=10, seed=0)
                preprocessed = keras.ops.convert_to_numpy(backbone.make_preprocessing()(pixels))
                set_trainable_blocks(
                    classifier.model,
                    backbone.blocks_top_down,
                    trainable_blocks=arguments.blocks,
                    bn_policy=config.train.bn_policy,
                )
                cut = cut_tensor(classifier, arguments.blocks)
                for model_kind in arguments.models:
                    if model_kind == "cached":
                        prefix = keras.Model(classifier.model.input, cut)
                        inputs = keras.ops.convert_to_numpy(
                            prefix.predict(preprocessed, batch_size=arguments.batch_size, verbose=0)
                        )
                        model = keras.Model(cut, classifier.model.output)
                    else:
                        # The same layers as the cached sub-model's (their weights do not change the step's speed).
                        inputs, model = preprocessed, classifier.model
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.compile(
                            optimizer=keras.optimizers.Adam(5e-4),
                            loss="sparse_categorical_crossentropy",
                            metrics=["accuracy"],
                            jit_compile=jit_compile,
                        )
                    started = time.perf_counter()
                    model.fit(inputs, labels, batch_size=arguments.batch_size, epochs=1, shuffle=False, verbose=0)
                    key = (size, model_kind, name)
                    rows[key] = (model, inputs)
                    xla_used[key] = bool(model.jit_compile)
                    print(
                        f"built and traced {size} px {model_kind:<6} {name:<18} in "
                        f"{time.perf_counter() - started:.1f} s (XLA {'on' if xla_used[key] else 'off'}, "
                        f"{len(model.trainable_weights)} trainable tensors, input {inputs.dtype})",
                        flush=True,
                    )
            finally:
                keras.mixed_precision.set_global_policy("float32")

    class StepTimer(keras.callbacks.Callback):
        """The moments each training step of a `fit` ended."""

        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []

        def on_train_batch_end(self, batch: int, logs: dict[str, object] | None = None) -> None:
            self.ends.append(time.perf_counter())

    timed_images = (steps - 1) * arguments.batch_size
    seconds: dict[tuple[int, str, str], list[float]] = {key: [] for key in rows}
    order = list(rows)
    for round_index in range(arguments.rounds):
        shift = (round_index * len(order)) // max(1, arguments.rounds)
        for key in order[shift:] + order[:shift]:
            model, inputs = rows[key]
            timer = StepTimer()
            model.fit(
                inputs, labels, batch_size=arguments.batch_size, epochs=1, shuffle=False, callbacks=[timer], verbose=0
            )
            seconds[key].append(timer.ends[-1] - timer.ends[0])
            rate = timed_images / seconds[key][-1]
            print(f"round {round_index + 1}: {key[0]} px {key[1]:<6} {key[2]:<18} {rate:8.1f} images/s", flush=True)

    device = "GPU" if gpus else "CPU"
    print(
        f"\nunfreeze step of EfficientNet-Lite0, top {arguments.blocks} blocks trainable (bn_policy "
        f"{config.train.bn_policy}), batch {arguments.batch_size}, {steps} steps a measurement ({steps - 1} timed) x "
        f"{arguments.rounds} round(s), on the {device}\nmachine: {machine}; at the end {_machine.load_now()}\n"
    )
    print(f"{'size':>5} {'model':<7} {'configuration':<18} {'XLA':>4} {'images/s':>9} {'vs float32':>11}")
    for size in arguments.sizes:
        for model_kind in arguments.models:
            base_key = (size, model_kind, "float32")
            base = timed_images / statistics.median(seconds[base_key]) if base_key in seconds else None
            for name in arguments.configs:
                key = (size, model_kind, name)
                if key not in seconds:
                    print(f"{size:>5} {model_kind:<7} {name:<18} {'':>4} skipped on the CPU (mixed/XLA: slow there)")
                    continue
                rate = timed_images / statistics.median(seconds[key])
                ratio = f"{rate / base:.2f}x" if base else "-"
                mark = " (CPU)" if not gpus and name != "float32" else ""
                xla = "on" if xla_used[key] else "off"
                print(f"{size:>5} {model_kind:<7} {name:<18} {xla:>4} {rate:>9.1f} {ratio:>11}{mark}")
    if gpus:
        print(f"\ntarget on a GPU: mixed_float16_xla >= {GPU_TARGET:g}x float32")
    else:
        print(
            "\non a CPU mixed_float16 is emulated (~4x slower than float32) and XLA's convolutions are slow: the "
            f"{GPU_TARGET:g}x target is for a GPU"
        )


if __name__ == "__main__":
    main()
