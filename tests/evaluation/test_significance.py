"""pipeline/evaluation/significance.py: McNemar's exact test on constructed predictions, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from pipeline.evaluation.significance import _macro_f1, bootstrap_intervals, mcnemar_exact, pack_right, unpack_right


def _paired(both: int, only_first: int, only_second: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    first = np.array([True] * both + [True] * only_first + [False] * only_second + [False] * neither)
    second = np.array([True] * both + [False] * only_first + [True] * only_second + [False] * neither)
    return first, second


def test_a_one_image_gain_on_7000_images_is_not_significant() -> None:
    first, second = _paired(6500, 1, 0, 499)
    result = mcnemar_exact(first, second)
    assert (result.only_first, result.only_second, result.p_value) == (1, 0, 1.0)


def test_200_against_140_discordant_images_is_significant() -> None:
    result = mcnemar_exact(*_paired(6000, 200, 140, 660))
    assert (result.only_first, result.only_second) == (200, 140)
    # The exact two-sided binomial p-value of 140 or fewer of 340 at one half (about 0.0014).
    assert result.p_value == pytest.approx(2 * stats.binom.cdf(140, 340, 0.5))
    assert 0.001 < result.p_value < 0.002


def test_no_discordant_image_means_no_evidence_and_other_lengths_are_refused() -> None:
    assert mcnemar_exact(*_paired(10, 0, 0, 5)).p_value == 1.0
    with pytest.raises(ValueError, match=r"needs both models on the same images. Received: \(3,\) and \(2,\)"):
        mcnemar_exact(np.ones(3, bool), np.ones(2, bool))


def test_the_vectorised_macro_f1_is_scikit_learns() -> None:
    generator = np.random.default_rng(3)
    labels, predictions = generator.integers(0, 4, size=(5, 50)), generator.integers(0, 4, size=(5, 50))
    predictions[0] = labels[0]
    expected = [
        f1_score(y, p, labels=range(4), average="macro", zero_division=0)
        for y, p in zip(labels, predictions, strict=True)
    ]
    np.testing.assert_allclose(_macro_f1(labels, predictions, classes=4), expected, rtol=0, atol=1e-12)


def test_bootstrap_intervals_are_seeded_and_cover_the_score() -> None:
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 10, size=7000)
    predictions = np.where(generator.random(7000) < 0.93, labels, (labels + 1) % 10)
    intervals = bootstrap_intervals(labels, predictions, classes=10)
    accuracy = float(np.mean(labels == predictions))
    low, high = intervals["accuracy"]
    assert low < accuracy < high
    # The normal approximation of a proportion's 95% interval: about +-1.96 sqrt(p (1 - p) / n).
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(accuracy * (1 - accuracy) / 7000), rel=0.15)
    assert intervals["macro_f1"][0] < f1_score(labels, predictions, average="macro") < intervals["macro_f1"][1]
    assert bootstrap_intervals(labels, predictions, classes=10) == intervals
    assert bootstrap_intervals(labels, predictions, classes=10, seed=1) != intervals
    # Its cost (well under a second on 7,000 images) is measured by bench/bootstrap.py, not timed here.


def test_which_images_are_right_packs_to_hex_and_back() -> None:
    right = np.array([True, False, True, True, False, False, False, True, True, True])
    packed = pack_right(right)
    assert packed == "b1c0"  # 10110001 11000000
    np.testing.assert_array_equal(unpack_right(packed, 10), right)
    with pytest.raises(ValueError, match="the packed answers hold 16 bits, fewer than the 17 images"):
        unpack_right(packed, 17)
