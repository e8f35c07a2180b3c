"""A `.keras` file read without TensorFlow: its layer graph, input shape, blocks, and what loading it would run.

Why: params validation must refuse a missing file, an image size the model can't take, an unknown
cut layer, a bad block list, or a file that only loads with `safe_mode=False`, in about a second and
before TensorFlow loads. A `.keras` file is a zip holding `config.json` (the model's architecture)
and `model.weights.h5`, so all of that can be read with `zipfile`, `json` and `h5py`.

The graph is flattened: the layers of a model nested in the file (this pipeline's exported classifier
nests the trained classifier inside a wrapper that adds the preprocessing layer) become layers of one
graph, so that any of them can be a cut or a block boundary. Flat names are the layers' own names,
except that a name already taken by an earlier layer, or starting with `head_` (the new head's
layers are all named so, see `pipeline.head`), is prefixed with the names of the models enclosing the
layer, innermost first, until it is free: the exported classifier's `head_dense_1` becomes
`efficientnet_lite0_classifier_head_dense_1`. `pipeline.backbones.keras_file` builds the flat Keras
model with exactly these names, looked up by each layer's path of original names.

Blocks of the part below the cut, top-down, are either
- by default, one per layer with weights: a block ends at a single-tensor cut after a layer with
  weights; a layer without weights (activation, pooling, dropout, ...) joins the block of the layer
  with weights below it, and those below the lowest one (the input's preprocessing) join the lowest
  block. Where a boundary would not be a single-tensor cut (inside a residual block), the layers up
  to the next cut stay in one block. Each block is named after its topmost layer with weights.
- or, with `block_prefixes` (top-down), each layer goes to the block of the first prefix its name
  starts with; blocks must follow each other in the graph and meet at single-tensor cuts.
"""

from __future__ import annotations

import difflib
import json
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.backbones.cuts import cut_flags

# Every layer `pipeline.head.attach_head` adds is named head_*: layers of the file keep clear of them.
RESERVED_PREFIX = "head_"
# Class names whose deserialisation runs code from the file, and what that code is.
UNSAFE_CLASSES: dict[str, str] = {
    "Lambda": "the Python bytecode of a Lambda layer's function",
    "TFSMLayer": "the TensorFlow graph of the SavedModel a TFSMLayer points to",
    "__lambda__": "the Python bytecode of a lambda stored in a layer's config",
}
_MODEL_CLASSES = ("Functional", "Sequential")


class KerasFileError(ValueError):
    """Raised when a `.keras` file can't serve as a backbone as configured; the message says what to change."""


@dataclass(frozen=True)
class ArchiveLayer:
    """One operation of the flattened graph.

    Attributes:
        name: Flat name (unique in the graph).
        path: Original names: the enclosing models from the file's top model down, then the layer's own.
        class_name: Keras class name.
        is_layer: False for a `keras.ops` operation (it has no weights and no `trainable` flag).
        inputs: Positions of the operations it reads.
        has_weights: Whether `model.weights.h5` holds weights for it; None when that file can't be read.
    """

    name: str
    path: tuple[str, ...]
    class_name: str
    is_layer: bool
    inputs: tuple[int, ...]
    has_weights: bool | None


@dataclass(frozen=True)
class ArchiveBlock:
    """A named group of layers of the backbone, frozen or unfrozen as one."""

    name: str
    layer_names: tuple[str, ...]


@dataclass(frozen=True)
class KerasArchive:
    """The flattened graph of a `.keras` file.

    Attributes:
        path: The file, as given.
        model_name: Name of the file's top model.
        layers: Every operation in topological order; the input first.
        output: Position of the operation producing the model's output.
        input_shape: The input's shape without the batch axis (None for a free size).
        unsafe: One description per piece of code loading the file would run (empty: safe mode loads it).
    """

    path: str
    model_name: str
    layers: tuple[ArchiveLayer, ...]
    output: int
    input_shape: tuple[int | None, ...]
    unsafe: tuple[str, ...]

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(height, width) when the model takes only one image size, else None."""
        height, width = self.input_shape[0], self.input_shape[1]
        return (height, width) if height is not None and width is not None else None

    def unsafe_refusal(self) -> str:
        """Why the file is refused in safe mode, and what loading it would execute ("" when it loads safely)."""
        if not self.unsafe:
            return ""
        return (
            f"{self.path} loads only with safe_mode=False: it holds {'; '.join(self.unsafe)}, which loading it "
            "would execute; set backbone.safe_mode: false only if you trust the file"
        )

    def flat_names(self) -> dict[tuple[str, ...], str]:
        """Original path of each operation but the input -> its flat name."""
        return {layer.path: layer.name for layer in self.layers[1:]}

    def default_cut_layer(self) -> str:
        """The layer whose output feeds the last layer (the classifier): the default cut.

        Raises:
            KerasFileError: The last layer reads several tensors, or reads the input itself.
        """
        last = self.layers[self.output]
        if len(last.inputs) != 1 or last.inputs[0] == 0:
            raise KerasFileError(
                f"{self.path}: its last layer {last.name!r} does not read one layer's output, so there is no default "
                "cut; set backbone.cut_layer"
            )
        return self.layers[last.inputs[0]].name

    def position(self, name: str, *, key: str = "backbone.cut_layer") -> int:
        """Position of the operation with flat name `name`.

        Raises:
            KerasFileError: No such layer; the message lists the closest names.
        """
        names = [layer.name for layer in self.layers]
        if name in names:
            return names.index(name)
        close = difflib.get_close_matches(name, names, n=6, cutoff=0.5) or names[-6:]
        raise KerasFileError(
            f"{key} {name!r} is not a layer of {self.path}; close names: {', '.join(close)} "
            f"(default: {self._default_cut_or_none()!r}, the input of its last layer)"
        )

    def _default_cut_or_none(self) -> str | None:
        try:
            return self.default_cut_layer()
        except KerasFileError:
            return None

    def backbone_positions(self, cut_layer: str | None) -> list[int]:
        """Positions of the operations the cut's output depends on, the input and the cut included, in order."""
        cut = self.position(cut_layer if cut_layer is not None else self.default_cut_layer())
        if cut == 0:
            raise KerasFileError(f"backbone.cut_layer {self.layers[0].name!r} is the input of {self.path}")
        needed = {cut}
        for index in range(cut, -1, -1):
            if index in needed:
                needed.update(self.layers[index].inputs)
        return sorted(needed)

    def blocks(self, *, cut_layer: str | None, block_prefixes: Sequence[str] | None) -> tuple[ArchiveBlock, ...]:
        """The backbone's blocks, top-down (see the module doc for the two rules).

        Args:
            cut_layer: Flat name of the backbone's last layer; None: the default cut.
            block_prefixes: Layer-name prefixes of the blocks, top-down; None: one block per layer with weights.

        Returns:
            The blocks; together they hold every layer of the backbone but the input, once each.

        Raises:
            KerasFileError: An unknown cut layer, no layer with weights below it, or (with prefixes) a layer
                matching no prefix, a prefix matching no layer, blocks out of order, or a boundary that is not a
                single-tensor cut.
        """
        positions = self.backbone_positions(cut_layer)
        local = {position: index for index, position in enumerate(positions)}
        flags = cut_flags([[local[source] for source in self.layers[position].inputs] for position in positions])
        body = [(position, flags[local[position]]) for position in positions[1:]]
        if block_prefixes is None:
            return self._blocks_by_weights(body)
        return self._blocks_by_prefixes(body, block_prefixes)

    def _blocks_by_weights(self, body: list[tuple[int, bool]]) -> tuple[ArchiveBlock, ...]:
        unknown = [self.layers[position].name for position, _ in body if self.layers[position].has_weights is None]
        if unknown:
            raise KerasFileError(
                f"{self.path}: cannot tell from its model.weights.h5 which layers hold weights; list the blocks "
                "with backbone.block_prefixes"
            )
        atoms: list[list[int]] = [[]]
        for position, is_cut in body:
            atoms[-1].append(position)
            if is_cut and self.layers[position].is_layer:
                atoms.append([])
        atoms = [atom for atom in atoms if atom]
        groups: list[list[int]] = []
        leading: list[int] = []
        for atom in atoms:
            if any(self.layers[position].has_weights for position in atom):
                groups.append(leading + atom)
                leading = []
            elif groups:
                groups[-1].extend(atom)
            else:
                leading.extend(atom)
        if not groups:
            raise KerasFileError(f"{self.path}: no layer below the cut holds weights; there is nothing to fine-tune")
        return tuple(
            ArchiveBlock(
                name=[self.layers[position].name for position in group if self.layers[position].has_weights][-1],
                layer_names=tuple(self.layers[position].name for position in group if self.layers[position].is_layer),
            )
            for group in reversed(groups)
        )

    def _blocks_by_prefixes(self, body: list[tuple[int, bool]], prefixes: Sequence[str]) -> tuple[ArchiveBlock, ...]:
        members: list[list[tuple[int, bool]]] = [[] for _ in prefixes]
        # Listed top-down, so along the graph (bottom-up) the block index may only go down.
        lowest_seen = len(prefixes)
        for position, is_cut in body:
            layer = self.layers[position]
            if not layer.is_layer:
                continue
            index = next((index for index, prefix in enumerate(prefixes) if layer.name.startswith(prefix)), None)
            if index is None:
                raise KerasFileError(
                    f"backbone.block_prefixes: layer {layer.name!r} of {self.path} starts with none of "
                    f"{', '.join(prefixes)}; every layer below the cut must belong to a block"
                )
            if index > lowest_seen:
                raise KerasFileError(
                    f"backbone.block_prefixes: layer {layer.name!r} (block {prefixes[index]!r}) comes after layers "
                    f"of block {prefixes[lowest_seen]!r}, which is listed above it; list the blocks top-down, each "
                    "a run of consecutive layers"
                )
            lowest_seen = index
            members[index].append((position, is_cut))
        empty = [prefix for prefix, layers in zip(prefixes, members, strict=True) if not layers]
        if empty:
            raise KerasFileError(
                f"backbone.block_prefixes: no layer below the cut of {self.path} starts with {', '.join(empty)}"
            )
        for prefix, layers in zip(prefixes[1:], members[1:], strict=True):
            position, is_cut = layers[-1]
            if not is_cut:
                raise KerasFileError(
                    f"backbone.block_prefixes: block {prefix!r} ends at layer {self.layers[position].name!r}, but a "
                    "layer above it also reads a tensor from below it (not a single-tensor cut); move the boundary "
                    "to a layer that alone connects the two parts"
                )
        return tuple(
            ArchiveBlock(name=prefix, layer_names=tuple(self.layers[position].name for position, _ in layers))
            for prefix, layers in zip(prefixes, members, strict=True)
        )


def _snake_case(name: str) -> str:
    """Keras' `naming.to_snake_case`: how `model.weights.h5` names a layer's group after its class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _is_model(entry: dict[str, Any]) -> bool:
    return entry.get("class_name") in _MODEL_CLASSES or "input_layers" in entry.get("config", {})


def _is_operation(entry: dict[str, Any]) -> bool:
    """A `keras.ops` call recorded in a functional graph (no weights, not in `model.layers`)."""
    return str(entry.get("module", "")).startswith(("keras.src.ops", "keras.ops"))


def _tensor_references(value: Any) -> Iterator[tuple[str, int, int]]:
    """The (layer, node index, tensor index) of every Keras tensor in a node's serialised arguments."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            name, node_index, tensor_index = value["config"]["keras_history"]
            yield str(name), int(node_index), int(tensor_index)
            return
        for item in value.values():
            yield from _tensor_references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _tensor_references(item)


def _layer_references(value: Any) -> list[tuple[str, int]]:
    """`input_layers` / `output_layers`: one [name, node, tensor] triple, or a list of them."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return [(value[0], int(value[2]))]
    if isinstance(value, list):
        return [reference for item in value for reference in _layer_references(item)]
    if isinstance(value, dict):
        return [reference for item in value.values() for reference in _layer_references(item)]
    return []


def _find_unsafe(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, dict):
        class_name = value.get("class_name")
        config = value.get("config")
        name = config.get("name", where) if isinstance(config, dict) else where
        if class_name in UNSAFE_CLASSES:
            yield f"{class_name} {name!r} ({UNSAFE_CLASSES[class_name]})"
            return
        for item in value.values():
            yield from _find_unsafe(item, name if isinstance(name, str) else where)
    elif isinstance(value, list):
        for item in value:
            yield from _find_unsafe(item, where)


class _Flattener:
    """Turns the nested config of a functional or Sequential model into one graph of `ArchiveLayer`s."""

    def __init__(self, path: str, weighted_groups: set[str] | None) -> None:
        self._path = path
        self._weighted = weighted_groups
        self.layers: list[ArchiveLayer] = []
        self._taken: set[str] = set()
        self.input_shape: tuple[int | None, ...] | None = None

    def _error(self, message: str) -> KerasFileError:
        return KerasFileError(f"{self._path}: {message}")

    def _flat_name(self, path: tuple[str, ...]) -> str:
        name = path[-1]
        for enclosing in reversed(path[:-1]):
            if name not in self._taken and not name.startswith(RESERVED_PREFIX):
                break
            name = f"{enclosing}_{name}"
        if name in self._taken or name.startswith(RESERVED_PREFIX):
            raise self._error(f"cannot give layer {'/'.join(path)} a name of its own in the flattened graph")
        self._taken.add(name)
        return name

    def _add(self, entry: dict[str, Any], scope: tuple[str, ...], inputs: list[int], group: str | None) -> int:
        name = str(entry.get("name") or entry["config"]["name"])
        path = (*scope, name)
        has_weights = None
        if self._weighted is not None and group is not None:
            has_weights = group in self._weighted
        self.layers.append(
            ArchiveLayer(
                name=self._flat_name(path),
                path=path,
                class_name=str(entry.get("class_name")),
                is_layer=not _is_operation(entry),
                inputs=tuple(inputs),
                has_weights=has_weights if not _is_operation(entry) else False,
            )
        )
        return len(self.layers) - 1

    def _add_input(self, entry: dict[str, Any], scope: tuple[str, ...]) -> int:
        shape = entry["config"].get("batch_shape") or entry["config"].get("batch_input_shape")
        if shape is None:
            raise self._error("its input layer declares no shape")
        self.input_shape = tuple(None if size is None else int(size) for size in shape[1:])
        name = str(entry.get("name") or entry["config"]["name"])
        self._taken.add(name)
        self.layers.append(
            ArchiveLayer(
                name=name, path=(*scope, name), class_name="InputLayer", is_layer=True, inputs=(), has_weights=False
            )
        )
        return 0

    def model(self, entry: dict[str, Any], scope: tuple[str, ...], inputs: list[int] | None, group: str) -> list[int]:
        """Adds a model's layers; returns the positions of its outputs.

        Args:
            entry: The model's serialised form.
            scope: Names of the enclosing models, this one's included.
            inputs: Positions of what feeds its inputs; None for the file's top model.
            group: Its group in model.weights.h5.
        """
        config = entry["config"]
        if entry.get("class_name") == "Sequential":
            return self._sequential(config, scope, inputs, group)
        return self._functional(config, scope, inputs, group)

    def _group_names(self, entries: list[dict[str, Any]], group: str, *, skip_input: bool) -> list[str | None]:
        """Each entry's group in model.weights.h5: `<model's group>/layers/<class in snake case>[_<n>]`.

        Keras' saver names the groups of a model's `layers` so, counting each class in the order of `layers`
        (which leaves out `keras.ops` operations, and a Sequential model's input layer); the top model's
        group is the file's root.
        """
        used: dict[str, int] = {}
        groups: list[str | None] = []
        for entry in entries:
            if _is_operation(entry) or (skip_input and entry.get("class_name") == "InputLayer"):
                groups.append(None)
                continue
            snake = _snake_case(str(entry.get("class_name")))
            used[snake] = used.get(snake, -1) + 1
            groups.append(f"{group}/layers/{snake}".lstrip("/") + (f"_{used[snake]}" if used[snake] else ""))
        return groups

    def _sequential(
        self, config: dict[str, Any], scope: tuple[str, ...], inputs: list[int] | None, group: str
    ) -> list[int]:
        entries = list(config.get("layers", []))
        groups = self._group_names(entries, group, skip_input=True)
        current: int | None = inputs[0] if inputs else None
        for entry, layer_group in zip(entries, groups, strict=True):
            if entry.get("class_name") == "InputLayer":
                if inputs is None:
                    current = self._add_input(entry, scope)
                continue
            if current is None:
                shape = config.get("build_input_shape")
                if shape is None:
                    raise self._error("it is a Sequential model that was never built, so its input shape is unknown")
                fake = {"config": {"batch_shape": shape, "name": "input_layer"}}
                current = self._add_input(fake, scope)
            if _is_model(entry):
                name = str(entry["config"]["name"])
                outputs = self.model(entry, (*scope, name), [current], layer_group or "")
                if len(outputs) != 1:
                    raise self._error(f"model {name!r} inside a Sequential model has {len(outputs)} outputs")
                current = outputs[0]
            else:
                current = self._add(entry, scope, [current], layer_group)
        if current is None:
            raise self._error("it is an empty Sequential model")
        return [current]

    def _functional(
        self, config: dict[str, Any], scope: tuple[str, ...], inputs: list[int] | None, group: str
    ) -> list[int]:
        entries = list(config["layers"])
        groups = self._group_names(entries, group, skip_input=False)
        input_names = [name for name, _ in _layer_references(config["input_layers"])]
        if inputs is None and len(input_names) != 1:
            raise self._error(f"its model takes {len(input_names)} inputs; a backbone takes one image")
        if inputs is not None and len(inputs) != len(input_names):
            raise self._error(f"model {scope[-1]!r} takes {len(input_names)} inputs but is called with {len(inputs)}")
        produced: dict[str, list[int]] = {}
        for entry, layer_group in zip(entries, groups, strict=True):
            name = str(entry.get("name") or entry["config"]["name"])
            nodes = entry.get("inbound_nodes", [])
            if entry.get("class_name") == "InputLayer":
                if inputs is None:
                    produced[name] = [self._add_input(entry, scope)]
                else:
                    produced[name] = [inputs[input_names.index(name)]]
                continue
            if len(nodes) != 1:
                raise self._error(
                    f"layer {'/'.join((*scope, name))} is called {len(nodes)} times; a backbone's layers must each be "
                    "called once (shared layers can't be frozen block by block)"
                )
            sources = []
            for source, _node, tensor in _tensor_references(nodes[0]):
                if source not in produced:
                    raise self._error(f"layer {name!r} reads {source!r}, which its model does not define before it")
                sources.append(produced[source][tensor])
            if _is_model(entry):
                produced[name] = self.model(entry, (*scope, name), sources, layer_group or "")
            else:
                produced[name] = [self._add(entry, scope, sources, layer_group)]
        return [produced[name][tensor] for name, tensor in _layer_references(config["output_layers"])]


def _weighted_groups(archive: zipfile.ZipFile) -> set[str] | None:
    """Groups of model.weights.h5 that hold at least one array, or None when it can't be read."""
    import h5py

    if "model.weights.h5" not in archive.namelist():
        return None
    groups: set[str] = set()

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            parts = name.split("/")
            groups.update("/".join(parts[:end]) for end in range(1, len(parts)))

    try:
        with archive.open("model.weights.h5") as raw, h5py.File(raw, "r") as weights:
            weights.visititems(visit)
    except OSError:
        return None
    return groups


@cache
def _read(path: str, _stamp: tuple[int, int]) -> KerasArchive:
    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise KerasFileError(
                    f"{path} holds no config.json: not a Keras 3 .keras file (a zip of config.json, metadata.json "
                    "and model.weights.h5, as model.save('x.keras') writes it)"
                )
            config = json.loads(archive.read("config.json"))
            weighted = _weighted_groups(archive)
    except zipfile.BadZipFile:
        raise KerasFileError(
            f"{path} is not a zip archive: not a Keras 3 .keras file (an HDF5 .h5 model or a SavedModel folder is "
            "not read here)"
        ) from None
    if not isinstance(config, dict) or not _is_model(config):
        class_name = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise KerasFileError(
            f"{path} holds a {class_name} model with no layer graph in its config; only functional and Sequential "
            "models can be cut into a backbone"
        )
    flattener = _Flattener(path, weighted)
    model_name = str(config["config"].get("name", "model"))
    outputs = flattener.model(config, (model_name,), None, "")
    if len(outputs) != 1:
        raise KerasFileError(f"{path}: its model has {len(outputs)} outputs; a backbone file needs one")
    shape = flattener.input_shape or ()
    if len(shape) != 3 or shape[2] not in (3, None):
        raise KerasFileError(
            f"{path}: its model takes inputs of shape {shape}; a backbone takes RGB images, (height, width, 3)"
        )
    return KerasArchive(
        path=path,
        model_name=model_name,
        layers=tuple(flattener.layers),
        output=outputs[0],
        input_shape=shape,
        unsafe=tuple(_find_unsafe(config, model_name)),
    )


def read_keras_archive(path: str | Path) -> KerasArchive:
    """Reads a `.keras` file's graph (cached while the file is unchanged).

    Args:
        path: The file.

    Returns:
        Its flattened graph.

    Raises:
        KerasFileError: No such file, not a Keras 3 `.keras` file, or a model that can't be a backbone
            (subclassed, several inputs or outputs, shared layers, never built).
    """
    path = str(path)
    try:
        status = Path(path).stat()
    except OSError:
        raise KerasFileError(f"{path}: no such file (a relative path starts at the folder the stage runs in)") from None
    if not Path(path).is_file():
        raise KerasFileError(f"{path} is not a file")
    return _read(path, (status.st_mtime_ns, status.st_size))
