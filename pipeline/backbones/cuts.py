"""Single-tensor cuts of a layer graph, computed from its edges alone (no TensorFlow).

Why its own module: a block boundary must be a single-tensor cut, both for a Keras model in memory
(`pipeline.backbones.registry.single_tensor_cuts`) and for the graph read out of a `.keras` file's
config before TensorFlow loads (`pipeline.backbones.keras_archive`). One algorithm serves both, so
params validation and the loaded model agree on where blocks may end.
"""

from __future__ import annotations

from collections.abc import Sequence


def cut_flags(inbound: Sequence[Sequence[int]]) -> list[bool]:
    """Which operations' outputs separate the graph: nothing after them reads anything before them.

    A position is a cut in one topological order exactly when every path from the input to the output
    passes through it, so the flags do not depend on which topological order the caller lists.

    Args:
        inbound: For each operation in topological order, the positions of the operations it reads.

    Returns:
        One flag per operation.
    """
    cuts = [False] * len(inbound)
    earliest_read_after = len(inbound)
    for index in range(len(inbound) - 1, -1, -1):
        cuts[index] = earliest_read_after >= index
        earliest_read_after = min([earliest_read_after, *inbound[index]])
    return cuts
