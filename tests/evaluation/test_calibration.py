"""The expected calibration error over 15 top-class confidence bins, counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.calibration import CALIBRATION_BINS, reliability_bins

# Eight answers in three bins of width 1/15: four at confidence 0.95 (bin 14, 3 right), two at 0.55 (bin 8,
# both right) and two at 0.35 and 0.39 (bin 5, both wrong).
LABELS = np.array([0, 0, 0, 1, 0, 0, 1, 2])
PROBABILITIES = np.array(
    [
        [0.95, 0.03, 0.02],
        [0.95, 0.03, 0.02],
        [0.95, 0.03, 0.02],
        [0.95, 0.03, 0.02],
        [0.55, 0.25, 0.20],
        [0.55, 0.20, 0.25],
        [0.35, 0.33, 0.32],
        [0.39, 0.31, 0.30],
    ]
)


def test_ece_is_the_count_weighted_gap_of_each_bin() -> None:
    bins = reliability_bins(LABELS, PROBABILITIES)
    assert CALIBRATION_BINS == 15
    np.testing.assert_allclose(bins.edges, np.arange(16) / 15)
    expected_counts = np.zeros(15, dtype=int)
    expected_counts[[5, 8, 14]] = [2, 2, 4]
    np.testing.assert_array_equal(bins.counts, expected_counts)
    filled = expected_counts > 0
    np.testing.assert_allclose(bins.accuracy[filled], [0.0, 1.0, 0.75])
    np.testing.assert_allclose(bins.confidence[filled], [0.37, 0.55, 0.95])
    assert np.isnan(bins.accuracy[~filled]).all() and np.isnan(bins.confidence[~filled]).all()
    # 4/8 * |0.75 - 0.95| + 2/8 * |1 - 0.55| + 2/8 * |0 - 0.37|
    assert bins.ece == pytest.approx(0.1 + 0.1125 + 0.0925)


def test_a_model_right_as_often_as_it_says_has_no_calibration_error() -> None:
    # Ten answers at confidence 0.7, seven of them right.
    labels = np.array([0] * 7 + [1] * 3)
    probabilities = np.tile([0.7, 0.2, 0.1], (10, 1))
    bins = reliability_bins(labels, probabilities)
    assert bins.counts[10] == 10 and bins.counts.sum() == 10  # (10/15, 11/15]
    assert bins.ece == pytest.approx(0.0, abs=1e-12)


def test_bins_are_closed_on_the_right() -> None:
    # 0.6 is the edge between bins 8 and 9 (9/15) and falls in bin 8; a certain answer falls in the last bin.
    labels = np.array([0, 0])
    probabilities = np.array([[0.6, 0.4], [1.0, 0.0]])
    bins = reliability_bins(labels, probabilities)
    assert np.flatnonzero(bins.counts).tolist() == [8, 14]
    assert bins.ece == pytest.approx(0.5 * 0.4)


def test_the_bins_as_json_say_none_for_an_empty_bin() -> None:
    document = reliability_bins(LABELS, PROBABILITIES, bins=3).as_dict()
    # Bins (0, 1/3], (1/3, 2/3], (2/3, 1]: none below 1/3, four at 0.35..0.55 (two right), four at 0.95.
    assert document["counts"] == [0, 4, 4]
    assert document["accuracy"] == [None, 0.5, 0.75]
    assert document["confidence"][0] is None
    assert document["confidence"][1:] == pytest.approx([0.46, 0.95])
    assert document["edges"] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert document["ece"] == pytest.approx(0.5 * 0.04 + 0.5 * 0.2)


@pytest.mark.parametrize(
    ("labels", "bins", "message"),
    [
        (np.array([], dtype=int), 15, "needs at least one image"),
        (np.array([0]), 0, "bins must be at least 1, got 0"),
    ],
)
def test_nothing_to_bin_is_refused(labels: np.ndarray, bins: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        reliability_bins(labels, np.full((len(labels), 2), 0.5), bins=bins)
