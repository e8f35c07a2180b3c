"""DVC stage `evaluate`: test metrics of the trained model and of the champion on one split, to reports/ and the run.

The current `@champion` of `tracking.registered_model` is scored on this run's test images, with the
majority-class baseline, so that the register stage's gate compares like with like (`pipeline.evaluation.gate`).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from pipeline import params
from pipeline.tracking import store as tracking_store
from stages._entry import (
    CLASSIFICATION_REPORT,
    COMPARISON,
    CONFUSION_PNG,
    MANIFEST,
    METRICS,
    PARAMS,
    RUN_REFERENCE,
    TRAINED_MODEL,
    run_stage,
)

if TYPE_CHECKING:
    import numpy as np

    from pipeline.evaluation.gate import Comparison
    from pipeline.evaluation.metrics import EvaluationResult
    from pipeline.tracking.runs import TrackedRun


def main() -> None:
    config = params.load(PARAMS)
    from pipeline.runtime import devices

    devices.configure(config.device)

    from pipeline.data.split import read_manifest, select
    from pipeline.evaluation import plots
    from pipeline.evaluation.metrics import evaluate_classifier
    from pipeline.model import export
    from pipeline.tracking import provenance
    from pipeline.tracking.lifecycle import tracked_run
    from pipeline.tracking.runs import RunReference
    from stages._data import load_source

    reference = RunReference.read(RUN_REFERENCE)
    tracking_store.check_tracking_store(reference.tracking_uri, origin=f"{RUN_REFERENCE}, written by train")
    source = load_source(config.data)
    classes = source.class_names
    images, labels = select(source, read_manifest(MANIFEST), "test")
    model = export.load_model(TRAINED_MODEL, safe_mode=config.backbone.safe_mode)
    with tracked_run(tracking_uri=reference.tracking_uri, resume=reference) as run:
        # The stage working on the run now: the UI then tells which stage a RUNNING run is in.
        run.set_tags(provenance.dvc_context(os.environ))
        result = evaluate_classifier(
            model,
            images,
            labels,
            class_names=classes,
            image_size=model.input_shape[1],
            batch_size=config.evaluate.batch_size,
        )
        result.write(metrics=METRICS, report=CLASSIFICATION_REPORT, class_names=classes)
        plots.plot_confusion_matrix(result.confusion, classes, CONFUSION_PNG)
        comparison = _compare_with_champion(run, config, result, images, labels, classes=classes)
        comparison.write(COMPARISON)
        run.log_metrics(comparison.run_metrics())
        run.set_tags({"gate.compared_with": comparison.compared_with()})
        for artifact in (METRICS, CLASSIFICATION_REPORT, CONFUSION_PNG, COMPARISON):
            run.log_artifact(artifact, "evaluation")
    _print_summary(comparison, registered_model=config.tracking.registered_model)


def _compare_with_champion(
    run: TrackedRun,
    config: params.PipelineParams,
    result: EvaluationResult,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classes: tuple[str, ...],
) -> Comparison:
    """The new model, the majority-class baseline and the current `@champion`, all on these test images."""
    from pipeline.evaluation import gate
    from pipeline.evaluation.metrics import majority_baseline, score_champion
    from pipeline.tracking import models, registry

    name, batch_size = config.tracking.registered_model, config.evaluate.batch_size
    baseline = majority_baseline(labels, class_names=classes)
    version = registry.champion_version(run, name)
    champion = None
    if version is not None:
        # Loaded inside score_champion: a champion that fails to load is a reason not to compare.
        load = functools.partial(models.load_model_version, run, name, version)
        champion = score_champion(version, load, images, labels, class_names=classes, batch_size=batch_size)
    return gate.Comparison(
        class_names=list(classes),
        challenger=result.summary(),
        baseline=baseline.summary(),
        majority_class=baseline.class_name,
        champion=champion,
    )


def _print_summary(comparison: Comparison, *, registered_model: str) -> None:
    challenger, baseline, champion = comparison.challenger, comparison.baseline, comparison.champion
    print(
        f"test accuracy {challenger['accuracy']:.4f}, macro F1 {challenger['macro_f1']:.4f} "
        f"on {challenger['examples']} images"
    )
    print(f"majority-class baseline ({comparison.majority_class}) accuracy {baseline['accuracy']:.4f}")
    if champion is None:
        print(f"no @champion of {registered_model} to compare with")
    elif champion.scores is None:
        print(f"@champion v{champion.version} cannot be compared: {champion.reason}")
    else:
        print(f"@champion v{champion.version} on the same test images: accuracy {champion.scores['accuracy']:.4f}")


if __name__ == "__main__":
    run_stage(main)
