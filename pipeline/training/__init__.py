"""The fine-tuning recipe (`recipe.fine_tune`: frozen phase, then unfreezing from the top) and its mechanics:
the frozen-feature cache, callbacks and the one history of every phase, the divergence guard, the loss, and
the LR range test of the frozen phase.
"""
