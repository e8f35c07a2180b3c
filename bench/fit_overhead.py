"""Benchmark: our fine-tune against a bare `model.fit` of the same models on the same tensors (target <= 5%).

`pipeline.training.recipe.fine_tune` wraps each phase's `fit` in machinery: the phase data (EpochOrder's
batches, the activation store's lookup and its digests), the callbacks (history, divergence guard, early
stopping), and in the train stage the tracking run, the checkpoints and the diagnostics. This bench measures
what all that costs against the least a user could write for the same training: for each phase of the plan,
the same sub-model from the phase's cut (the layers frozen as `set_trainable_blocks` leaves them), compiled with
Adam at the phase's LR, `fit` on the same activations held in memory as numpy arrays, for the same epochs,
with the same validation data.

Arms, side by side in one process, `--rounds` times in alternating order:

- `bare`: `model.fit(x, y, validation_data=..., shuffle=True)` per phase, the activations computed before timing;
- `ours+tracking`: `fine_tune` with the EpochLogger of an MLflow run in a temporary SQLite store, as
  stages/train.py uses them (the run opened and ended by `tracked_run`, inside the timing);
- `ours as train`: the same plus what the train stage adds by default: checkpoints after every epoch
  (`train.resume: true`), the diagnostics (gradient norms, dead ReLUs) and system-metrics sampling.

The phases are params.yaml's `train` section with fixed epochs (`--epochs`, one per phase; `epochs: auto`
would let early stopping end each arm at another epoch). Our arms read the frozen activations from a
temporary activation store, filled by a warm-up run before any timing, so no arm computes the one-time pass:
it costs the same in both and is measured by bench/frozen_pass.py. Op determinism is on, as in the train stage.

    PYTHONPATH=. .venv/bin/python bench/fit_overhead.py                           # 4,000 images, 2+1+1 epochs
    PYTHONPATH=. .venv/bin/python bench/fit_overhead.py --images 1000 --rounds 1  # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import _machine  # bench/ is the script's folder, first on sys.path

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.05
ARMS = ("bare", "ours+tracking", "ours as train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="training images (validation gets a quarter)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 1, 1], help="epochs of each phase of the plan")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the arms, in alternating order")
    parser.add_argument("--source-dir", default="/usr/share/datasets/fashion-mnist")
    arguments = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.backbones.registry import load_backbone
    from pipeline.data.datasets import image_dataset
    from pipeline.data.sources import load_idx_dataset
    from pipeline.model.freezing import set_trainable_blocks
    from pipeline.model.head import build_head
    from pipeline.params import parse
    from pipeline.tracking.epoch_logger import EpochLogger
    from pipeline.tracking.lifecycle import tracked_run
    from pipeline.training.activation_store import ActivationStore
    from pipeline.training.checkpoint import CheckpointKey
    from pipeline.training.diagnostics import TrainingDiagnostics
    from pipeline.training.features import ImageSplit, InputSettings, _forward_pass, cut_tensor
    from pipeline.training.recipe import fine_tune, plan_phases
    from pipeline.training.resume import Checkpointing

    machine = _machine.describe()
    tf.config.experimental.enable_op_determinism()
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    train_section = raw["train"]
    if len(arguments.epochs) != 1 + len(train_section["unfreeze"]):
        parser.error(f"--epochs takes one number per phase: 1 + {len(train_section['unfreeze'])} unfreeze stages")
    train_section["frozen_epochs"] = arguments.epochs[0]
    for stage, epochs in zip(train_section["unfreeze"], arguments.epochs[1:], strict=True):
        for bound in ("min_steps", "max_steps", "max_epochs"):
            stage.pop(bound, None)
        stage["epochs"] = epochs
    config = parse(raw)
    cache_dir = REPO / config.backbone.cache_dir
    size = config.backbone.image_size

    source = load_idx_dataset(arguments.source_dir)
    end = arguments.images + arguments.images // 4
    train = ImageSplit(source.images[: arguments.images], source.labels[: arguments.images])
    val = ImageSplit(source.images[arguments.images : end], source.labels[arguments.images : end])

    def classifier() -> object:
        keras.utils.set_random_seed(config.train.seed)
        backbone = load_backbone(config.backbone.name, image_size=size, cache_dir=cache_dir)
        return build_head(backbone, config.head, num_classes=10, seed=config.train.seed)

    probe = classifier()
    blocks = probe.backbone.blocks_top_down
    inputs = InputSettings.from_params(config.train, image_size=size)
    phases = plan_phases(
        config.train,
        base_learning_rate=config.train.base_learning_rate,
        block_count=len(blocks),
        steps_per_epoch=inputs.steps_per_epoch(len(train.labels)),
        train_examples=len(train.labels),
    )
    # The bare arm's tensors: every phase's cut over both splits, computed once, before any timing.
    preprocessing = probe.backbone.make_preprocessing()
    tensors: dict[int, dict[str, np.ndarray]] = {}
    for trainable_blocks in sorted({phase.trainable_blocks for phase in phases}):
        prefix = keras.Model(probe.model.input, cut_tensor(probe, trainable_blocks))
        tensors[trainable_blocks] = {
            split: _forward_pass(
                prefix,
                image_dataset(data.images, data.labels, image_size=size, batch_size=64, preprocessing=preprocessing),
                batch_size=64,
            )
            for split, data in (("train", train), ("val", val))
        }

    work = Path(tempfile.mkdtemp(prefix="fit-overhead-"))
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    inputs = InputSettings(
        image_size=size,
        batch_size=config.train.batch_size,
        seed=config.train.seed,
        cache_limit_bytes=config.train.feature_cache_mb * 2**20,
        activation_store=ActivationStore(work / "activations", limit_bytes=8 << 30),
    )

    def bare() -> None:
        model_source = classifier()
        for phase in phases:
            set_trainable_blocks(
                model_source.model, blocks, trainable_blocks=phase.trainable_blocks, bn_policy=phase.bn_policy
            )
            model = keras.Model(cut_tensor(model_source, phase.trainable_blocks), model_source.model.output)
            model.compile(
                optimizer=keras.optimizers.Adam(phase.learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            data = tensors[phase.trainable_blocks]
            model.fit(
                data["train"],
                train.labels,
                batch_size=config.train.batch_size,
                epochs=phase.epochs,
                validation_data=(data["val"], val.labels),
                shuffle=True,
                verbose=0,
            )

    def ours(*, as_train: bool, run_number: int) -> None:
        model_source = classifier()
        with contextlib.ExitStack() as stack:
            run = stack.enter_context(
                tracked_run(
                    tracking_uri=tracking_uri,
                    experiment="fit-overhead",
                    artifact_dir=work / "mlartifacts",
                    run_name=f"run-{run_number}",
                )
            )
            if as_train:
                stack.enter_context(
                    run.system_metrics(sampling_interval=config.tracking.system_metrics_interval, resume=False)
                )
            logger = EpochLogger(run)
            fine_tune(
                model_source,
                train=train,
                val=val,
                phases=phases,
                inputs=inputs,
                callbacks=[logger],
                verbose=0,
                diagnostics=TrainingDiagnostics(config.diagnostics, print_line=lambda line: None) if as_train else None,
                checkpointing=Checkpointing(
                    path=work / f"checkpoint-{run_number}", key=CheckpointKey({}, {}, {}), run_id=run.run_id
                )
                if as_train
                else None,
            )
            logger.finish(wait_seconds=config.tracking.reconnect_seconds)

    arms = {
        "bare": lambda number: bare(),
        "ours+tracking": lambda number: ours(as_train=False, run_number=number),
        "ours as train": lambda number: ours(as_train=True, run_number=number),
    }
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    try:
        # The warm-up: creates the SQLite store's tables and fills the activation store; not timed.
        started = time.perf_counter()
        arms["ours+tracking"](0)
        print(f"warm-up (store created, activations stored): {time.perf_counter() - started:.1f} s", flush=True)
        number = 1
        for round_index in range(arguments.rounds):
            order = ARMS if round_index % 2 == 0 else tuple(reversed(ARMS))
            for arm in order:
                started = time.perf_counter()
                arms[arm](number)
                seconds[arm].append(time.perf_counter() - started)
                number += 1
                print(f"round {round_index + 1}: {arm:<14} {seconds[arm][-1]:7.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    plan = " + ".join(f"{phase.name} {phase.epochs}" for phase in phases)
    print(
        f"\n{len(train.labels)} training and {len(val.labels)} validation images at {size} px, epochs {plan}, "
        f"{arguments.rounds} round(s)\nmachine: {machine}; at the end {_machine.load_now()}\n"
    )
    base = statistics.median(seconds["bare"])
    print(f"{'arm':<15} {'median s':>9} {'every round':<24} {'overhead vs bare':>17}")
    for arm in ARMS:
        median = statistics.median(seconds[arm])
        rounds = ", ".join(f"{value:.1f}" for value in seconds[arm])
        overhead = "" if arm == "bare" else f"{median / base - 1:+.1%}"
        print(f"{arm:<15} {median:>9.1f} {rounds:<24} {overhead:>17}")
    print(f"\ntarget: ours+tracking <= {TARGET:.0%} over bare")


if __name__ == "__main__":
    main()
