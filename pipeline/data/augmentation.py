"""Random image augmentation for training: Keras' own preprocessing layers, applied in the input pipeline.

Why in the input pipeline rather than in the model: the exported model must be deterministic, and the
frozen-feature cache needs to know that the backbone sees different pixels every epoch (then it cannot
reuse activations). Augmentation runs on 0..255 RGB at the model's input size, before the backbone's
own preprocessing, and only on the training split.

A flip alone is the exception the cache can keep: Keras' RandomFlip shows each image in one of two fixed
orientations (unchanged, or flipped along the mode's axes, with probability 0.5), so the frozen
activations of both orientations can be computed once and each epoch can draw one per image. That is the
same distribution of training inputs without recomputing the frozen backbone every epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

    from pipeline.params.train import AugmentationParams


def build_augmentation(augmentation: AugmentationParams, *, seed: int) -> keras.Sequential | None:
    """Chains the random layers the `train.augmentation` section turns on; None when every switch is off.

    Args:
        augmentation: The validated section (`pipeline.params.train.AugmentationParams`): `flip` (a
            RandomFlip mode or "none"), `rotation` (largest rotation, as a fraction of a full turn),
            `zoom` and `translation` (largest zoom and shift, as fractions of the size) and `contrast`
            (factor drawn from [1 - contrast, 1 + contrast]); each amount 0 is off.
        seed: Seed of every random layer (each gets its own offset).

    Returns:
        A Sequential of Keras preprocessing layers, active only when called with `training=True`.
    """
    flip, rotation, zoom = augmentation.flip, augmentation.rotation, augmentation.zoom
    translation, contrast = augmentation.translation, augmentation.contrast
    import keras

    layers: list[keras.layers.Layer] = []
    if flip != "none":
        layers.append(keras.layers.RandomFlip(flip, seed=seed, name="augment_flip"))
    if rotation:
        layers.append(
            keras.layers.RandomRotation(rotation, fill_mode="reflect", seed=seed + 1, name="augment_rotation")
        )
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=seed + 2, name="augment_zoom"))
    if translation:
        layers.append(
            keras.layers.RandomTranslation(
                translation, translation, fill_mode="reflect", seed=seed + 3, name="augment_translation"
            )
        )
    if contrast:
        layers.append(
            keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=seed + 4, name="augment_contrast")
        )
    if not layers:
        return None
    return keras.Sequential(layers, name="augmentation")


def cacheable_flip(augmentation: keras.layers.Layer | None) -> str | None:
    """The flip mode when `augmentation` is a random flip and nothing else, otherwise None.

    Args:
        augmentation: What `build_augmentation` returned.

    Returns:
        The RandomFlip mode ("horizontal", "vertical" or "horizontal_and_vertical"), or None when there
        is no augmentation or it holds any other random layer.
    """
    if augmentation is None:
        return None
    import keras

    layers = augmentation.layers if isinstance(augmentation, keras.Sequential) else [augmentation]
    if len(layers) == 1 and isinstance(layers[0], keras.layers.RandomFlip):
        return str(layers[0].mode)
    return None
