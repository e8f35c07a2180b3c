"""TF Hub handles and SavedModel directories as backbones: resolved, cached, and wrapped as a Keras 3 layer.

Why `keras.layers.TFSMLayer`: `hub.KerasLayer` is a tf_keras (Keras 2) layer that Keras 3 rejects
("Only instances of keras.Layer can be added", upstream tensorflow/hub#920), and tf_keras and Keras 3
do not mix in one process (docs/backbones.md). TFSMLayer calls one endpoint of the SavedModel and tracks
the very variables that endpoint reads as its weights, so an unfrozen SavedModel really fine-tunes. tensorflow_hub
is used for what it is good at: `hub.resolve` downloads a handle once into its cache (`TFHUB_CACHE_DIR`,
by default `<backbone.cache_dir>/tfhub` here, rather than tensorflow_hub's own default in the system's
temporary folder, which does not survive a reboot) and finds it there afterwards, offline. A local
directory is used as it is. Only this module imports tensorflow_hub, and only inside functions: importing
it pulls TensorFlow and tf_keras, which only a URL handle needs.

A SavedModel is opaque: its layers cannot be reached one by one, so the whole of it is one block
(`saved_model`) that freezes and unfreezes as one. For the same reason its BatchNorm layers follow the
endpoint that is called, not `bn_policy` layer by layer: the inference endpoint always normalises with the
fixed moving statistics (while gamma and beta train when unfrozen: the `affine` policy), and only a training
endpoint (`backbone.training_signature`, traced with `training=True`) updates them (`trainable`).
`pipeline.model.freezing` switches between the two; params validation refuses what cannot be honoured.

A classifier holding a TFSMLayer saves its fine-tuned weights in its `.keras` file but only the path of the
SavedModel, not its graph: the file loads with `safe_mode=False` and only while that folder exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tarfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.backbones.base import Backbone, BlockGroup
from pipeline.backbones.errors import BackboneError
from pipeline.backbones.names import HUB_URL_SCHEMES, SAVED_MODEL_BLOCK

if TYPE_CHECKING:
    import keras

TFHUB_CACHE_ENV = "TFHUB_CACHE_DIR"
# What 0..255 pixels become unless backbone.input_range says otherwise: TF Hub's image convention.
DEFAULT_INPUT_RANGE = (0.0, 1.0)
# The call endpoint when backbone.signature is unset: model.export() writes `serve`, most others `serving_default`.
DEFAULT_SIGNATURES = ("serve", "serving_default")


def is_url(handle: str) -> bool:
    """Whether `handle` is a TF Hub URL (downloaded and cached) rather than a local directory."""
    return handle.startswith(HUB_URL_SCHEMES)


def hub_cache_dir(cache_dir: str | Path) -> Path:
    """The TF Hub cache in use: `TFHUB_CACHE_DIR` when set, else `<cache_dir>/tfhub`."""
    return Path(os.environ.get(TFHUB_CACHE_ENV) or Path(cache_dir) / "tfhub")


def cached_handle_dir(handle: str, cache_dir: str | Path) -> Path:
    """The folder tensorflow_hub keeps `handle` in: the SHA-1 hex digest of the handle exactly as written.

    Why computed here: on an offline machine the user must place the model there by hand, and the error
    must name the folder. tensorflow_hub 0.16.1 names it so in `compressed_module_resolver._module_dir`.
    """
    return hub_cache_dir(cache_dir) / hashlib.sha1(handle.encode("utf8")).hexdigest()


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """Sets an environment variable for the duration of the block, then restores it."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


def resolve_handle(handle: str, *, cache_dir: str | Path) -> Path:
    """The local SavedModel folder of a handle: a directory as it is, a URL from the TF Hub cache.

    Args:
        handle: A SavedModel directory, or an http(s):// TF Hub handle.
        cache_dir: `backbone.cache_dir`; the TF Hub cache is `<cache_dir>/tfhub` unless `TFHUB_CACHE_DIR` is set.

    Returns:
        The absolute path of the folder holding `saved_model.pb`.

    Raises:
        BackboneError: The directory is no SavedModel; or the handle is not cached and cannot be downloaded
            (the message names the cache folder to place it in); or it resolves to something that is not a
            TF2 SavedModel.
    """
    if not is_url(handle):
        path = Path(handle)
        if not (path / "saved_model.pb").is_file():
            raise BackboneError(f"{handle} holds no saved_model.pb, so it is not a SavedModel directory")
        return path.resolve()

    import tensorflow as tf
    import tensorflow_hub as hub

    folder = cached_handle_dir(handle, cache_dir)
    with _environment(TFHUB_CACHE_ENV, str(hub_cache_dir(cache_dir))):
        try:
            resolved = Path(hub.resolve(handle))
        except (OSError, ValueError, tarfile.TarError, tf.errors.OpError) as error:
            raise BackboneError(
                f"TF Hub handle {handle} is not in the TF Hub cache {folder.parent} and could not be downloaded "
                f"({type(error).__name__}: {error}); on an offline machine, extract the model's SavedModel "
                f"(saved_model.pb and variables/) into {folder} (the SHA-1 of the handle as written; the cache is "
                f"TFHUB_CACHE_DIR, or <backbone.cache_dir>/tfhub when it is unset), or set backbone.name to a "
                "local SavedModel directory"
            ) from None
    if not (resolved / "saved_model.pb").is_file():
        raise BackboneError(
            f"TF Hub handle {handle} resolved to {resolved}, which holds no saved_model.pb: only TF2 SavedModels "
            "can be backbones (a TF1 Hub module, tfhub_module.pb, cannot)"
        )
    return resolved.resolve()


def _endpoints(saved: Any) -> dict[str, Any]:
    """The SavedModel's callable endpoints by name: its tf.function attributes and its signatures.

    An attribute wins over a signature of the same name, as in TFSMLayer.
    """
    functions = {}
    for name in [*dir(saved), "__call__"]:
        if name.startswith("_") and name != "__call__":
            continue
        function = getattr(saved, name, None)
        if hasattr(function, "concrete_functions"):
            functions[name] = function
    return {**dict(saved.signatures), **functions}


def _concrete_functions(endpoint: Any) -> list[Any]:
    return list(getattr(endpoint, "concrete_functions", None) or [endpoint])


def _image_specs(endpoint: Any) -> list[Any]:
    """The spec of the one tensor each traced function of the endpoint takes (None: it takes something else)."""
    import tensorflow as tf

    specs = []
    for function in _concrete_functions(endpoint):
        arguments, keywords = function.structured_input_signature
        candidates = [*arguments[:1], *keywords.values()] if arguments else list(keywords.values())
        tensors = [spec for spec in candidates if isinstance(spec, tf.TensorSpec)]
        specs.append(tensors[0] if len(tensors) == 1 else None)
    return specs


def _takes_images(spec: Any, image_size: int) -> bool:
    import tensorflow as tf

    if spec is None or spec.dtype != tf.float32:
        return False
    if spec.shape.rank is None:
        return True
    wanted = (image_size, image_size, 3)
    return spec.shape.rank == 4 and all(
        size is None or size == want for size, want in zip(spec.shape.as_list()[1:], wanted, strict=True)
    )


def _describe_spec(spec: Any) -> str:
    if spec is None:
        return "several tensors or a structure (the backbone passes one image tensor)"
    dims = ", ".join("batch" if index == 0 else str(size) for index, size in enumerate(spec.shape.as_list()))
    return f"{spec.dtype.name} ({dims})"


def _check_input(handle: str, name: str, endpoint: Any, image_size: int) -> None:
    specs = _image_specs(endpoint)
    if any(_takes_images(spec, image_size) for spec in specs):
        return
    taken = "; ".join(sorted({_describe_spec(spec) for spec in specs}))
    sizes = sorted(
        {spec.shape[1] for spec in specs if spec is not None and spec.shape.rank == 4 and spec.shape[1] is not None}
    )
    hint = f"set backbone.image_size: {sizes[0]}" if len(sizes) == 1 else "choose another endpoint or model"
    raise BackboneError(
        f"the {name} endpoint of {handle} takes {taken}, not float32 images of shape (batch, {image_size}, "
        f"{image_size}, 3) (backbone.image_size: {image_size}); {hint}"
    )


def _output_keys(handle: str, name: str, endpoint: Any) -> tuple[str, ...] | None:
    """The keys of the dict the endpoint returns, or None when it returns one tensor."""
    import tensorflow as tf

    outputs = _concrete_functions(endpoint)[0].structured_outputs
    if isinstance(outputs, dict):
        return tuple(sorted(outputs))
    if isinstance(outputs, tf.TensorSpec | tf.Tensor):
        return None
    raise BackboneError(
        f"the {name} endpoint of {handle} returns a {type(outputs).__name__}; a backbone needs one tensor or a dict "
        "of tensors (then backbone.output_key picks one)"
    )


def _pick_output_key(handle: str, signature: str, keys: tuple[str, ...] | None, output_key: str | None) -> str | None:
    if keys is None:
        if output_key is not None:
            raise BackboneError(
                f"backbone.output_key is {output_key}, but the {signature} endpoint of {handle} returns one tensor; "
                "remove output_key"
            )
        return None
    if output_key is None:
        if len(keys) == 1:
            return keys[0]
        raise BackboneError(
            f"the {signature} endpoint of {handle} returns several outputs ({', '.join(keys)}); set "
            "backbone.output_key to the one holding the features"
        )
    if output_key not in keys:
        raise BackboneError(
            f"backbone.output_key is {output_key}, but the {signature} endpoint of {handle} returns {', '.join(keys)}"
        )
    return output_key


def _choose_endpoints(
    handle: str, available: dict[str, Any], signature: str | None, training_signature: str | None
) -> str:
    listed = ", ".join(sorted(available)) or "none"
    if signature is None:
        signature = next((name for name in DEFAULT_SIGNATURES if name in available), None)
        if signature is None:
            raise BackboneError(
                f"{handle} has neither a serve nor a serving_default endpoint; set backbone.signature to one of "
                f"its endpoints: {listed}"
            )
    for key, name in (("signature", signature), ("training_signature", training_signature)):
        if name is not None and name not in available:
            raise BackboneError(f"backbone.{key} is {name}, but {handle} has no such endpoint; its endpoints: {listed}")
    return signature


def _name_variables_for_the_optimizer(layer: keras.layers.Layer) -> None:
    """Renames the layer's variables to `<layer>/<name>`, without ':' and unique.

    Why: TFSMLayer names each variable after the SavedModel's (`conv/kernel:0` becomes `conv_kernel:0`), and
    Keras 3.15's optimisers build slot names from the path, which TensorFlow then rejects ("'conv_kernel:0_
    momentum' is not a valid scope name"): Adam, or SGD with momentum, fails on the first step. Unique,
    layer-prefixed paths also keep `pipeline.optim.layerwise`'s path -> LR multiplier map unambiguous (variables of
    a `tf.Module` SavedModel may share a name). Keras has no public setter; the name and path are read-only
    attributes set once in the Variable's constructor.
    """
    seen: dict[str, int] = {}
    for variable in layer.variables:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", variable.name.removesuffix(":0"))
        count = seen.get(base, 0)
        seen[base] = count + 1
        name = base if count == 0 else f"{base}_{count}"
        variable._name = name
        variable._path = f"{layer.name}/{name}"


def backbone_slug(handle: str) -> str:
    """A Keras-safe name for the backbone: the URL's path or the directory's name, in [A-Za-z0-9_-]."""
    text = urllib.parse.urlparse(handle).path if is_url(handle) else Path(handle).resolve().name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return slug or "saved_model_backbone"


def load_hub_backbone(
    handle: str,
    *,
    image_size: int,
    cache_dir: str | Path,
    signature: str | None = None,
    training_signature: str | None = None,
    output_key: str | None = None,
    input_range: tuple[float, float] | None = None,
) -> Backbone:
    """Builds a backbone from a TF Hub handle or a SavedModel directory.

    Args:
        handle: An http(s):// TF Hub handle or a local SavedModel directory.
        image_size: Square input size.
        cache_dir: `backbone.cache_dir` (see `resolve_handle`).
        signature: The endpoint to call; None: `serve` if present, else `serving_default`.
        training_signature: The endpoint to call while an unfrozen backbone trains, or None (then the
            SavedModel always runs in inference mode).
        output_key: Which output to use when the endpoint returns a dict of several.
        input_range: What 0..255 pixels are mapped to, linearly; None: [0, 1].

    Returns:
        The backbone: image -> the SavedModel's output (a feature vector or map), one block `saved_model`
        holding the TFSMLayer, trainable.

    Raises:
        BackboneError: The handle cannot be resolved (see `resolve_handle`), cannot be loaded, lacks the
            endpoint named, does not take `image_size` images, or returns several outputs and no valid
            `output_key` picks one. Each message says what is allowed.
    """
    import keras
    import tensorflow as tf

    path = resolve_handle(handle, cache_dir=cache_dir)
    try:
        saved = tf.saved_model.load(str(path))
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise BackboneError(f"{handle}: TensorFlow cannot load {path} as a SavedModel ({error})") from None
    available = _endpoints(saved)
    signature = _choose_endpoints(handle, available, signature, training_signature)
    _check_input(handle, signature, available[signature], image_size)
    keys = _output_keys(handle, signature, available[signature])
    if training_signature is not None:
        _check_input(handle, training_signature, available[training_signature], image_size)
        training_keys = _output_keys(handle, training_signature, available[training_signature])
        if training_keys != keys:
            raise BackboneError(
                f"the {training_signature} endpoint of {handle} returns {training_keys or 'one tensor'}, but the "
                f"{signature} endpoint returns {keys or 'one tensor'}; both must return the same"
            )
    output_key = _pick_output_key(handle, signature, keys, output_key)
    # The inspection copy is dropped: TFSMLayer loads the SavedModel again (it has no constructor taking a
    # loaded object), which costs the load time once more but not the memory.
    del saved, available

    layer = keras.layers.TFSMLayer(
        str(path),
        call_endpoint=signature,
        call_training_endpoint=training_signature,
        trainable=True,
        name=SAVED_MODEL_BLOCK,
    )
    _name_variables_for_the_optimizer(layer)
    slug = backbone_slug(handle)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs = layer(inputs)
    features = outputs[output_key] if output_key is not None else outputs
    model = keras.Model(inputs, features, name=slug)
    low, high = input_range or DEFAULT_INPUT_RANGE
    return Backbone(
        name=slug,
        model=model,
        blocks_top_down=(BlockGroup(name=SAVED_MODEL_BLOCK, layer_names=(SAVED_MODEL_BLOCK,)),),
        make_preprocessing=lambda: keras.layers.Rescaling((high - low) / 255.0, offset=low, name="preprocessing"),
    )
