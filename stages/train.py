"""DVC stage `train`: new head on the frozen backbone, then progressive unfreezing, tracked in MLflow."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from pipeline import params
from pipeline.tracking import store as tracking_store
from stages._classifier import build_classifier
from stages._entry import (
    DATA_REPORT,
    HISTORY_CSV,
    HISTORY_JSON,
    HISTORY_PNG,
    LAYER_MAP,
    LR_FIND_JSON,
    LR_FIND_PNG,
    MANIFEST,
    PARAMS,
    RUN_REFERENCE,
    TRAINED_MODEL,
    run_stage,
)

# What decides a run besides the data: uncommitted changes here make the run's `git.dirty` true.
CODE_PATHS = ("pipeline", "stages", "dvc.yaml", "params.yaml", "pyproject.toml")


def _base_learning_rate(config: params.PipelineParams) -> tuple[float, str]:
    """The frozen phase's LR and where it came from (params.yaml, or the LR range test's suggestion)."""
    if config.train.base_learning_rate != "auto":
        return config.train.base_learning_rate, "params.yaml"
    found = json.loads(LR_FIND_JSON.read_text(encoding="utf-8"))
    if not found.get("enabled"):
        raise params.ParamsError(
            f"train.base_learning_rate is auto, but {LR_FIND_JSON} holds no LR range test; run the lr_find stage"
        )
    rule = config.lr_find.rule
    return float(found["suggestions"][rule]), f"LR range test ({rule} rule)"


def main() -> None:
    config = params.load(PARAMS)
    base_learning_rate, learning_rate_source = _base_learning_rate(config)
    # Checked here although validate checked: validate is skipped while params.yaml is unchanged, and
    # the server may have gone down, or MLFLOW_TRACKING_URI changed, since it ran.
    tracking_uri = tracking_store.resolve_tracking_uri(config.tracking.uri)
    tracking_store.check_tracking_store(
        tracking_uri, origin=tracking_store.uri_origin(), experiment=config.tracking.experiment
    )

    from pipeline.runtime import devices

    selection = devices.configure(
        accelerator=config.device.accelerator,
        gpus=config.device.gpus,
        precision=config.device.precision,
        jit_compile=config.device.jit_compile,
        memory_growth=config.device.memory_growth,
    )

    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.data.augmentation import build_augmentation
    from pipeline.data.sources import dataset_identity
    from pipeline.data.split import read_manifest, select
    from pipeline.evaluation import plots
    from pipeline.model import export
    from pipeline.model.freezing import save_layer_map
    from pipeline.tracking import lifecycle, provenance
    from pipeline.tracking.epoch_logger import EpochLogger
    from pipeline.training.features import ImageSplit
    from pipeline.training.recipe import fine_tune, plan_phases
    from stages._data import load_source, source_sha256

    keras.utils.set_random_seed(config.train.seed)
    tf.config.experimental.enable_op_determinism()

    source = load_source(config.data)
    rows = read_manifest(MANIFEST)
    train_split = ImageSplit(*select(source, rows, "train"))
    val_split = ImageSplit(*select(source, rows, "val"))
    # Before the run opens: a backbone that cannot be loaded (a TF Hub handle not cached offline, a wrong
    # signature) stops the stage in one line, with no FAILED run left behind.
    # Several GPUs: the model is built, compiled and trained under one MirroredStrategy (a replica each).
    strategy = devices.distribution_strategy(selection)
    with devices.strategy_scope(strategy):
        classifier = build_classifier(config, num_classes=len(source.class_names))
    backbone = classifier.backbone

    labels_by_split = {
        split: np.array([row.label for row in rows if row.split == split], dtype=np.int64)
        for split in ("train", "val", "test")
    }
    with (
        lifecycle.tracked_run(
            tracking_uri=tracking_uri,
            experiment=config.tracking.experiment,
            artifact_dir=Path(config.tracking.artifact_dir),
            run_name=f"{backbone.name}-{config.backbone.image_size}px",
        ) as run,
        run.system_metrics(
            gpu_indices=devices.nvml_indices(selection, os.environ),
            sampling_interval=config.tracking.system_metrics_interval,
        ),
    ):
        run.log_params(params.flatten(config))
        run.log_params(
            {
                **provenance.data_fingerprint(manifest=MANIFEST, source_sha256=source_sha256(config.data)),
                **provenance.class_counts(labels_by_split, source.class_names),
            }
        )
        run.set_tags(
            {
                **provenance.git_state(Path.cwd(), paths=CODE_PATHS),
                **provenance.dvc_context(os.environ),
                **provenance.library_versions(),
            }
        )
        run.log_metrics({"base_learning_rate": base_learning_rate})
        run.set_tags({**selection.as_tags(), "base_learning_rate.source": learning_rate_source})
        device_tags = selection.as_tags()
        print(
            f"device {device_tags['device.selected']}: {selection.precision}, XLA {device_tags['device.xla']}, "
            f"{selection.replicas} replica(s)"
        )
        print(f"base learning rate {base_learning_rate:g} from {learning_rate_source}")
        if config.train.base_learning_rate == "auto":
            for artifact in (LR_FIND_JSON, LR_FIND_PNG):
                run.log_artifact(artifact, "lr_find")
        identity = dataset_identity(config.data.path)
        run.log_dataset(
            rows=[asdict(row) for row in rows], name=identity.name, source=identity.source, context="training"
        )
        run.log_artifact(MANIFEST, "data")
        run.log_artifact(DATA_REPORT, "data")

        summary: list[str] = []
        classifier.model.summary(print_fn=lambda line, *_, **__: summary.append(line))
        run.log_text("\n".join(summary) + "\n", "model/summary.txt")
        phases = plan_phases(
            config.train, base_learning_rate=base_learning_rate, block_count=len(backbone.blocks_top_down)
        )
        run.set_tags({"phases": " -> ".join(phase.name for phase in phases)})
        augmentation = build_augmentation(**config.train.augmentation.model_dump(), seed=config.train.seed)
        with devices.strategy_scope(strategy):
            history = fine_tune(
                classifier,
                train=train_split,
                val=val_split,
                phases=phases,
                batch_size=config.train.batch_size,
                image_size=config.backbone.image_size,
                seed=config.train.seed,
                feature_cache_bytes=config.train.feature_cache_mb * 2**20,
                label_smoothing=config.train.label_smoothing,
                augmentation=augmentation,
                callbacks=[EpochLogger(run)],
                jit_compile=selection.jit_compile,
            )
        run.set_tags({f"phase.{phase.index}": phase.describe() for phase in history.phases})

        model = export.end_to_end_model(
            classifier.model, backbone.make_preprocessing(), image_size=config.backbone.image_size
        )
        history.save(csv_path=HISTORY_CSV, json_path=HISTORY_JSON)
        save_layer_map(history.layers, LAYER_MAP)
        plots.plot_history(history, HISTORY_PNG)
        for artifact in (HISTORY_CSV, HISTORY_JSON, HISTORY_PNG, LAYER_MAP):
            run.log_artifact(artifact, "training")
        export.save_model(model, TRAINED_MODEL)
        lifecycle.run_reference(run, tracking_uri).write(RUN_REFERENCE)
        for phase in history.phases:
            print(phase.describe())
        print(f"trained {history.epochs_done} epochs in {len(history.phases)} phases; run {run.run_id}")


if __name__ == "__main__":
    run_stage(main)
