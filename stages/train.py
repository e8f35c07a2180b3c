"""DVC stage `train`: new head on the frozen backbone, then progressive unfreezing, tracked in MLflow."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from pipeline import params
from stages._entry import (
    HISTORY_CSV,
    HISTORY_JSON,
    HISTORY_PNG,
    MANIFEST,
    PARAMS,
    RUN_REFERENCE,
    TRAINED_MODEL,
    run_stage,
)


def main() -> None:
    config = params.load(PARAMS)

    from pipeline import devices

    selection = devices.configure(
        requested=config.device.type, gpu_indices=config.device.gpu_indices, precision=config.device.precision
    )

    import keras
    import tensorflow as tf

    from pipeline import export, plots, tracking
    from pipeline.backbones.registry import load_backbone
    from pipeline.data.sources import load_idx_dataset
    from pipeline.data.split import read_manifest, select
    from pipeline.features import ImageSplit
    from pipeline.head import attach_head
    from pipeline.training import UnfreezeStage, fine_tune, plan_phases

    keras.utils.set_random_seed(config.train.seed)
    tf.config.experimental.enable_op_determinism()

    source = load_idx_dataset(config.data.source_dir)
    rows = read_manifest(MANIFEST)
    train_split = ImageSplit(*select(source, rows, "train"))
    val_split = ImageSplit(*select(source, rows, "val"))
    phases = plan_phases(
        frozen_epochs=config.train.frozen_epochs,
        unfreeze=[UnfreezeStage(stage.blocks, stage.epochs, stage.lr_factor) for stage in config.train.unfreeze],
        base_learning_rate=config.train.base_learning_rate,
    )

    tracking_uri = tracking.resolve_tracking_uri(config.tracking.uri)
    with tracking.tracked_run(
        tracking_uri=tracking_uri,
        experiment=config.tracking.experiment,
        artifact_dir=Path(config.tracking.artifact_dir),
        run_name=f"{config.backbone.name}-{config.backbone.image_size}px",
    ) as run:
        run.log_params(params.flatten(config))
        run.set_tags({**selection.as_tags(), "phases": " -> ".join(phase.name for phase in phases)})
        run.log_dataset(
            rows=[asdict(row) for row in rows],
            name="fashion-mnist-split",
            source=str(Path(config.data.source_dir).resolve()),
            context="training",
        )
        run.log_artifact(MANIFEST, "data")

        backbone = load_backbone(
            config.backbone.name, image_size=config.backbone.image_size, cache_dir=config.backbone.cache_dir
        )
        classifier = attach_head(
            backbone,
            num_classes=len(source.class_names),
            pooling=config.head.pooling,
            dropout=config.head.dropout,
            seed=config.train.seed,
        )
        history = fine_tune(
            classifier,
            train=train_split,
            val=val_split,
            phases=phases,
            optimizer=config.train.optimizer,
            batch_size=config.train.batch_size,
            image_size=config.backbone.image_size,
            seed=config.train.seed,
            feature_cache_bytes=config.train.feature_cache_mb * 2**20,
            callbacks=[run.epoch_logger()],
        )
        run.set_tags({f"phase.{phase.index}": phase.describe() for phase in history.phases})

        model = export.end_to_end_model(
            classifier.model, backbone.make_preprocessing(), image_size=config.backbone.image_size
        )
        history.save(csv_path=HISTORY_CSV, json_path=HISTORY_JSON)
        plots.plot_history(history, HISTORY_PNG)
        for artifact in (HISTORY_CSV, HISTORY_JSON, HISTORY_PNG):
            run.log_artifact(artifact, "training")
        export.save_model(model, TRAINED_MODEL)
        tracking.run_reference(run, tracking_uri).write(RUN_REFERENCE)
        for phase in history.phases:
            print(phase.describe())
        print(f"trained {history.epochs_done} epochs in {len(history.phases)} phases; run {run.run_id}")


if __name__ == "__main__":
    run_stage(main)
