"""keras.applications backbones by name: constructor, preprocessing, input sizes and block map.

Why a table: params validation must know every name, its smallest input and its block names before
TensorFlow loads, and "unfreeze the top 2 blocks" must mean the same kind of thing in every family
(EfficientNet's `blockN`, ResNet's `convN`, MobileNetV2's `block_N`, DenseNet's dense blocks, ConvNeXt's
stages, ...). A block is given by a pattern that its last layers' names match; the block ends at the first
single-tensor cut at or after the last matching layer, and everything between two cuts belongs to the
upper block. Keras names helper layers generically (`conv2d_7`, `add_3`, numbered per session), so those
are never matched by name: they fall into a block by their position in the graph.

NASNet has one block above its stem: each cell reads the outputs of the two cells before it (a reduction
cell's input goes on to the next cell too), so no single tensor separates two cells anywhere in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

# How keras.applications' preprocess_input maps 0..255 RGB for each family.
# "tf": to [-1, 1]; "torch": to [0, 1], then ImageNet mean/std; "caffe": RGB to BGR, then the ImageNet
# mean subtracted; "builtin": the model holds its own preprocessing and takes 0..255.
PREPROCESSING_MODES = ("tf", "torch", "caffe", "builtin")
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class ApplicationSpec:
    """One keras.applications network as the registry offers it.

    Attributes:
        constructor: Name of the function in `keras.applications` (`"ResNet50"`).
        preprocessing: One of `PREPROCESSING_MODES`.
        min_size: Smallest square input Keras accepts with `include_top=False`.
        blocks: (block name, regular expression its last layers' names fully match), top-down, without
            the bottom block `stem`, which takes every layer below the others.
    """

    constructor: str
    preprocessing: str
    min_size: int
    blocks: tuple[tuple[str, str], ...]

    @property
    def block_names(self) -> tuple[str, ...]:
        """Every block top-down, `stem` last."""
        return (*(name for name, _ in self.blocks), "stem")


def _numbered(template: str, pattern: str, first: int, last: int) -> tuple[tuple[str, str], ...]:
    """Blocks `template.format(n)` for n from `last` down to `first`, each matching `pattern.format(n)`."""
    return tuple((template.format(number), pattern.format(number)) for number in range(last, first - 1, -1))


def _efficientnet_blocks(stages: int) -> tuple[tuple[str, str], ...]:
    return (("top", r"top_.*"), *_numbered("block{}", r"block{}[a-z]+_.*", 1, stages))


def _resnet_blocks(*, preactivation: bool) -> tuple[tuple[str, str], ...]:
    top = (("post", r"post_.*"),) if preactivation else ()
    return (*top, *_numbered("conv{}", r"conv{}_.*", 2, 5))


_MOBILENET = (*_numbered("block{}", r"conv_(dw|pw|pad)_{}(_.*)?", 1, 13),)
_MOBILENET_V2 = (
    ("top", r"Conv_1(_bn)?|out_relu"),
    *_numbered("block_{}", r"block_{}_.*", 1, 16),
    ("block_0", r"expanded_conv_.*"),
)


def _mobilenet_v3_blocks(last: int) -> tuple[tuple[str, str], ...]:
    # Block 0 is `expanded_conv_depthwise...`; block n >= 1 is `expanded_conv_{n}_...`.
    return (
        ("top", r"conv_1(_bn)?"),
        *_numbered("expanded_conv_{}", r"expanded_conv_{}_.*", 1, last),
        ("expanded_conv_0", r"expanded_conv_[a-z].*"),
    )


def _convnext_blocks() -> tuple[tuple[str, str], ...]:
    # A stage's downsampling layers come after the stage below it, so they fall into their own stage.
    return _numbered("stage_{}", r".*_stage_{}_.*", 0, 3)


_DENSENET = (
    ("top", r"bn|relu"),
    ("conv5", r"conv5_.*"),
    *_numbered("conv{}", r"(conv|pool){}_.*", 2, 4),
)
_INCEPTION_V3 = _numbered("mixed{}", r"mixed{}", 0, 10)
_INCEPTION_RESNET_V2 = (
    ("top", r"conv_7b.*"),
    ("block8", r"block8_.*"),
    ("mixed_7a", r"mixed_7a"),
    ("block17", r"block17_.*"),
    ("mixed_6a", r"mixed_6a"),
    ("block35", r"block35_.*"),
    ("mixed_5b", r"mixed_5b"),
)
_XCEPTION = _numbered("block{}", r"block{}_.*", 2, 14)
# NASNet's only single-tensor cuts (seen with `single_tensor_cuts` on NASNetMobile and NASNetLarge) are
# after `stem_conv1`, after `stem_bn1`, and at the last cell's concat and final ReLU: every cell reads the
# two previous cells' outputs, the reduction cells included. So the honest map is one block of all cells
# above the stem convolution; "top 1" unfreezes everything but the stem, and the feature cache can only
# start at `stem_bn1` once any cell trains.
_NASNET = (("cells", r"(normal|reduction|adjust|separable_conv)_.*"),)
_VGG = _numbered("block{}", r"block{}_.*", 2, 5)


def _specs() -> dict[str, ApplicationSpec]:
    specs: dict[str, ApplicationSpec] = {
        "mobilenet": ApplicationSpec("MobileNet", "tf", 32, _MOBILENET),
        "mobilenet_v2": ApplicationSpec("MobileNetV2", "tf", 32, _MOBILENET_V2),
        "mobilenet_v3_small": ApplicationSpec("MobileNetV3Small", "builtin", 32, _mobilenet_v3_blocks(10)),
        "mobilenet_v3_large": ApplicationSpec("MobileNetV3Large", "builtin", 32, _mobilenet_v3_blocks(14)),
        "xception": ApplicationSpec("Xception", "tf", 71, _XCEPTION),
        "inception_v3": ApplicationSpec("InceptionV3", "tf", 75, _INCEPTION_V3),
        "inception_resnet_v2": ApplicationSpec("InceptionResNetV2", "tf", 75, _INCEPTION_RESNET_V2),
        "nasnet_mobile": ApplicationSpec("NASNetMobile", "tf", 32, _NASNET),
        "nasnet_large": ApplicationSpec("NASNetLarge", "tf", 32, _NASNET),
        "vgg16": ApplicationSpec("VGG16", "caffe", 32, _VGG),
        "vgg19": ApplicationSpec("VGG19", "caffe", 32, _VGG),
    }
    for variant in range(8):
        specs[f"efficientnet_b{variant}"] = ApplicationSpec(
            f"EfficientNetB{variant}", "builtin", 32, _efficientnet_blocks(7)
        )
    for variant in ("b0", "b1", "b2", "b3", "s", "m", "l"):
        stages = 7 if variant in ("m", "l") else 6
        specs[f"efficientnet_v2_{variant}"] = ApplicationSpec(
            f"EfficientNetV2{variant.upper()}", "builtin", 32, _efficientnet_blocks(stages)
        )
    for depth in (50, 101, 152):
        specs[f"resnet{depth}"] = ApplicationSpec(f"ResNet{depth}", "caffe", 32, _resnet_blocks(preactivation=False))
        specs[f"resnet{depth}_v2"] = ApplicationSpec(f"ResNet{depth}V2", "tf", 32, _resnet_blocks(preactivation=True))
    for depth in (121, 169, 201):
        specs[f"densenet{depth}"] = ApplicationSpec(f"DenseNet{depth}", "torch", 32, _DENSENET)
    for size, constructor in (
        ("tiny", "ConvNeXtTiny"),
        ("small", "ConvNeXtSmall"),
        ("base", "ConvNeXtBase"),
        ("large", "ConvNeXtLarge"),
        ("xlarge", "ConvNeXtXLarge"),
    ):
        specs[f"convnext_{size}"] = ApplicationSpec(constructor, "builtin", 32, _convnext_blocks())
    return specs


APPLICATIONS: dict[str, ApplicationSpec] = _specs()
