"""Spearman's rho and Kendall's tau-b against hand-counted values (scipy is not a dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nas.proxies.correlation import average_ranks, kendall, spearman


def test_average_ranks_share_ties() -> None:
    assert average_ranks([10, 30, 20, 30, 5]).tolist() == [2.0, 4.5, 3.0, 4.5, 1.0]


def test_perfect_agreement_and_reversal() -> None:
    x = [0.1, 3.0, 2.0, 7.5]
    y = [1, 100, 10, 1000]  # monotone in x, not linear
    assert spearman(x, y) == pytest.approx(1.0)
    assert kendall(x, y) == pytest.approx(1.0)
    assert spearman(x, [-v for v in y]) == pytest.approx(-1.0)
    assert kendall(x, [-v for v in y]) == pytest.approx(-1.0)


def test_without_ties_against_the_textbook_formulas() -> None:
    x = [1, 2, 3, 4, 5]
    y = [2, 1, 4, 3, 5]
    # rho = 1 - 6 sum d^2 / (n (n^2 - 1)) with d = (1, 1, 1, 1, 0): 1 - 24/120.
    assert spearman(x, y) == pytest.approx(0.8)
    # Pairs: 10; discordant: (1,2) and (3,4); tau = (8 - 2) / 10.
    assert kendall(x, y) == pytest.approx(0.6)


def test_tau_b_with_ties_counted_by_hand() -> None:
    x = [1, 2, 2, 3]
    y = [1, 3, 2, 3]
    # Pairs (i<j): (0,1)+ (0,2)+ (0,3)+ (1,2) tie in x, (1,3) tie in y, (2,3)+ -> C=4, D=0,
    # n0 = 6, ties in x: 1, ties in y: 1 -> tau_b = 4 / sqrt(5 * 5).
    assert kendall(x, y) == pytest.approx(0.8)
    # rho: Pearson of ranks (1, 2.5, 2.5, 4) and (1, 3.5, 2, 3.5).
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 3.5, 2, 3.5])
    expected = np.corrcoef(rx, ry)[0, 1]
    assert spearman(x, y) == pytest.approx(expected)


def test_constant_input_gives_nan_and_bad_shapes_are_errors() -> None:
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall([1, 2, 3], [4, 4, 4]))
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        kendall([1], [1])
    with pytest.raises(ValueError, match="finite"):
        spearman([1, float("nan")], [1, 2])
