"""DVC stage `evaluate`: test metrics of the trained model, its baselines and the champion on one split.

The current `@champion` of `tracking.registered_model` is scored on this run's test images, with the
majority-class baseline and the classical baselines of `evaluate.baselines` (a linear probe on the frozen
pretrained backbone's features, logistic regression on downsampled pixels: `pipeline.evaluation.baselines`),
so that the register stage's gate compares like with like (`pipeline.evaluation.gate`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import TYPE_CHECKING

from pipeline import params
from pipeline.tracking import store as tracking_store
from stages._entry import (
    CALIBRATION_PNG,
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
    import keras
    import numpy as np

    from pipeline.backbones.base import Backbone
    from pipeline.evaluation.baselines import BaselineResult
    from pipeline.evaluation.comparison import Comparison
    from pipeline.evaluation.metrics import EvaluationResult
    from pipeline.tracking.runs import TrackedRun


def main() -> None:
    config = params.load(PARAMS)
    from pipeline.runtime import devices

    devices.configure(config.device)

    from pipeline.data.split import read_manifest, select
    from pipeline.evaluation import plots
    from pipeline.model import export
    from pipeline.tracking import provenance
    from pipeline.tracking.lifecycle import tracked_run
    from pipeline.tracking.runs import RunReference
    from stages._data import load_source

    reference = RunReference.read(RUN_REFERENCE)
    tracking_store.check_tracking_store(reference.tracking_uri, origin=f"{RUN_REFERENCE}, written by train")
    source = load_source(config.data)
    classes = source.class_names
    manifest = read_manifest(MANIFEST)
    images, labels = select(source, manifest, "test")
    model = export.load_model(TRAINED_MODEL, safe_mode=config.backbone.safe_mode)
    with tracked_run(tracking_uri=reference.tracking_uri, resume=reference) as run:
        # The stage working on the run now: the UI then tells which stage a RUNNING run is in.
        run.set_tags(provenance.dvc_context(os.environ))
        result, backbone, test_features = _score_model(config, model, images, labels, classes=classes)
        accuracy_low, accuracy_high = result.intervals["accuracy"]
        f1_low, f1_high = result.intervals["macro_f1"]
        print(
            f"test accuracy {result.accuracy:.4f} (95% bootstrap interval {accuracy_low:.4f}-{accuracy_high:.4f}), "
            f"macro F1 {result.macro_f1:.4f} ({f1_low:.4f}-{f1_high:.4f}) on {result.examples} images",
            flush=True,
        )
        print(_probability_line(result), flush=True)
        fitted = _fitted_baselines(
            config,
            select(source, manifest, "train"),
            images,
            labels,
            classes=classes,
            backbone=backbone,
            test_features=test_features,
        )
        comparison = _compare_with_champion(run, config, result, fitted, images, labels, classes=classes)
        result.write(
            metrics=METRICS, report=CLASSIFICATION_REPORT, class_names=classes, extra=comparison.baseline_metrics()
        )
        plots.plot_confusion_matrix(result.confusion, classes, CONFUSION_PNG)
        plots.plot_reliability(result.calibration, CALIBRATION_PNG)
        comparison.write(COMPARISON)
        run.log_metrics(comparison.run_metrics())
        unbeaten = _unbeaten_baseline(comparison, metric=config.tracking.champion_metric)
        run.set_tags({"gate.compared_with": comparison.compared_with(), "baseline.not_beaten": unbeaten or "none"})
        for artifact in (METRICS, CLASSIFICATION_REPORT, CONFUSION_PNG, CALIBRATION_PNG, COMPARISON):
            run.log_artifact(artifact, "evaluation")
    _print_summary(comparison, registered_model=config.tracking.registered_model)


def _probability_line(result: EvaluationResult) -> str:
    """How the probabilities rank and how far their confidence holds, in one line: the macro one-vs-rest ROC-AUC
    (saying so when it averages fewer classes than the model has: some had no test image) and the expected
    calibration error."""
    classes, bins = len(result.per_class), result.calibration
    averaged = f" over the {result.roc_auc_classes} of {classes} classes in the test split"
    return (
        f"test ROC-AUC (macro one-vs-rest) {result.roc_auc:.4f}{averaged if result.roc_auc_classes < classes else ''}"
        f", expected calibration error {bins.ece:.4f} ({len(bins.counts)} confidence bins: {CALIBRATION_PNG})"
    )


def _score_model(
    config: params.PipelineParams,
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classes: tuple[str, ...],
) -> tuple[EvaluationResult, Backbone | None, np.ndarray | None]:
    """The model's test scores and, with the probe on, the pretrained backbone and the probe's test features,
    from one pass over the blocks the two share (`pipeline.evaluation.shared_pass`)."""
    from pipeline.evaluation.metrics import evaluate_classifier, score_predictions
    from pipeline.evaluation.shared_pass import model_and_probe_pass
    from stages._classifier import build_backbone

    image_size, batch_size = model.input_shape[1], config.evaluate.batch_size
    if not config.evaluate.baselines.probe.enabled:
        scores = evaluate_classifier(
            model, images, labels, class_names=classes, image_size=image_size, batch_size=batch_size, intervals=True
        )
        return scores, None, None
    backbone = build_backbone(config)
    probabilities, test_features, _ = model_and_probe_pass(
        model, backbone, images, labels, pooling=config.head.pooling, image_size=image_size, batch_size=batch_size
    )
    return score_predictions(labels, probabilities, class_names=classes, intervals=True), backbone, test_features


def _fitted_baselines(
    config: params.PipelineParams,
    train: tuple[np.ndarray, np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classes: tuple[str, ...],
    backbone: Backbone | None,
    test_features: np.ndarray | None,
) -> list[BaselineResult]:
    """The enabled classical baselines, fitted on (a capped subsample of) the training split, scored on the test
    images; each printed in one line as it finishes (the probe takes seconds)."""
    from pipeline.evaluation.baselines import linear_probe, pixel_baseline

    settings, seed = config.evaluate.baselines, config.data.seed
    train_images, train_labels = train
    fitted = []
    if settings.probe.enabled:
        probe = linear_probe(
            backbone,
            train_images,
            train_labels,
            images,
            labels,
            settings=settings.probe,
            pooling=config.head.pooling,
            class_names=classes,
            image_size=config.backbone.image_size,
            batch_size=config.evaluate.batch_size,
            seed=seed,
            test_features=test_features,
        )
        print(probe.line(), flush=True)
        fitted.append(probe)
    if settings.pixels.enabled:
        pixels = pixel_baseline(
            train_images, train_labels, images, labels, settings=settings.pixels, class_names=classes, seed=seed
        )
        print(pixels.line(), flush=True)
        fitted.append(pixels)
    return fitted


def _unbeaten_baseline(comparison: Comparison, *, metric: str) -> str | None:
    """The best baseline when the model does not beat it on `metric` (printed as a warning), else None."""
    from pipeline.evaluation.comparison import BASELINE_TITLES

    name, score = comparison.best_baseline(metric)
    value = float(comparison.challenger[metric])
    if value > score:
        return None
    print(
        f"warning: the model's test {metric} {value:.4f} does not beat {BASELINE_TITLES[name]}'s {score:.4f} on the "
        "same test images: the fine-tuning did not pay off (too few steps for this dataset, or a recipe that does "
        "not fit it); reports/champion_comparison.json has every baseline"
    )
    return name


def _compare_with_champion(
    run: TrackedRun,
    config: params.PipelineParams,
    result: EvaluationResult,
    fitted: list[BaselineResult],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    classes: tuple[str, ...],
) -> Comparison:
    """The new model, its baselines and the current `@champion`, all on these test images."""
    from pipeline.evaluation import gate
    from pipeline.evaluation.comparison import Comparison
    from pipeline.evaluation.metrics import majority_baseline, paired_test, score_champion
    from pipeline.evaluation.significance import pack_right
    from pipeline.tracking import models, registry

    settings, batch_size = config.tracking, config.evaluate.batch_size
    challenger_right = result.right(labels)
    majority = majority_baseline(labels, class_names=classes)
    version = registry.champion_version(run, settings.registered_model)
    champion = None
    if version is not None:
        # Loaded inside score_champion: a champion that fails to load is a reason not to compare.
        load = functools.partial(models.load_model_version, run, settings.registered_model, version)
        champion = score_champion(
            version,
            load,
            images,
            labels,
            class_names=classes,
            batch_size=batch_size,
            challenger_right=challenger_right,
        )
    # McNemar's test of the model against each baseline, on the same images (the gate's floor is one of them).
    baselines = {
        "majority": dataclasses.replace(majority.scores(), paired=paired_test(challenger_right, majority.right(labels)))
    }
    for item in fitted:
        baselines[item.name] = dataclasses.replace(
            item.scores(), paired=paired_test(challenger_right, item.result.right(labels))
        )
    rule = gate.describe_rule(
        metric=settings.champion_metric,
        margin=settings.champion_margin,
        alpha=settings.champion_alpha,
        baselines=settings.gate_baselines,
    )
    return Comparison(
        class_names=list(classes),
        challenger=result.summary(),
        baselines=baselines,
        champion=champion,
        challenger_right=pack_right(challenger_right),
        rule=rule,
    )


def _print_summary(comparison: Comparison, *, registered_model: str) -> None:
    majority, champion = comparison.baselines["majority"], comparison.champion
    print(f"majority-class baseline ({majority.details['class_name']}) accuracy {majority.scores['accuracy']:.4f}")
    if champion is None:
        print(f"no @champion of {registered_model} to compare with")
    elif champion.scores is None:
        print(f"@champion v{champion.version} cannot be compared: {champion.reason}")
    else:
        print(f"@champion v{champion.version} on the same test images: accuracy {champion.scores['accuracy']:.4f}")


if __name__ == "__main__":
    run_stage(main)
