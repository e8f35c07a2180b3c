"""Pretrained feature extractors, whatever their source: keras.applications, the built-in EfficientNet-Lite,
a TF Hub handle or SavedModel directory, or a local `.keras` file.

Every kind gives the same thing (`base.Backbone`: the model, its preprocessing and its named blocks, each
ending at a single-tensor cut); `registry.load_backbone` dispatches on `names.backbone_kind`. `names`,
`applications` and `keras_archive` import no TensorFlow: params validation reads them.
"""
