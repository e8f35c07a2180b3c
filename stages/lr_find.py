"""DVC stage `lr_find` (opt-in with `lr_find.enabled`): the LR range test of the frozen phase.

It sweeps the learning rate exponentially over a short run of the frozen phase (the new head on
cached backbone features of a subset of the training images), writes the loss-vs-LR curve with the
valley and steepest-descent suggestions, and `train.base_learning_rate: auto` takes the suggestion of
`lr_find.rule`. When disabled it writes a note saying so, in well under a second of work.
"""

from __future__ import annotations

import json

from pipeline import params
from stages._classifier import build_classifier
from stages._entry import LR_FIND_JSON, LR_FIND_PNG, MANIFEST, PARAMS, run_stage


def main() -> None:
    config = params.load(PARAMS)
    settings = config.lr_find
    from pipeline.evaluation import plots

    LR_FIND_JSON.parent.mkdir(parents=True, exist_ok=True)
    if not settings.enabled:
        LR_FIND_JSON.write_text(json.dumps({"enabled": False}, indent=2) + "\n", encoding="utf-8")
        plots.plot_note("LR range test off: set lr_find.enabled: true to run it", LR_FIND_PNG)
        print("lr_find is disabled (lr_find.enabled: false)")
        return

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

    from pipeline.data.augmentation import build_augmentation
    from pipeline.data.split import read_manifest, select
    from pipeline.optim.lr_finder import lr_range_test
    from pipeline.optim.optimizers import make_optimizer
    from pipeline.training.features import ImageSplit, PhaseDataFactory
    from pipeline.training.losses import classification_loss, needs_one_hot
    from stages._data import load_source

    keras.utils.set_random_seed(config.train.seed)
    source = load_source(config.data)
    images, labels = select(source, read_manifest(MANIFEST), "train")
    chosen = np.random.default_rng(config.train.seed).permutation(len(labels))[: settings.images]
    sample = ImageSplit(images[chosen], labels[chosen])
    classifier = build_classifier(config, num_classes=len(source.class_names))
    smoothing = config.train.label_smoothing
    data = PhaseDataFactory(
        classifier,
        train=sample,
        val=ImageSplit(sample.images[:1], sample.labels[:1]),
        deepest_trainable_blocks=0,
        preprocessing=classifier.backbone.make_preprocessing(),
        image_size=config.backbone.image_size,
        batch_size=config.train.batch_size,
        seed=config.train.seed,
        cache_limit_bytes=config.train.feature_cache_mb * 2**20,
        augmentation=build_augmentation(**config.train.augmentation.model_dump(), seed=config.train.seed),
        one_hot_classes=len(source.class_names) if needs_one_hot(label_smoothing=smoothing) else None,
    ).for_phase(0)
    optimizer = config.train.optimizer
    result = lr_range_test(
        data.model,
        data.train,
        make_optimizer=lambda learning_rate: make_optimizer(optimizer, learning_rate=learning_rate),
        loss=classification_loss(label_smoothing=smoothing),
        min_lr=settings.min_lr,
        max_lr=settings.max_lr,
        steps=settings.steps,
        smoothing=settings.smoothing,
        jit_compile=selection.jit_compile,
    )
    document = {
        "enabled": True,
        "rule": settings.rule,
        "suggested": result.suggestion(settings.rule),
        "suggestions": {"valley": result.valley, "steepest": result.steepest},
        "images": len(sample.labels),
        "cached_features": data.cached,
        **result.to_dict(),
    }
    LR_FIND_JSON.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    plots.plot_lr_finder(result, LR_FIND_PNG)
    print(
        f"LR range test over {len(result.learning_rates)} steps on {len(sample.labels)} images: "
        f"valley {result.valley:.3g}, steepest {result.steepest:.3g}; {settings.rule} rule suggests "
        f"{result.suggestion(settings.rule):.3g}"
    )


if __name__ == "__main__":
    run_stage(main)
