"""The flattened graph of a `.keras` file, and the questions the backbone loader and params validation ask it.

Why apart from the reader: these are questions about layers and edges (the default cut, a layer's
position, what lies below a cut), answerable from the graph alone, whoever read it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pipeline.backbones.errors import KerasFileError


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
