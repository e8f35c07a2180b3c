"""pipeline/training/history.py: one epoch history across phases, each phase described and saved."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline.training.history import PhaseRecord, TrainingHistory
from tests.training.conftest import PHASE


def test_describe_numbers_epochs_from_one() -> None:
    assert PHASE.describe() == (
        "unfreeze_top_2: epochs 5-7, adam lr 0.0005 (cosine), lr / 2.6 per lower block, BN affine, "
        "cached features True (frozen activations computed once and reused), 12 s"
    )


def test_describe_says_which_epoch_was_restored() -> None:
    stopped = PhaseRecord(
        index=0,
        name="frozen",
        trainable_blocks=0,
        learning_rate=0.001,
        first_epoch=0,
        end_epoch=3,
        cached_features=False,
        optimizer="sgd",
        best_epoch=1,
        data_note="augmentation",
        seconds=2,
    )
    assert stopped.describe() == (
        "frozen: epochs 1-3, restored best epoch 2, sgd lr 0.001 (constant), BN frozen, "
        "cached features False (augmentation), 2 s"
    )


def test_save_writes_exact_csv_and_json(tmp_path: Path) -> None:
    row = {
        "epoch": 4,
        "phase_name": "unfreeze_top_2",
        "loss": 0.5,
        "accuracy": 0.75,
        "val_loss": 0.625,
        "val_accuracy": 0.5,
        "lr": 0.0005,
        "phase": 1.0,
    }
    history = TrainingHistory(rows=[row], phases=[PHASE])
    history.save(csv_path=tmp_path / "h.csv", json_path=tmp_path / "sub" / "h.json")
    with (tmp_path / "h.csv").open(newline="") as handle:
        assert list(csv.reader(handle)) == [
            ["epoch", "phase", "phase_name", "loss", "accuracy", "val_loss", "val_accuracy", "lr"],
            ["4", "1.0", "unfreeze_top_2", "0.5", "0.75", "0.625", "0.5", "0.0005"],
        ]
    document = json.loads((tmp_path / "sub" / "h.json").read_text())
    assert document["epochs"] == [row]
    assert document["phases"][0]["end_epoch"] == 7
