"""Where and how TensorFlow runs: devices, precision and XLA chosen once before the first op, and the filter
of TensorFlow's harmless native start-up lines.
"""
