"""DVC stage `train`: new head on the frozen backbone, then progressive unfreezing, tracked in MLflow."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import params
from pipeline.tracking import runs as tracking_runs
from pipeline.tracking import store as tracking_store
from stages._checkpoint import TRAIN_CHECKPOINT, checkpoint_key, resume_point
from stages._classifier import build_classifier
from stages._cluster import training_cluster
from stages._entry import (
    DATA_REPORT,
    DIAGNOSIS_JSON,
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

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from pipeline.data.sources import ImageSource
    from pipeline.data.split import ManifestRow
    from pipeline.model.head import Classifier
    from pipeline.runtime.cluster import ClusterRole
    from pipeline.runtime.devices import DeviceSelection
    from pipeline.tracking.epoch_logger import EpochLogger
    from pipeline.tracking.runs import TrackedRun
    from pipeline.training.checkpoint import Checkpoint
    from pipeline.training.diagnosis import Diagnosis
    from pipeline.training.diagnostics import TrainingDiagnostics
    from pipeline.training.features import ImageSplit, InputSettings
    from pipeline.training.history import TrainingHistory
    from pipeline.training.recipe import Phase
    from pipeline.training.resume import Checkpointing

# What decides a run besides the data: uncommitted changes here make the run's `git.dirty` true.
CODE_PATHS = ("pipeline", "stages", "dvc.yaml", "params.yaml", "pyproject.toml")


@dataclass
class _Training:
    """What the chief and the other workers set up alike, before the chief opens its MLflow run."""

    selection: DeviceSelection
    strategy: tf.distribute.Strategy | None
    deterministic: tuple[bool, str]
    source: ImageSource
    rows: list[ManifestRow]
    train: ImageSplit
    val: ImageSplit
    classifier: Classifier
    inputs: InputSettings
    base_learning_rate: float
    learning_rate_source: str

    def plan(self, config: params.PipelineParams) -> list[Phase]:
        from pipeline.training.recipe import plan_phases

        return plan_phases(
            config.train,
            base_learning_rate=self.base_learning_rate,
            block_count=len(self.classifier.backbone.blocks_top_down),
            steps_per_epoch=self.inputs.steps_per_epoch(len(self.train.labels)),
            train_examples=len(self.train.labels),
        )

    def fit(
        self,
        config: params.PipelineParams,
        phases: list[Phase],
        *,
        callbacks: list[keras.callbacks.Callback],
        diagnostics: TrainingDiagnostics,
        checkpointing: Checkpointing | None,
    ) -> TrainingHistory:
        from pipeline.runtime import devices
        from pipeline.training.recipe import fine_tune

        with devices.strategy_scope(self.strategy):
            return fine_tune(
                self.classifier,
                train=self.train,
                val=self.val,
                phases=phases,
                inputs=self.inputs,
                callbacks=callbacks,
                jit_compile=self.selection.jit_compile,
                diagnostics=diagnostics,
                checkpointing=checkpointing,
            )


def main() -> None:
    config = params.load(PARAMS)
    role = training_cluster(config, os.environ)
    if role is not None and not role.is_chief:
        _train_as_worker(config, role)
        return
    # A tracking server that goes away mid-training must not block it: each request gives up in seconds.
    tracking_runs.bound_http_requests(os.environ)
    # Checked here although validate checked: validate is skipped while params.yaml is unchanged, and
    # the server may have gone down, or MLFLOW_TRACKING_URI changed, since it ran.
    tracking_uri, _ = tracking_store.usable_tracking_uri(config.tracking.uri, experiment=config.tracking.experiment)
    training = _set_up(config, role)
    from pipeline.runtime import devices
    from pipeline.tracking import provenance
    from pipeline.tracking.epoch_logger import EpochLogger
    from pipeline.tracking.lifecycle import tracked_run
    from pipeline.training.checkpoint import remove_checkpoint
    from pipeline.training.diagnostics import TrainingDiagnostics
    from pipeline.training.resume import Checkpointing
    from stages._data import source_sha256

    selection, classifier = training.selection, training.classifier
    key = checkpoint_key(
        config,
        base_learning_rate=training.base_learning_rate,
        tracking_uri=tracking_uri,
        source_sha256=source_sha256(config.data),
    )
    resume, resumed_run = resume_point(config, key, tracking_uri=tracking_uri)
    if resume is not None and role is not None:
        # The other workers have no checkpoint to go on from: they would start afresh, out of step.
        raise params.ParamsError(
            f"{TRAIN_CHECKPOINT} holds an interrupted run of this training; several workers cannot resume it "
            "(only the chief has it). Resume it on this machine alone (unset TF_CONFIG), or delete the file"
        )
    checkpoints = config.train.resume and role is None
    if config.train.resume and role is not None:
        print(
            "train.resume: no checkpoint with several workers: saving one reads state the workers hold in parts "
            "(a collective step the other workers do not take), and they could not resume from it"
        )
    run_name = provenance.run_name(f"{classifier.backbone.name}-{config.backbone.image_size}px", os.environ)
    names = config.tracking
    if resumed_run is None:
        print(
            f"MLflow run {run_name!r} in experiment {names.experiment!r}; registered model {names.registered_model!r}"
        )
    with (
        tracked_run(
            tracking_uri=tracking_uri,
            experiment=config.tracking.experiment,
            artifact_dir=Path(config.tracking.artifact_dir),
            run_name=run_name,
            resume=resumed_run,
        ) as run,
        run.system_metrics(
            gpu_indices=devices.nvml_indices(selection, os.environ),
            sampling_interval=config.tracking.system_metrics_interval,
            resume=resume is not None,
        ),
    ):
        logger = EpochLogger(run, logged_steps=run.logged_steps("loss") if resume is not None else None)
        if resume is None:
            _log_inputs(run, config, training, role, data_fingerprint=key.data)
            _log_learning_rate(run, training.base_learning_rate, training.learning_rate_source)
        phases = training.plan(config)
        _log_plan(run, phases, train_examples=len(training.train.labels))
        if resume is not None:
            _log_resume(run, resume, logger, phases)
        diagnostics = TrainingDiagnostics(config.diagnostics)
        try:
            history = training.fit(
                config,
                phases,
                callbacks=[logger],
                diagnostics=diagnostics,
                checkpointing=Checkpointing(
                    path=TRAIN_CHECKPOINT,
                    key=key,
                    run_id=run.run_id,
                    every_steps=config.train.checkpoint_every_steps,
                    resume=resume,
                )
                if checkpoints
                else None,
            )
            # The epochs a tracking server that went away did not take yet; what follows needs it answering.
            logger.finish(wait_seconds=config.tracking.reconnect_seconds)
        finally:
            # Also when training diverged: an exploding-gradient flag is then the run's explanation.
            run.set_tags(diagnostics.tags())
        if role is not None:
            from pipeline.training.distributed import weights_digest

            digest = weights_digest(classifier.model)
            run.set_tags({"cluster.weights_sha256": digest})
            print(f"chief: weights sha256 {digest} (every worker prints its own: equal when they trained in step)")
        _write_outputs(run, config, classifier, history, tracking_uri=tracking_uri)
    # Only once the outputs are written and the run ended: a kill before this resumes to write them.
    remove_checkpoint(TRAIN_CHECKPOINT)


def _set_up(config: params.PipelineParams, role: ClusterRole | None) -> _Training:
    """Devices, strategy, seeds, data and the classifier: the same on the chief and on every other worker.

    Raises:
        ParamsError: `train.base_learning_rate: auto` without an LR range test.
        DeviceSelectionError: See `pipeline.runtime.devices.configure`.
    """
    base_learning_rate, learning_rate_source = _base_learning_rate(config)
    from pipeline.runtime import devices

    selection = devices.configure(config.device)
    # Right after configure: MultiWorkerMirroredStrategy must exist before any other TensorFlow op.
    strategy = devices.distribution_strategy(selection, cluster=role)
    import keras
    import tensorflow as tf

    from pipeline.data.split import read_manifest, select
    from pipeline.training.features import ImageSplit, InputSettings
    from stages._data import load_source

    keras.utils.set_random_seed(config.train.seed)
    deterministic = devices.resolve_determinism(config.train.deterministic, selection)
    if deterministic[0]:
        tf.config.experimental.enable_op_determinism()
    if selection.unseen_warning:
        print(selection.unseen_warning, flush=True)
    if role is not None:
        print(f"training as the {role.describe()}", flush=True)
    source, rows = load_source(config.data), read_manifest(MANIFEST)
    train, val = (ImageSplit(*select(source, rows, split)) for split in ("train", "val"))
    # Before the run opens: a backbone that cannot be loaded (a TF Hub handle not cached offline, a wrong
    # signature) stops the stage in one line, with no FAILED run left behind.
    # Several GPUs or workers: the model is built, compiled and trained under the one strategy.
    with devices.strategy_scope(strategy):
        classifier = build_classifier(config, num_classes=len(source.class_names))
    return _Training(
        selection=selection,
        strategy=strategy,
        deterministic=deterministic,
        source=source,
        rows=rows,
        train=train,
        val=val,
        classifier=classifier,
        inputs=InputSettings.from_params(
            config.train, image_size=config.backbone.image_size, workers=role.workers if role else 1
        ),
        base_learning_rate=base_learning_rate,
        learning_rate_source=learning_rate_source,
    )


def _train_as_worker(config: params.PipelineParams, role: ClusterRole) -> None:
    """A worker other than the chief: trains in step with it and writes nothing (no MLflow, no files).

    Why nothing: the chief holds the same weights (every step's gradients are all-reduced), and it alone
    logs the run, writes `build/`, `reports/` and the checkpoint, and registers (the register stage runs on
    the chief's `dvc repro`).
    """
    from pipeline.training.diagnostics import TrainingDiagnostics

    training = _set_up(config, role)
    phases = training.plan(config)
    # The same diagnostics as the chief's: they change what each step computes (gradient norms), so the
    # workers' steps stay the same program; only the chief logs their flags.
    history = training.fit(
        config, phases, callbacks=[], diagnostics=TrainingDiagnostics(config.diagnostics), checkpointing=None
    )
    from pipeline.training.distributed import weights_digest

    print(
        f"{role.task_type} {role.task_index}: trained {history.epochs_done} epochs in step with the chief, weights "
        f"sha256 {weights_digest(training.classifier.model)}; nothing written"
    )


def _base_learning_rate(config: params.PipelineParams) -> tuple[float, str]:
    """The frozen phase's LR and where it came from (params.yaml, or the LR range test's suggestion)."""
    if config.train.base_learning_rate != "auto":
        return config.train.base_learning_rate, "params.yaml"
    from pipeline.optim.lr_finder import LRFindReport

    found = LRFindReport.read(LR_FIND_JSON)
    if not found.enabled or found.result is None:
        raise params.ParamsError(
            f"train.base_learning_rate is auto, but {LR_FIND_JSON} holds no LR range test; run the lr_find stage"
        )
    rule = config.lr_find.rule
    return found.result.suggestion(rule), f"LR range test ({rule} rule)"


def _log_learning_rate(run: TrackedRun, learning_rate: float, source: str) -> None:
    run.log_metrics({"base_learning_rate": learning_rate})
    run.set_tags({"base_learning_rate.source": source})
    print(f"base learning rate {learning_rate:g} from {source}")


def _log_resume(run: TrackedRun, resume: Checkpoint, logger: EpochLogger, phases: list[Phase]) -> None:
    """Tags and prints where a resumed run goes on, and logs the checkpoint's epochs the run lacks."""
    state = resume.state
    sent = logger.catch_up(state.rows)
    # A checkpoint written at a phase's last epoch (or where early stopping ended it) goes on with the next phase.
    index = state.phase_index
    phase_first_epoch = state.phases[-1]["end_epoch"] if state.phases else 0
    ended = not state.batches_done and state.epochs_done >= phase_first_epoch + phases[index].epochs
    index += 1 if (state.phase_stopped or ended) and index + 1 < len(phases) else 0
    tags = {"resume.count": str(state.resumes + 1), "resume.from_epoch": str(state.epochs_done + 1)}
    if state.batches_done:
        tags["resume.from_batch"] = str(state.batches_done + 1)
    run.set_tags(tags)
    caught_up = f"; {sent} epoch(s) the run lacked logged from the checkpoint" if sent else ""
    print(
        f"resuming MLflow run {run.run_id} from {TRAIN_CHECKPOINT}: {state.where()} (phase {index + 1}, "
        f"{phases[index].name}), {state.epochs_done} epoch(s) done (resume {state.resumes + 1}){caught_up}"
    )


def _log_plan(run: TrackedRun, phases: list[Phase], *, train_examples: int) -> None:
    """The plan, printed and tagged before training: each phase's length and why, and when it stops."""
    print(f"plan for {train_examples} training images:")
    lines = [phase.describe_plan() for phase in phases]
    for line in lines:
        print(f"  {line}")
    run.set_tags({"phases": " -> ".join(phase.name for phase in phases)})
    run.log_text("\n".join(lines) + "\n", "training/plan.txt")


def _log_inputs(
    run: TrackedRun,
    config: params.PipelineParams,
    training: _Training,
    role: ClusterRole | None,
    *,
    data_fingerprint: Mapping[str, str],
) -> None:
    """Everything the run started from: params, data (fingerprint, counts, dataset), code, devices, the model.

    `data_fingerprint` is the checkpoint key's (`provenance.data_fingerprint`), computed once per run.
    """
    selection, source, rows, classifier = training.selection, training.source, training.rows, training.classifier
    deterministic = training.deterministic
    import numpy as np

    from pipeline.data.sources import dataset_identity
    from pipeline.tracking import provenance, seed_groups

    labels_by_split = {
        split: np.array([row.label for row in rows if row.split == split], dtype=np.int64)
        for split in ("train", "val", "test")
    }
    run.log_params(params.flatten(config))
    run.log_params(
        {
            **data_fingerprint,
            **provenance.class_counts(labels_by_split, source.class_names),
        }
    )
    run.set_tags(
        {
            **seed_groups.member_tags(params.seed_group_key(config), config.train.seed, config.data.seed),
            **provenance.git_state(Path.cwd(), paths=CODE_PATHS),
            **provenance.dvc_context(os.environ),
            **provenance.library_versions(),
            **selection.as_tags(),
            "device.deterministic": f"{str(deterministic[0]).lower()} ({deterministic[1]})",
            **(
                {
                    "device.strategy": "MultiWorkerMirroredStrategy",
                    "cluster.workers": str(role.workers),
                    "cluster.addresses": ", ".join(role.addresses),
                }
                if role is not None
                else {}
            ),
        }
    )
    device_tags = selection.as_tags()
    print(
        f"device {device_tags['device.selected']}: {selection.precision}, XLA asked "
        f"{device_tags['device.xla_requested']}, {selection.replicas} replica(s), deterministic ops "
        f"{str(deterministic[0]).lower()} ({deterministic[1]})"
    )
    if config.train.base_learning_rate == "auto":
        for artifact in (LR_FIND_JSON, LR_FIND_PNG):
            run.log_artifact(artifact, "lr_find")
    identity = dataset_identity(config.data.path)
    run.log_dataset(rows=[asdict(row) for row in rows], name=identity.name, source=identity.source, context="training")
    run.log_artifact(MANIFEST, "data")
    run.log_artifact(DATA_REPORT, "data")
    summary: list[str] = []
    classifier.model.summary(print_fn=lambda line, *_, **__: summary.append(line))
    run.log_text("\n".join(summary) + "\n", "model/summary.txt")


def _write_outputs(
    run: TrackedRun,
    config: params.PipelineParams,
    classifier: Classifier,
    history: TrainingHistory,
    *,
    tracking_uri: str,
) -> None:
    """The phases as tags, the history and layer map as files and artifacts, the model, and the run's reference."""
    from pipeline.evaluation import plots
    from pipeline.model import export
    from pipeline.model.freezing import save_layer_map
    from pipeline.tracking.lifecycle import run_reference

    run.set_tags({f"phase.{phase.index}": phase.describe() for phase in history.phases})
    model = export.end_to_end_model(
        classifier.model, classifier.backbone.make_preprocessing(), image_size=config.backbone.image_size
    )
    history.save(csv_path=HISTORY_CSV, json_path=HISTORY_JSON)
    save_layer_map(history.layers, LAYER_MAP)
    diagnosis = _diagnosis(config, history, num_classes=classifier.model.output_shape[-1])
    diagnosis.save(DIAGNOSIS_JSON)
    if diagnosis.verdict != "off":
        run.set_tags({"diagnosis": diagnosis.sentence})
        print(f"diagnosis: {diagnosis.sentence}")
    marker = (diagnosis.epoch, diagnosis.verdict) if diagnosis.epoch is not None else None
    plots.plot_history(history, HISTORY_PNG, marker=marker)
    for artifact in (HISTORY_CSV, HISTORY_JSON, HISTORY_PNG, LAYER_MAP, DIAGNOSIS_JSON):
        run.log_artifact(artifact, "training")
    export.save_model(model, TRAINED_MODEL)
    run_reference(run, tracking_uri).write(RUN_REFERENCE)
    for phase in history.phases:
        print(phase.describe())
    print(f"trained {history.epochs_done} epochs in {len(history.phases)} phases; run {run.run_id}")


def _diagnosis(config: params.PipelineParams, history: TrainingHistory, *, num_classes: int) -> Diagnosis:
    """The reading of the curves, or verdict `off` (diagnostics.diagnosis false: the file still exists for DVC)."""
    from pipeline.training.diagnosis import Diagnosis, diagnose

    settings = config.diagnostics
    if not settings.diagnosis:
        return Diagnosis("off", "diagnostics.diagnosis is false")
    return diagnose(
        history,
        num_classes=num_classes,
        window=settings.window,
        tolerance=settings.tolerance,
        underfit_loss=settings.underfit_loss,
    )


if __name__ == "__main__":
    run_stage(main)
