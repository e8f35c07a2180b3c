"""The seed group of a configuration: a short digest of every param in force except the seeds.

Why: one run's test accuracy is one draw; a gain smaller than the spread between seeds is noise. Runs that
differ only in their seeds (or in settings that do not change what is computed) share a group key, so
`tl-seeds` can gather them from the tracking store and report their mean, spread and confidence interval.
The train stage tags every run with its key (`pipeline.tracking.seed_groups`).

What the key leaves out, and why, is `NOT_IN_SEED_GROUP`. Everything else is in it, including settings
added to the schema later: a new pipeline version that adds one starts new groups, which is the safe side.
The code's version (`git.commit`) is not in the key; `tl-seeds` says when a group's runs come from
more than one commit.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

# The seeds a group is drawn over: training (initialisation, batch order, dropout, augmentation) and the split.
SEED_PARAMS: tuple[str, ...] = ("train.seed", "data.seed")
# Settings that change where a run is kept, how fast it is or what is logged about it, not what it computes.
# Each entry is a flattened key or a section (`tracking` leaves out every `tracking.*` key).
NOT_IN_SEED_GROUP: dict[str, str] = {
    **{key: "a seed: the group is drawn over it" for key in SEED_PARAMS},
    "train.resume": "a resumed run ends with the weights an uninterrupted one does (tests/stages/test_resume.py)",
    "train.checkpoint_every_steps": "how often the checkpoint is written",
    "train.deterministic": "whether reruns repeat each rounding: the same arithmetic, summed in another order",
    "train.activation_store": "where frozen activations are kept for later runs (the same values)",
    "train.feature_cache_mb": "whether the frozen activations are held in memory or recomputed (the same values)",
    "backbone.cache_dir": "where the converted pretrained weights are kept",
    "evaluate.batch_size": "test images per inference batch",
    "diagnostics": "what is measured and flagged about training, not the training itself",
    "tracking": "where runs are logged, and how the champion gate decides; not the run's own test metrics",
    "device.accelerator": "where it runs: a group may mix machines (device.precision, which changes the arithmetic, "
    "is in the key)",
    "device.gpus": "which GPUs",
    "device.memory_growth": "how GPU memory is allocated",
    "device.jit_compile": "XLA compilation: the same arithmetic, up to rounding",
}
# 12 hex digits, 48 bits: a collision between two configurations of one experiment is out of reach, and the
# key stays short enough to type.
KEY_LENGTH = 12


def seed_group_params(config: BaseModel) -> dict[str, str]:
    """The flattened params that decide a run's seed group: all of them but `NOT_IN_SEED_GROUP`.

    Args:
        config: The validated params (`pipeline.params.PipelineParams`).

    Returns:
        Dotted key -> value, as `pipeline.params.flatten` writes them.
    """
    from pipeline.params import flatten

    return {key: value for key, value in flatten(config).items() if not _left_out(key)}


def seed_group_key(config: BaseModel) -> str:
    """The seed group of a configuration: the first 12 hex digits of the SHA-256 of `seed_group_params`.

    Args:
        config: The validated params.

    Returns:
        The key, such as `3f9c0a1b2d4e`.
    """
    document = json.dumps(sorted(seed_group_params(config).items()), separators=(",", ":"))
    return hashlib.sha256(document.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def _left_out(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in NOT_IN_SEED_GROUP)
