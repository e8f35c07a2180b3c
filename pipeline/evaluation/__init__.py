"""Scoring and comparing models: test metrics, the champion gate, the run comparison of `tl-compare`, and the
tables and plots that show them.
"""
