"""A local `.keras` model as a backbone: loaded, flattened, cut at a layer, split into blocks.

Why: the classic reuse flow is to train on task A with this pipeline, then start task B from the
model it exported (or from any functional or Sequential Keras model). The rest of the pipeline needs
one flat functional model whose layers it can find by name and cut at block boundaries (the
frozen-prefix cache, the trainable-layer map), so the loaded model's nested models are unrolled into
one graph of fresh layers carrying the loaded weights, named as `pipeline.backbones.keras_archive`
names them (the same names params validation showed the user).

Loading runs in Keras' safe mode unless the user opted out: a file holding a Lambda layer or a
TFSMLayer is refused before Keras reads it (`pipeline.backbones.keras_archive.KerasArchive.unsafe`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras

from pipeline.backbones.base import Backbone, BlockGroup, single_tensor_cuts
from pipeline.backbones.errors import KerasFileError
from pipeline.backbones.keras_archive import archive_blocks, read_keras_archive

DEFAULT_INPUT_RANGE = (0.0, 255.0)


def load_keras_model(path: str | Path, *, safe_mode: bool = True) -> keras.Model:
    """Loads a `.keras` file as Keras does, uncompiled.

    Why uncompiled: a backbone needs the layers and their weights, never the optimiser a model was saved
    with (which, for a model saved mid-training, would be one of `pipeline.optim.layerwise`'s classes).

    Raises:
        KerasFileError: The file only loads with safe_mode=False and `safe_mode` is True.
    """
    archive = read_keras_archive(path)
    if safe_mode and archive.unsafe:
        raise KerasFileError(archive.unsafe_refusal())
    return keras.saving.load_model(Path(path), compile=False, safe_mode=safe_mode)


class _Unroller:
    """Calls fresh copies of a loaded model's layers on new tensors, nested models unrolled in place."""

    def __init__(self, flat_names: dict[tuple[str, ...], str], *, copy_weights: bool, safe_mode: bool) -> None:
        self._flat_names = flat_names
        self._copy_weights = copy_weights
        self._safe_mode = safe_mode
        self.tensors: dict[str, Any] = {}
        self.copies: list[tuple[Any, Any]] = []

    def _copy(self, operation: Any, path: tuple[str, ...]) -> Any:
        # Through Keras' own (de)serialisation rather than `from_config`, so that the file's safe mode applies
        # to the copies as it did to the loaded model.
        serialized = keras.saving.serialize_keras_object(operation)
        serialized["config"]["name"] = self._flat_names[path]
        policy = getattr(operation, "dtype_policy", None)
        if policy is not None and policy.name.startswith("mixed_"):
            # A model exported from a mixed-precision GPU run keeps float16 compute in its layers' configs; the
            # copies follow this run's policy instead (float16 on a CPU is ~4x slower). float32 layers stay so.
            serialized["config"]["dtype"] = keras.config.dtype_policy().name
        copy = keras.saving.deserialize_keras_object(serialized, safe_mode=self._safe_mode)
        if isinstance(operation, keras.layers.Layer):
            self.copies.append((copy, operation))
        return copy

    def operation_fn(self, scope: tuple[str, ...]) -> Callable[[Any], Callable[..., Any]]:
        def make(operation: Any) -> Callable[..., Any]:
            path = (*scope, operation.name)
            if isinstance(operation, keras.Model):
                return lambda inputs, *_args, **_kwargs: self.unroll(operation, inputs, path)
            copy = self._copy(operation, path)
            name = self._flat_names[path]

            def call(*args: Any, **kwargs: Any) -> Any:
                output = copy(*args, **kwargs)
                self.tensors[name] = output
                return output

            return call

        return make

    def unroll(self, model: keras.Model, inputs: Any, scope: tuple[str, ...]) -> Any:
        """Rebuilds `model`'s graph on `inputs` with copies of its layers; returns its outputs."""
        if isinstance(model, keras.Sequential):
            tensor = inputs
            make = self.operation_fn(scope)
            for layer in model.layers:
                tensor = make(layer)(tensor)
            return tensor
        # Keras 3 has no public way to call a functional model's layers one by one on new tensors;
        # `_run_through_graph` is what `Functional.call` itself uses, with our own callable per operation.
        return model._run_through_graph(inputs, operation_fn=self.operation_fn(scope))

    def load_weights(self) -> None:
        for copy, original in self.copies:
            if self._copy_weights:
                copy.set_weights(original.get_weights())


def _model_name(path: str) -> str:
    """A Keras-safe model name from the file name (`models/model.keras` -> `model`)."""
    return re.sub(r"\W", "_", Path(path).stem) or "keras_file"


def _groups(model: keras.Model, blocks: Sequence[Any], path: str) -> tuple[BlockGroup, ...]:
    """Block groups in the model's own layer order, checked to cover it and to end at single-tensor cuts."""
    order = {layer.name: index for index, layer in enumerate(model.layers)}
    groups = tuple(
        BlockGroup(name=block.name, layer_names=tuple(sorted(block.layer_names, key=order.__getitem__)))
        for block in blocks
    )
    listed = sorted(name for group in groups for name in group.layer_names)
    if listed != sorted(layer.name for layer in model.layers[1:]):
        raise RuntimeError(f"the blocks read from {path} do not cover the loaded backbone's layers exactly once")
    cuts = single_tensor_cuts(model)
    for group in groups[1:]:
        if not cuts[order[group.layer_names[-1]]]:
            raise RuntimeError(
                f"block {group.name!r} of {path} does not end at a single-tensor cut of the loaded model"
            )
    return groups


def load_keras_file_backbone(
    path: str,
    *,
    image_size: int,
    cache_dir: str | Path | None = None,
    cut_layer: str | None = None,
    block_prefixes: Sequence[str] | None = None,
    safe_mode: bool = True,
    input_range: tuple[float, float] | None = None,
    reinitialize: bool = False,
) -> Backbone:
    """Builds a backbone from a local `.keras` file.

    Args:
        path: The file.
        image_size: Square input size; must equal the file's input size when that is fixed.
        cache_dir: Unused (the file is local); accepted like every kind's loader.
        cut_layer: Flat name of the backbone's last layer; None: the layer feeding the file's last layer.
        block_prefixes: Layer-name prefixes of the blocks, top-down; None: one block per layer with weights
            (see `pipeline.backbones.keras_archive`).
        safe_mode: Keras' safe mode; a file holding a Lambda layer or a TFSMLayer needs False.
        input_range: What 0..255 pixels are mapped to, linearly, before the model; None: [0, 255] (a model
            this pipeline exported holds its own preprocessing layer).
        reinitialize: Draw every weight afresh from its layer's own initialiser (the same architecture
            from scratch) instead of loading the file's weights. Seed Keras first for a repeatable draw.

    Returns:
        The backbone: a flat functional model from the image to the cut's output, every layer trainable
        (freezing is `pipeline.model.freezing`'s job), and its blocks.

    Raises:
        KerasFileError: The file is missing, can't be a backbone, needs safe_mode=False while `safe_mode`
            is True, takes another image size, or the cut or the block prefixes don't fit it.
    """
    del cache_dir
    archive = read_keras_archive(path)
    fixed = archive.fixed_size
    if fixed is not None and fixed != (image_size, image_size):
        raise KerasFileError(f"{path} takes {fixed[0]}x{fixed[1]} images only; received image_size {image_size}")
    blocks = archive_blocks(archive, cut_layer=cut_layer, block_prefixes=block_prefixes)
    cut = cut_layer if cut_layer is not None else archive.default_cut_layer()
    loaded = load_keras_model(path, safe_mode=safe_mode)

    unroller = _Unroller(archive.flat_names(), copy_weights=not reinitialize, safe_mode=safe_mode)
    pixels = keras.Input(shape=(image_size, image_size, 3), name=archive.layers[0].name)
    unroller.unroll(loaded, pixels, (loaded.name,))
    unroller.load_weights()
    model = keras.Model(pixels, unroller.tensors[cut], name=_model_name(path))
    model.trainable = True
    low, high = input_range if input_range is not None else DEFAULT_INPUT_RANGE
    return Backbone(
        name=model.name,
        model=model,
        blocks_top_down=_groups(model, blocks, path),
        make_preprocessing=lambda: keras.layers.Rescaling((high - low) / 255.0, offset=low, name="preprocessing"),
    )
