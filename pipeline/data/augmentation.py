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

FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")


def build_augmentation(
    *,
    flip: str = "none",
    rotation: float = 0.0,
    zoom: float = 0.0,
    translation: float = 0.0,
    contrast: float = 0.0,
    seed: int = 0,
) -> keras.Sequential | None:
    """Chains the requested random layers; None when every switch is off.

    Args:
        flip: One of `FLIP_MODES`.
        rotation: Largest rotation, as a fraction of a full turn (0.1 = 36 degrees).
        zoom: Largest zoom in or out, as a fraction of the size.
        translation: Largest shift, as a fraction of the size, in each direction.
        contrast: Contrast factor drawn from [1 - contrast, 1 + contrast].
        seed: Seed of every random layer (each gets its own offset).

    Returns:
        A Sequential of Keras preprocessing layers, active only when called with `training=True`.

    Raises:
        ValueError: An unknown flip mode or a negative amount.
    """
    if flip not in FLIP_MODES:
        raise ValueError(f"unknown flip {flip!r}; allowed: {', '.join(FLIP_MODES)}")
    amounts = {"rotation": rotation, "zoom": zoom, "translation": translation, "contrast": contrast}
    for name, amount in amounts.items():
        if amount < 0:
            raise ValueError(f"augmentation {name} is {amount}; it must be >= 0")
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
