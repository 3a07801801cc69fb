"""How well latency predictions match whole subnets measured end to end, and how well two
measurements of the same subnets match each other (the ceiling no predictor can beat).

The measures are nn-Meter's (RMSE, RMSPE, the shares within +-5/10/15%) plus Spearman's rank
correlation, which is what a search needs of a latency (the order of subnets). A pair is (predicted,
measured) latency of one subnet in ms, measured with the backend that filled the device's table. The
sign convention everywhere: error = (predicted - measured) / measured, so a positive mean error means
the predictions are too high.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BANDS = (0.05, 0.10, 0.15)


@dataclass(frozen=True)
class AccuracyReport:
    """`rmspe` and `mean_error` are fractions (0.05 = 5%); `within_*` are shares of the pairs;
    `spearman` is the rank correlation of predicted and measured latencies."""

    n: int
    rmse_ms: float | None
    rmspe: float | None
    mean_error: float | None
    within_5: float | None
    within_10: float | None
    within_15: float | None
    spearman: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy_report(pairs: Iterable[tuple[float, float]]) -> AccuracyReport:
    """The report of (predicted ms, measured ms) pairs; all figures are None without pairs.

    Raises `ValueError` for a measured time that is not positive (no relative error exists).
    """
    data = np.asarray(list(pairs), dtype=np.float64).reshape(-1, 2)
    if data.size == 0:
        return AccuracyReport(0, None, None, None, None, None, None, None)
    predicted, measured = data[:, 0], data[:, 1]
    if np.any(measured <= 0) or not np.all(np.isfinite(data)):
        raise ValueError("accuracy needs finite predictions and positive measured latencies")
    relative = (predicted - measured) / measured
    shares = [float(np.mean(np.abs(relative) <= band + 1e-12)) for band in BANDS]
    return AccuracyReport(
        n=len(measured),
        rmse_ms=float(np.sqrt(np.mean((predicted - measured) ** 2))),
        rmspe=float(np.sqrt(np.mean(relative**2))),
        mean_error=float(np.mean(relative)),
        within_5=shares[0],
        within_10=shares[1],
        within_15=shares[2],
        spearman=spearman(predicted, measured),
    )


def repeatability_report(pairs: Iterable[tuple[float, float]]) -> AccuracyReport:
    """The same figures for (second measurement, first measurement) of the same subnets: how well the
    measurement agrees with itself, i.e. the best any predictor judged by one measurement can do."""
    return accuracy_report(pairs)


def spearman(a: Iterable[float], b: Iterable[float]) -> float | None:
    """Spearman's rank correlation (None for fewer than 3 points or a constant side)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(list(a), dtype=np.float64), np.asarray(list(b), dtype=np.float64)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(spearmanr(x, y).statistic)
