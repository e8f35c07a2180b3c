"""pipeline/training/activation_store.py: frozen activations on disk, keyed, checked, evicted least recently used.

The first half tests the store on plain arrays; the second the `PhaseDataFactory` and the LR range test
that read from it, on the tiny backbone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.params.head import HeadParams
from pipeline.training import features
from pipeline.training.activation_store import (
    ACTIVATIONS,
    MANIFEST,
    ActivationKey,
    ActivationStore,
    describe_layer,
    images_digest,
    weights_digest,
)
from tests.conftest import build_tiny_backbone, make_images

KEY = ActivationKey(
    backbone="tiny",
    weights_digest="w0",
    image_size=16,
    preprocessing="Rescaling",
    cut_layer="block2a_activation",
    batchnorm="inference",
    dtype_policy="float32",
    flip="none",
    images_digest="i0",
)
MIB = 2**20


def _array(rows: int = 4, value: float = 1.0) -> np.ndarray:
    return np.full((rows, 3), value, np.float32)


def _computing(array: np.ndarray, calls: list[int]):
    def compute() -> np.ndarray:
        calls.append(1)
        return array

    return compute


@pytest.mark.parametrize("part", [field.name for field in dataclasses.fields(ActivationKey)])
def test_every_part_of_the_key_changes_its_digest(part: str) -> None:
    value = getattr(KEY, part)
    changed = dataclasses.replace(KEY, **{part: value + 1 if isinstance(value, int) else f"{value}x"})

    assert changed.digest() != KEY.digest()
    assert dataclasses.replace(KEY).digest() == KEY.digest()


def test_images_and_weights_digests_follow_every_byte() -> None:
    images, _ = make_images(10, 2, seed=0)
    changed = images.copy()
    changed[7, 3, 3] ^= 1

    assert images_digest(images) == images_digest(images.copy())
    assert images_digest(changed) != images_digest(images)
    assert images_digest(images[:9]) != images_digest(images)
    weights = [("conv", [np.ones((2, 2), np.float32)])]
    assert weights_digest(weights) == weights_digest([("conv", [np.ones((2, 2), np.float32)])])
    assert weights_digest(weights) != weights_digest([("conv", [np.full((2, 2), 1.5, np.float32)])])
    assert weights_digest(weights) != weights_digest([("other", [np.ones((2, 2), np.float32)])])


def test_a_layers_description_leaves_out_its_name_trainable_flag_and_addresses() -> None:
    class Holding(keras.layers.Layer):
        def get_config(self):
            return {**super().get_config(), "function": object()}  # printed as <object object at 0x...>

    first, second = Holding(), Holding(name="other")
    second.trainable = False

    assert " at 0x" in repr(first.get_config()["function"])
    assert describe_layer(first) == describe_layer(second)
    assert " at 0x" not in describe_layer(first)
    assert describe_layer(keras.layers.Dense(3)) != describe_layer(keras.layers.Dense(3, use_bias=False))


def test_a_second_fetch_reads_the_memory_mapped_entry(tmp_path: Path) -> None:
    store, calls = ActivationStore(tmp_path, limit_bytes=MIB), []
    first = store.fetch(KEY, _computing(_array(), calls), label="train")
    second = ActivationStore(tmp_path, limit_bytes=MIB).fetch(KEY, _computing(_array(value=2.0), calls), label="train")

    assert calls == [1]
    assert (first.read, second.read) == (False, True)
    assert isinstance(second.array, np.memmap)
    assert second.array.mode == "r"
    np.testing.assert_array_equal(second.array, _array())
    manifest = json.loads((tmp_path / KEY.digest() / MANIFEST).read_text())
    assert manifest["shape"] == [4, 3]
    assert manifest["dtype"] == "<f4"
    assert manifest["key"] == dataclasses.asdict(KEY)
    assert second.computed_at == first.computed_at == manifest["computed_at"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [KEY.digest()]


def _damage_truncate(entry: Path) -> None:
    with (entry / ACTIVATIONS).open("r+b") as handle:
        handle.truncate(100)


def _damage_flip(entry: Path) -> None:
    data = bytearray((entry / ACTIVATIONS).read_bytes())
    data[-5] ^= 0x10
    (entry / ACTIVATIONS).write_bytes(bytes(data))


def _damage_manifest(entry: Path) -> None:
    (entry / MANIFEST).unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_damage_truncate, "is truncated (activations.npy holds 100 bytes, its manifest says 176)"),
        (_damage_flip, "is damaged (activations.npy does not match its manifest's checksum)"),
        (_damage_manifest, "has no manifest (an interrupted or damaged write)"),
    ],
)
def test_a_damaged_entry_is_removed_recomputed_and_reported(tmp_path: Path, capsys, damage, message: str) -> None:
    store, calls = ActivationStore(tmp_path, limit_bytes=MIB), []
    store.fetch(KEY, _computing(_array(), calls), label="train")
    damage(tmp_path / KEY.digest())
    capsys.readouterr()

    again = ActivationStore(tmp_path, limit_bytes=MIB).fetch(KEY, _computing(_array(value=3.0), calls), label="train")

    assert capsys.readouterr().out == (
        f"activation store: entry {KEY.digest()} (train) {message}; removed, recomputing it\n"
    )
    assert calls == [1, 1]
    assert again.read is False
    np.testing.assert_array_equal(again.array, _array(value=3.0))
    assert ActivationStore(tmp_path, limit_bytes=MIB).load(KEY, label="train").read is True


def test_the_loser_of_a_write_race_uses_the_winners_entry(tmp_path: Path) -> None:
    winner, loser = ActivationStore(tmp_path, limit_bytes=MIB), ActivationStore(tmp_path, limit_bytes=MIB)
    winner.save(KEY, _array(value=1.0), label="train")

    # The loser computed too (its own numbers) and renames after the winner: it reads the winner's entry.
    result = loser.save(KEY, _array(value=1.0 + 1e-7), label="train")

    assert result.read is True
    np.testing.assert_array_equal(result.array, _array(value=1.0))
    assert sorted(path.name for path in tmp_path.iterdir()) == [KEY.digest()]


def test_past_the_limit_the_least_recently_used_entries_go(tmp_path: Path) -> None:
    keys = [dataclasses.replace(KEY, images_digest=f"i{index}") for index in range(4)]
    ActivationStore(tmp_path, limit_bytes=MIB).save(keys[0], _array(rows=1000), label="i0")
    ((_, _, entry_bytes),) = ActivationStore(tmp_path, limit_bytes=MIB).entries()
    limit = 3 * entry_bytes + entry_bytes // 2  # room for three entries of the same size (npy and manifest)
    for key in keys[1:3]:
        ActivationStore(tmp_path, limit_bytes=limit).save(key, _array(rows=1000), label=key.images_digest)
    for used, key in enumerate(keys[:3]):
        os.utime(tmp_path / key.digest() / MANIFEST, (1000 + used, 1000 + used))
    # Reading the oldest makes it the most recently used.
    assert ActivationStore(tmp_path, limit_bytes=limit).load(keys[0], label="i0").read is True

    ActivationStore(tmp_path, limit_bytes=limit).save(keys[3], _array(rows=1000), label="i3")

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(key.digest() for key in (keys[0], *keys[2:]))


def test_an_entry_over_the_limit_is_not_stored(tmp_path: Path) -> None:
    result = ActivationStore(tmp_path, limit_bytes=10).save(KEY, _array(), label="train")

    assert result.read is False
    assert not isinstance(result.array, np.memmap)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_a_crashed_writers_temporary_folder_is_never_read_and_is_cleaned(tmp_path: Path) -> None:
    # A pid that cannot be running (above Linux's pid_max), as a writer killed mid-write leaves it.
    abandoned = tmp_path / f".tmp-{KEY.digest()}-99999999-0000abcd"
    abandoned.mkdir()
    (abandoned / ACTIVATIONS).write_bytes(b"partial")
    store, calls = ActivationStore(tmp_path, limit_bytes=MIB), []

    store.fetch(KEY, _computing(_array(), calls), label="train")

    assert calls == [1]
    assert sorted(path.name for path in tmp_path.iterdir()) == [KEY.digest()]


# The factory and the LR range test on the tiny backbone.

IMAGE_SIZE = 16


def _classifier(dropout: float = 0.0, seed: int = 0):
    from pipeline.model.head import build_head

    return build_head(build_tiny_backbone(IMAGE_SIZE, seed=0), HeadParams(dropout=dropout), num_classes=3, seed=seed)


def _splits(train_count: int = 40):
    return (
        features.ImageSplit(*make_images(train_count, 3, seed=1)),
        features.ImageSplit(*make_images(12, 3, seed=2)),
    )


def _inputs(store: ActivationStore | None) -> features.InputSettings:
    return features.InputSettings(
        image_size=IMAGE_SIZE, batch_size=16, seed=0, cache_limit_bytes=1 << 30, activation_store=store
    )


@pytest.fixture
def forward_passes(monkeypatch) -> list[str]:
    """Counts the passes of `_forward_pass`, by the name of the layer each ends at."""
    calls: list[str] = []
    original = features._forward_pass

    def counting(model, inputs, *, batch_size):
        calls.append(model.output._keras_history.operation.name)
        return original(model, inputs, batch_size=batch_size)

    monkeypatch.setattr(features, "_forward_pass", counting)
    return calls


def _base(classifier, store, splits, *, deepest: int = 2) -> tuple[features.PhaseDataFactory, dict]:
    train, val = splits
    factory = features.PhaseDataFactory(
        classifier, train=train, val=val, inputs=_inputs(store), deepest_trainable_blocks=deepest
    )
    return factory, factory.base_activations()


def test_a_second_run_with_another_head_reads_bit_identical_activations(tmp_path: Path, forward_passes) -> None:
    store, splits = ActivationStore(tmp_path, limit_bytes=MIB), _splits()
    first, computed = _base(_classifier(), store, splits)
    assert forward_passes == ["block1a_activation", "block1a_activation"]
    assert first.for_phase(2).note == f"frozen activations computed once and stored in the activation store {tmp_path}"

    # Another head (dropout, seed) sits above the cut: the key is the same.
    second, read = _base(_classifier(dropout=0.3, seed=5), ActivationStore(tmp_path, limit_bytes=MIB), splits)

    assert forward_passes == ["block1a_activation", "block1a_activation"]
    for split in ("train", "val"):
        assert isinstance(read[split][0], np.memmap)
        assert read[split][0].tobytes() == computed[split][0].tobytes()
    assert second.for_phase(2).note.startswith(
        f"frozen activations read from the activation store {tmp_path} (entries "
    )
    # A phase above the base cut still recomputes its segment from the stored activations, every run.
    second.for_phase(0)
    assert forward_passes == ["block1a_activation", "block1a_activation", "head_pool", "head_pool"]


def test_the_first_phases_own_cut_is_stored_too_before_anything_trained(tmp_path: Path, forward_passes) -> None:
    store, splits = ActivationStore(tmp_path, limit_bytes=MIB), _splits()
    first, _ = _base(_classifier(), store, splits)
    computed = first.for_phase(0)  # the frozen phase first: its segment holds pretrained weights
    second, _ = _base(_classifier(dropout=0.3, seed=5), ActivationStore(tmp_path, limit_bytes=MIB), splits)
    read = second.for_phase(0)

    assert forward_passes == ["block1a_activation", "block1a_activation", "head_pool", "head_pool"]
    assert "; the phase's own cut computed once and stored in the activation store" in computed.note
    assert f"; the phase's own cut read from the activation store {tmp_path} (entries " in read.note
    for got, want in zip(read.val, computed.val, strict=True):
        assert got[0].numpy().tobytes() == want[0].numpy().tobytes()
    assert len(list(tmp_path.iterdir())) == 4  # base and frozen-phase cut, of train and val


def test_changed_prefix_weights_or_images_make_new_entries(tmp_path: Path, forward_passes) -> None:
    splits = _splits()
    _base(_classifier(), ActivationStore(tmp_path, limit_bytes=MIB), splits)
    classifier = _classifier()
    stem = classifier.model.get_layer("stem_conv")
    stem.set_weights([stem.get_weights()[0] * 1.01])
    _base(classifier, ActivationStore(tmp_path, limit_bytes=MIB), splits)
    train, val = splits
    images = train.images.copy()
    images[0, 0, 0] += 1
    _base(_classifier(), ActivationStore(tmp_path, limit_bytes=MIB), (features.ImageSplit(images, train.labels), val))

    # Weights: both splits again; one image of train: train again, val read.
    assert len(forward_passes) == 5
    assert len(list(tmp_path.iterdir())) == 5


def test_a_store_too_small_keeps_the_activations_in_memory(tmp_path: Path, forward_passes) -> None:
    factory, base = _base(_classifier(), ActivationStore(tmp_path, limit_bytes=1000), _splits())

    assert not factory.uses_store
    assert not isinstance(base["train"][0], np.memmap)
    assert factory.for_phase(2).note.startswith("frozen activations computed once and reused; kept in memory only")
    assert "over train.activation_store.limit_mb (0 MiB)" in factory.for_phase(2).note
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_lr_find_fills_the_store_that_train_then_reads(tmp_path: Path, forward_passes) -> None:
    from pipeline.optim.lr_finder import LRFindReport
    from pipeline.params.optimizer import AdamParams
    from pipeline.params.runtime import LRFindParams
    from pipeline.training.lr_range import find_learning_rate

    splits = _splits(train_count=96)
    report = find_learning_rate(
        _classifier(),
        splits[0],
        optimizer=AdamParams(name="adam"),
        inputs=_inputs(ActivationStore(tmp_path, limit_bytes=MIB)),
        settings=LRFindParams(enabled=True, steps=10, images=64, max_lr=0.1),
        val=splits[1],
        deepest_trainable_blocks=2,
    )
    # The base cut over both splits, then the sample's segment from it up to the pooled features.
    assert forward_passes == ["block1a_activation", "block1a_activation", "head_pool", "head_pool"]
    assert isinstance(report, LRFindReport)
    assert (report.images, report.cached_features) == (64, True)

    _base(_classifier(), ActivationStore(tmp_path, limit_bytes=MIB), splits)

    assert len(forward_passes) == 4


def test_deepest_trainable_blocks_is_the_plans() -> None:
    from pipeline.params import parse
    from pipeline.training.lr_range import deepest_trainable_blocks
    from pipeline.training.recipe import plan_phases

    train = parse(
        {"train": {"unfreeze": [{"blocks": "auto", "lr_factor": 0.5}, {"blocks": 1, "lr_factor": 0.1}]}}
    ).train
    for examples in (100, 20000):
        phases = plan_phases(train, base_learning_rate=1e-3, block_count=9, steps_per_epoch=10, train_examples=examples)
        assert deepest_trainable_blocks(train, block_count=9, train_examples=examples) == max(
            phase.trainable_blocks for phase in phases
        )
    assert deepest_trainable_blocks(parse({}).train, block_count=9, train_examples=100) == 0


def test_from_params_builds_the_store_unless_its_limit_is_zero() -> None:
    from pipeline.params import parse

    settings = parse({"train": {"activation_store": {"path": "somewhere", "limit_mb": 3}}}).train
    store = features.InputSettings.from_params(settings, image_size=16).activation_store
    assert (store.root, store.limit_bytes) == (Path("somewhere"), 3 * MIB)
    off = parse({"train": {"activation_store": {"limit_mb": 0}}}).train
    assert features.InputSettings.from_params(off, image_size=16).activation_store is None
    keras.backend.clear_session()
