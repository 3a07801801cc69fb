"""How well a device's table predicts whole subnets: RMSE, RMSPE and the shares within +-5/10/15%.

These are the measures nn-Meter reports for its predictors; a pair is (predicted, measured) latency
of one subnet in ms, measured end to end on the device with the backend that filled its table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BANDS = (0.05, 0.10, 0.15)


@dataclass(frozen=True)
class AccuracyReport:
    """`rmspe` and `mean_error` are fractions (0.05 = 5%); `within_*` are shares of the pairs."""

    n: int
    rmse_ms: float | None
    rmspe: float | None
    mean_error: float | None
    within_5: float | None
    within_10: float | None
    within_15: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy_report(pairs: Iterable[tuple[float, float]]) -> AccuracyReport:
    """The report of (predicted ms, measured ms) pairs; all figures are None without pairs.

    Raises `ValueError` for a measured time that is not positive (no relative error exists).
    """
    data = np.asarray(list(pairs), dtype=np.float64).reshape(-1, 2)
    if data.size == 0:
        return AccuracyReport(0, None, None, None, None, None, None)
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
    )
