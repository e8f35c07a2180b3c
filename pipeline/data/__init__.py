"""Images in and out of the pipeline: IDX data, folders and CSVs of image files, their decoded cache,
the split and its manifest, the data report, and the `tf.data` datasets training and evaluation read.
"""
