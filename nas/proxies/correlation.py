"""Rank correlations (Spearman's rho, Kendall's tau-b) in numpy, for judging proxies against truth.

Both handle ties as scipy does: rho is Pearson's r of the average ranks; tau-b counts concordant
minus discordant pairs over sqrt((n0 - n1)(n0 - n2)), n1 and n2 the pairs tied in x and in y.
A constant input gives NaN (no ranking to compare), as in scipy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _vectors(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"x and y must be 1-D and of equal length, got shapes {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a rank correlation needs at least 2 points, got {len(a)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("x and y must be finite")
    return a, b


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they occupy."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a), dtype=np.float64)
    sorted_values = a[order]
    start = 0
    while start < len(a):
        stop = start + 1
        while stop < len(a) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2
        start = stop
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation coefficient."""
    a, b = _vectors(x, y)
    ra, rb = average_ranks(a) - (len(a) + 1) / 2, average_ranks(b) - (len(b) + 1) / 2
    denominator = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denominator) if denominator > 0 else float("nan")


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (O(n^2): meant for the tens to thousands of subnets a benchmark trains)."""
    a, b = _vectors(x, y)
    upper = np.triu_indices(len(a), k=1)
    da = np.sign(a[:, None] - a[None, :])[upper]
    db = np.sign(b[:, None] - b[None, :])[upper]
    n0 = len(da)
    tied_a, tied_b = int(np.sum(da == 0)), int(np.sum(db == 0))
    denominator = np.sqrt(float(n0 - tied_a) * float(n0 - tied_b))
    return float(np.sum(da * db) / denominator) if denominator > 0 else float("nan")
