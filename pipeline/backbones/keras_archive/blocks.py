"""The blocks of a `.keras` backbone, top-down: one per layer with weights, or by name prefix.

Both rules (described in `pipeline.backbones.keras_archive`) end every block at a single-tensor cut of
the graph (`pipeline.backbones.base.cut_flags`), so the frozen-feature cache can start from any block.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.backbones.base import cut_flags
from pipeline.backbones.errors import KerasFileError
from pipeline.backbones.keras_archive.graph import ArchiveBlock, KerasArchive


def archive_blocks(
    archive: KerasArchive, *, cut_layer: str | None, block_prefixes: Sequence[str] | None
) -> tuple[ArchiveBlock, ...]:
    """The backbone's blocks, top-down (see the module doc for the two rules).

    Args:
        archive: The file's flattened graph.
        cut_layer: Flat name of the backbone's last layer; None: the default cut.
        block_prefixes: Layer-name prefixes of the blocks, top-down; None: one block per layer with weights.

    Returns:
        The blocks; together they hold every layer of the backbone but the input, once each.

    Raises:
        KerasFileError: An unknown cut layer, no layer with weights below it, or (with prefixes) a layer
            matching no prefix, a prefix matching no layer, blocks out of order, or a boundary that is not a
            single-tensor cut.
    """
    positions = archive.backbone_positions(cut_layer)
    local = {position: index for index, position in enumerate(positions)}
    flags = cut_flags([[local[source] for source in archive.layers[position].inputs] for position in positions])
    body = [(position, flags[local[position]]) for position in positions[1:]]
    if block_prefixes is None:
        return _blocks_by_weights(archive, body)
    return _blocks_by_prefixes(archive, body, block_prefixes)


def _blocks_by_weights(archive: KerasArchive, body: list[tuple[int, bool]]) -> tuple[ArchiveBlock, ...]:
    unknown = [archive.layers[position].name for position, _ in body if archive.layers[position].has_weights is None]
    if unknown:
        raise KerasFileError(
            f"{archive.path}: cannot tell from its model.weights.h5 which layers hold weights; list the blocks "
            "with backbone.block_prefixes"
        )
    atoms: list[list[int]] = [[]]
    for position, is_cut in body:
        atoms[-1].append(position)
        if is_cut and archive.layers[position].is_layer:
            atoms.append([])
    atoms = [atom for atom in atoms if atom]
    groups: list[list[int]] = []
    leading: list[int] = []
    for atom in atoms:
        if any(archive.layers[position].has_weights for position in atom):
            groups.append(leading + atom)
            leading = []
        elif groups:
            groups[-1].extend(atom)
        else:
            leading.extend(atom)
    if not groups:
        raise KerasFileError(f"{archive.path}: no layer below the cut holds weights; there is nothing to fine-tune")
    return tuple(
        ArchiveBlock(
            name=[archive.layers[position].name for position in group if archive.layers[position].has_weights][-1],
            layer_names=tuple(archive.layers[position].name for position in group if archive.layers[position].is_layer),
        )
        for group in reversed(groups)
    )


def _blocks_by_prefixes(
    archive: KerasArchive, body: list[tuple[int, bool]], prefixes: Sequence[str]
) -> tuple[ArchiveBlock, ...]:
    members: list[list[tuple[int, bool]]] = [[] for _ in prefixes]
    # Listed top-down, so along the graph (bottom-up) the block index may only go down.
    lowest_seen = len(prefixes)
    for position, is_cut in body:
        layer = archive.layers[position]
        if not layer.is_layer:
            continue
        index = next((index for index, prefix in enumerate(prefixes) if layer.name.startswith(prefix)), None)
        if index is None:
            raise KerasFileError(
                f"backbone.block_prefixes: layer {layer.name!r} of {archive.path} starts with none of "
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
            f"backbone.block_prefixes: no layer below the cut of {archive.path} starts with {', '.join(empty)}"
        )
    for prefix, layers in zip(prefixes[1:], members[1:], strict=True):
        position, is_cut = layers[-1]
        if not is_cut:
            raise KerasFileError(
                f"backbone.block_prefixes: block {prefix!r} ends at layer {archive.layers[position].name!r}, but a "
                "layer above it also reads a tensor from below it (not a single-tensor cut); move the boundary "
                "to a layer that alone connects the two parts"
            )
    return tuple(
        ArchiveBlock(name=prefix, layer_names=tuple(archive.layers[position].name for position, _ in layers))
        for prefix, layers in zip(prefixes, members, strict=True)
    )
