"""The EfficientNet-Lite0/1/2 port (pipeline/backbones/efficientnet_lite.py): ImageNet predictions on real
photos, scaling rules, the weight file's conversion and cache."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from pipeline.backbones import efficientnet_lite
from pipeline.backbones.legacy_torch import load_legacy_state_dict

EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO = 285, 281, 282, 967


LITE0, LITE1, LITE2 = efficientnet_lite.LITE0, efficientnet_lite.LITE1, efficientnet_lite.LITE2


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory):
    model = efficientnet_lite.build_efficientnet_lite(input_shape=(224, 224, 3), include_top=True)
    efficientnet_lite.load_imagenet_weights(model, cache_dir=tmp_path_factory.mktemp("weights"))
    return model


@pytest.fixture(scope="module", params=[LITE1, LITE2], ids=lambda variant: variant.name)
def scaled_imagenet_model(request, tmp_path_factory):
    """Lite1 or Lite2 with its 1000-class head, at its native resolution, built once per module."""
    variant = request.param
    size = variant.resolution
    model = efficientnet_lite.build_efficientnet_lite(input_shape=(size, size, 3), include_top=True, variant=variant)
    efficientnet_lite.load_imagenet_weights(model, cache_dir=tmp_path_factory.mktemp("weights"), variant=variant)
    return model


def _top_class(model, image: np.ndarray) -> tuple[int, float]:
    scale, offset = efficientnet_lite.preprocess_scale_offset()
    size = model.input_shape[1]
    pixels = tf.image.resize(image[np.newaxis].astype("float32"), (size, size)).numpy()
    probabilities = model.predict(pixels * scale + offset, verbose=0)[0]
    return int(probabilities.argmax()), float(probabilities.max())


def test_chelsea_is_a_cat(imagenet_model) -> None:
    from skimage import data

    label, probability = _top_class(imagenet_model, data.chelsea())
    assert label in (EGYPTIAN_CAT, TABBY, TIGER_CAT)
    assert label == EGYPTIAN_CAT
    assert probability > 0.5


def test_coffee_is_espresso(imagenet_model) -> None:
    from skimage import data

    label, probability = _top_class(imagenet_model, data.coffee())
    assert label == ESPRESSO
    assert probability > 0.5


def test_scaled_lite_sees_a_cat_in_chelsea(scaled_imagenet_model) -> None:
    from skimage import data

    size = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[scaled_imagenet_model.name]
    assert scaled_imagenet_model.input_shape == (None, size, size, 3)
    label, probability = _top_class(scaled_imagenet_model, data.chelsea())
    assert label in (EGYPTIAN_CAT, TABBY, TIGER_CAT)
    assert label == EGYPTIAN_CAT
    assert probability > 0.5


def test_scaled_lite_sees_espresso_in_coffee(scaled_imagenet_model) -> None:
    from skimage import data

    label, probability = _top_class(scaled_imagenet_model, data.coffee())
    assert label == ESPRESSO
    assert probability > 0.5


@pytest.mark.parametrize(
    ("variant", "channels", "repeats"),
    [
        (LITE0, (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
        (LITE1, (16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1)),
        (LITE2, (16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1)),
    ],
    ids=lambda value: getattr(value, "name", None),
)
def test_lite_scaling_rules(variant, channels, repeats) -> None:
    stages = variant.stages
    assert tuple(stage.output_channels for stage in stages) == channels
    assert tuple(stage.repeats for stage in stages) == repeats
    # Scaling changes widths and depths only: kernels, strides and expansions stay B0's.
    unscaled = [(stage.kernel_size, stage.strides, stage.expand_ratio) for stage in efficientnet_lite.BASE_STAGES]
    assert [(stage.kernel_size, stage.strides, stage.expand_ratio) for stage in stages] == unscaled


def test_lite0_stages_are_b0s() -> None:
    assert efficientnet_lite.LITE0_STAGES == efficientnet_lite.BASE_STAGES


def test_round_filters_rounds_to_the_nearest_multiple_of_8_losing_at_most_10_percent() -> None:
    assert efficientnet_lite.round_filters(112, 1.1) == 120  # 123.2 -> 120
    assert efficientnet_lite.round_filters(40, 1.1) == 48  # 44 -> 48 (halves round up)
    assert efficientnet_lite.round_filters(16, 1.1) == 16  # 17.6 -> 16
    assert efficientnet_lite.round_filters(26, 1.0) == 24  # 24 keeps 92% of 26
    assert efficientnet_lite.round_filters(27, 1.0) == 32  # 24 would keep 89% of 27
    assert efficientnet_lite.round_filters(2, 1.0) == 8
    assert efficientnet_lite.round_repeats(3, 1.1) == 4
    assert efficientnet_lite.round_repeats(4, 1.2) == 5


class _CountingState(dict):
    """A state dict that counts how often each parameter is read."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        super().__init__(state)
        self.reads: Counter[str] = Counter()

    def __getitem__(self, key: str) -> np.ndarray:
        self.reads[key] += 1
        return super().__getitem__(key)


@pytest.mark.parametrize(
    ("variant", "tensors", "parameters"),
    [(LITE0, 247, 4_694_024), (LITE1, 322, 5_470_344), (LITE2, 322, 6_150_168)],
    ids=lambda value: getattr(value, "name", None),
)
def test_every_tensor_of_the_weight_file_is_used_exactly_once(variant, tensors, parameters) -> None:
    state = _CountingState(load_legacy_state_dict(efficientnet_lite.weights_file(variant.weights)))
    float_names = [name for name, array in state.items() if array.dtype == np.float32]
    weights = efficientnet_lite.keras_weights_from_torch(state, variant.stages)
    model = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=True, variant=variant)
    # apply_weights refuses a weighted layer without an entry, or with other shapes.
    efficientnet_lite.apply_weights(model, weights)

    assert len(float_names) == tensors
    assert state.reads == Counter(dict.fromkeys(float_names, 1))
    assert set(weights) == {layer.name for layer in model.layers if layer.weights}
    assert sum(array.size for arrays in weights.values() for array in arrays) == parameters
    assert model.count_params() == parameters


def test_weight_file_of_a_deeper_variant_is_refused() -> None:
    state = load_legacy_state_dict(efficientnet_lite.weights_file(LITE1.weights))
    with pytest.raises(
        ValueError,
        match=r"75 parameters of the weights file fit no layer of this architecture, first "
        r"\['_blocks.16._expand_conv.weight', '_blocks.16._bn0.weight', '_blocks.16._bn0.bias'\]",
    ):
        efficientnet_lite.keras_weights_from_torch(state, LITE0.stages)


def test_model_of_another_variant_is_refused(tmp_path) -> None:
    model = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=False, variant=LITE1)
    with pytest.raises(ValueError, match="model 'efficientnet_lite1' cannot take the weights of efficientnet_lite0"):
        efficientnet_lite.load_imagenet_weights(model, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_layer_without_pretrained_weights_is_an_error() -> None:
    state = load_legacy_state_dict(efficientnet_lite.weights_file())
    weights = efficientnet_lite.keras_weights_from_torch(state)
    model = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=False)
    missing = dict(weights)
    del missing["block6b_dwconv"]
    with pytest.raises(ValueError, match="no pretrained weights for layer 'block6b_dwconv'"):
        efficientnet_lite.apply_weights(model, missing)
    wrong = dict(weights)
    wrong["top_conv"] = [np.zeros((1, 1, 320, 1000), np.float32)]
    with pytest.raises(ValueError, match=r"layer 'top_conv' expects shapes \[\(1, 1, 320, 1280\)\]"):
        efficientnet_lite.apply_weights(model, wrong)


def test_converted_weights_are_cached_and_reused(tmp_path) -> None:
    first = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=False)
    cache_file = efficientnet_lite.load_imagenet_weights(first, cache_dir=tmp_path)
    assert cache_file.parent == tmp_path
    assert cache_file.name.endswith(".weights.h5")
    stamp = cache_file.stat().st_mtime_ns
    second = efficientnet_lite.build_efficientnet_lite(input_shape=(32, 32, 3), include_top=False)
    assert efficientnet_lite.load_imagenet_weights(second, cache_dir=tmp_path) == cache_file
    assert cache_file.stat().st_mtime_ns == stamp
    for left, right in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)
