"""Shared values of the training tests."""

from __future__ import annotations

from pipeline.training.history import PhaseRecord

# A later phase, as the history and the callbacks see it.
PHASE = PhaseRecord(
    index=1,
    name="unfreeze_top_2",
    trainable_blocks=2,
    learning_rate=5e-4,
    first_epoch=4,
    end_epoch=7,
    cached_features=True,
    optimizer="adam",
    schedule="cosine",
    bn_policy="affine",
    lr_decay_per_block=2.6,
    data_note="frozen activations computed once and reused",
    seconds=12.4,
)
