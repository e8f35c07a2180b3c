"""One pipeline's evaluate and register steps on a shared store, for the two-process race of test_registry_race.

Run as `python -m tests.tracking.race_child STORE ARTIFACTS NAME MAPPING GO_FILE`: it scores its model (a
`brightness_classifier(MAPPING)`) and the champion of the moment on the shared split, logs the model, prints
`ready`, waits until GO_FILE exists (so that both processes register at once), registers through the gate
and prints the registration as one JSON line.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from pipeline.evaluation import comparison as comparison_module
from pipeline.evaluation import gate
from pipeline.evaluation.metrics import evaluate_classifier, majority_baseline, score_champion
from pipeline.tracking import lifecycle, models, registry
from tests.conftest import brightness_classifier, brightness_images

CLASSES = ("a", "b", "c")
SPLIT = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]


def main(store: str, artifacts: str, name: str, mapping: list[int], go_file: Path) -> None:
    model = brightness_classifier(mapping)
    images, truth = brightness_images(SPLIT)
    with lifecycle.tracked_run(tracking_uri=store, experiment="race", artifact_dir=Path(artifacts)) as run:
        result = evaluate_classifier(model, images, truth, class_names=CLASSES, image_size=8, batch_size=16)

        def rescore(version: str) -> comparison_module.ChampionScores:
            load = functools.partial(models.load_model_version, run, name, version)
            return score_champion(version, load, images, truth, class_names=CLASSES, batch_size=16)

        scored = registry.champion_version(run, name)
        champion = None if scored is None else rescore(scored)
        baselines = {"majority": majority_baseline(truth, class_names=CLASSES).scores()}
        comparison = comparison_module.Comparison(list(CLASSES), result.summary(), baselines, champion)
        uri = models.log_keras_model(run, model, name="model", pip_requirements=["keras"], class_names=CLASSES)
        print("ready", flush=True)
        while not go_file.exists():
            time.sleep(0.01)
        decide = gate.decider(
            comparison, metric="accuracy", margin=0.0, alpha=None, baselines=["majority"], rescore=rescore
        )
        registration, decision = registry.register_gated(
            run, model_uri=uri, name=name, decide=decide, poll_seconds=0.05
        )
        registry.mark_complete(run, name, registration.version)
    print(json.dumps({**asdict(registration), "reason": decision.reason, "accuracy": result.accuracy}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), Path(sys.argv[5]))
