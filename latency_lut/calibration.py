"""Subnet calibration: what a sum of isolated block timings misses when the blocks run together.

A block timed alone runs again and again on the same weights, so they stay in the CPU's caches; in a
whole network every block finds its weights evicted by the blocks before it. Each block call of a
runtime also carries a fixed overhead (ONNX Runtime's `session.run`, PyTorch's dispatch) that a
whole network pays once, not once per block. Both are properties of the device and runtime, not of
one block, so they are fitted per device (and space) on whole subnets measured end to end:

    measured ~ scale * (sum of the blocks' entries) + per_block_ms * (number of blocks) + constant_ms

by least squares on the relative error. With fewer than `MIN_FULL_POINTS` subnets only `scale` is
fitted. The calibration reports its leave-one-out relative RMS error next to that of the raw sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latency_lut._lstsq import relative_lstsq, rms

#: Subnets needed to fit all three terms (fewer fit the scale alone).
MIN_FULL_POINTS = 6
#: Subnets needed for any calibration.
MIN_POINTS = 2


@dataclass(frozen=True)
class CalibrationPoint:
    """One whole subnet: the sum of its blocks' entries, its number of blocks, its measured time."""

    block_sum_ms: float
    n_blocks: int
    measured_ms: float


@dataclass(frozen=True)
class SubnetCalibration:
    """`predicted = scale * block_sum + per_block_ms * n_blocks + constant_ms`, fitted on `n` subnets."""

    scale: float
    per_block_ms: float
    constant_ms: float
    n: int
    rmspe: float
    raw_rmspe: float

    def apply(self, block_sum_ms: float, n_blocks: int) -> float:
        value = self.scale * block_sum_ms + self.per_block_ms * n_blocks + self.constant_ms
        # A calibration extrapolated far below its subnets must not predict a non-positive time.
        return value if value > 0 else self.scale * block_sum_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "per_block_ms": self.per_block_ms,
            "constant_ms": self.constant_ms,
            "n": self.n,
            "rmspe": self.rmspe,
            "raw_rmspe": self.raw_rmspe,
        }


def fit_calibration(points: Sequence[CalibrationPoint]) -> SubnetCalibration | None:
    """The calibration of one device and space from its measured subnets (None with too few)."""
    usable = [p for p in points if p.measured_ms > 0 and p.block_sum_ms > 0 and p.n_blocks > 0]
    if len(usable) < MIN_POINTS:
        return None
    sums = np.array([p.block_sum_ms for p in usable])
    counts = np.array([float(p.n_blocks) for p in usable])
    measured = np.array([p.measured_ms for p in usable])
    raw_rmspe = rms((sums - measured) / measured)
    if len(usable) >= MIN_FULL_POINTS:
        x = np.column_stack([sums, counts, np.ones_like(sums)])
        coef, loo = relative_lstsq(x, measured, nonnegative=np.array([True, False, False]))
        scale, per_block, constant = (float(c) for c in coef)
    else:
        coef, loo = relative_lstsq(sums[:, None], measured, nonnegative=np.array([True]))
        scale, per_block, constant = float(coef[0]), 0.0, 0.0
    return SubnetCalibration(
        scale=scale,
        per_block_ms=per_block,
        constant_ms=constant,
        n=len(usable),
        rmspe=rms(loo),
        raw_rmspe=raw_rmspe,
    )
