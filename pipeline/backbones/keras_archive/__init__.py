"""A `.keras` file read without TensorFlow: its layer graph, input shape, blocks, and what loading it would run.

Why: params validation must refuse a missing file, an image size the model can't take, an unknown
cut layer, a bad block list, or a file that only loads with `safe_mode=False`, in about a second and
before TensorFlow loads. A `.keras` file is a zip holding `config.json` (the model's architecture)
and `model.weights.h5`, so all of that can be read with `zipfile`, `json` and `h5py`.

The graph is flattened: the layers of a model nested in the file (this pipeline's exported classifier
nests the trained classifier inside a wrapper that adds the preprocessing layer) become layers of one
graph, so that any of them can be a cut or a block boundary. Flat names are the layers' own names,
except that a name already taken by an earlier layer, or starting with `head_` (the new head's
layers are all named so, see `pipeline.model.head`), is prefixed with the names of the models enclosing the
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

The package's modules: `graph` (the flattened graph and its questions: the default cut, a layer's
position, the layers below a cut), `reader` (the zip and the weights file, and the scan for code that
loading would run), `flatten` (nested models unrolled into one graph, with the flat names) and
`blocks` (the two block rules).
"""

from pipeline.backbones.keras_archive.blocks import archive_blocks
from pipeline.backbones.keras_archive.graph import ArchiveBlock, ArchiveLayer, KerasArchive
from pipeline.backbones.keras_archive.reader import read_keras_archive

__all__ = ["ArchiveBlock", "ArchiveLayer", "KerasArchive", "archive_blocks", "read_keras_archive"]
