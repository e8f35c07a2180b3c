"""Nested models of a `.keras` config unrolled into one graph of `ArchiveLayer`s, each with a flat name.

Flat names are the layers' own names, except that a name already taken by an earlier layer, or starting
with `head_` (`RESERVED_PREFIX`), is prefixed with the names of the models enclosing the layer, innermost
first, until it is free. Each layer's group in `model.weights.h5` is derived as Keras' saver names it, so
the reader can tell which layers hold weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pipeline.backbones.errors import KerasFileError
from pipeline.backbones.keras_archive.graph import ArchiveLayer

# Every layer `pipeline.model.head.build_head` adds is named head_*: layers of the file keep clear of them.
RESERVED_PREFIX = "head_"
_MODEL_CLASSES = ("Functional", "Sequential")


def _snake_case(name: str) -> str:
    """Keras' `naming.to_snake_case`: how `model.weights.h5` names a layer's group after its class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def is_model(entry: dict[str, Any]) -> bool:
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


class Flattener:
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
            if is_model(entry):
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
            if is_model(entry):
                produced[name] = self.model(entry, (*scope, name), sources, layer_group or "")
            else:
                produced[name] = [self._add(entry, scope, sources, layer_group)]
        return [produced[name][tensor] for name, tensor in _layer_references(config["output_layers"])]
