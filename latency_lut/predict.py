"""Latency prediction: a subnet's latency as the sum of its blocks' table entries.

Optionally, keys the table lacks are estimated by the device's fitted fallback (`fallback.py`) and
marked as estimated with their fitted error, and the sum is corrected by the device's subnet
calibration (`calibration.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from latency_lut._table import LatencyTable
from latency_lut.calibration import SubnetCalibration
from latency_lut.fallback import FallbackModel
from latency_lut.features import block_features
from search_spaces import BlockSpec, SearchSpace


@dataclass(frozen=True)
class LatencyEstimate:
    """Sum of the covered blocks' medians (ms), the share of blocks covered, and the missing keys.

    `total_ms` is a complete prediction only when `missing_keys` is empty; otherwise it is a lower
    bound. Blocks the table lacks but the fallback could price are in `estimated_keys`: their
    `estimated_ms` is part of `total_ms`, with a one-sigma error of `estimated_error_ms` (the fits'
    leave-one-out errors, taken as independent). `table_ms` is the plain sum of the table's entries;
    `calibrated` says whether `total_ms` went through the device's subnet calibration.
    """

    total_ms: float
    covered_share: float
    n_blocks: int
    missing_keys: list[str] = field(default_factory=list)
    estimated_keys: list[str] = field(default_factory=list)
    estimated_ms: float = 0.0
    estimated_error_ms: float = 0.0
    table_ms: float = 0.0
    calibrated: bool = False

    @property
    def complete(self) -> bool:
        return not self.missing_keys

    @property
    def estimated(self) -> bool:
        """Whether part of the prediction comes from the fallback rather than measured entries."""
        return bool(self.estimated_keys)


def predict(
    table: LatencyTable | Mapping[str, float],
    device: str,
    blocks: Sequence[BlockSpec],
    *,
    fallback: FallbackModel | None = None,
    space: SearchSpace | None = None,
    calibration: SubnetCalibration | None = None,
) -> LatencyEstimate:
    """Predict a subnet's latency on `device` from its `blocks`.

    `table` is a `LatencyTable` or a snapshot (`key -> median ms`, as `LatencyTable.snapshot(device)`
    gives, which is what evaluator actors hold). Repeated blocks count once per occurrence.

    With `fallback` (and the `space` that builds the blocks, for their features), keys the table
    lacks are estimated by the fitted model of their kind; keys no fit covers stay missing. With
    `calibration`, a complete sum is corrected for effects between blocks.
    """
    if fallback is not None and space is None:
        raise ValueError("a fallback needs the space that builds the blocks (for their features)")
    keys = [spec.key for spec in blocks]
    if isinstance(table, LatencyTable):
        medians: Mapping[str, float] = {k: e.median_ms for k, e in table.get_many(device, set(keys)).items()}
    else:
        medians = table
    table_sum = 0.0
    covered = 0
    estimates: dict[str, tuple[float, float]] = {}
    missing: dict[str, None] = {}
    estimated_sum = 0.0
    variance = 0.0
    for spec in blocks:
        value = medians.get(spec.key)
        if value is not None:
            table_sum += value
            covered += 1
            continue
        if spec.key not in estimates and spec.key not in missing:
            fit = fallback.fit_for(spec.kind) if fallback is not None else None
            if fit is None:
                missing[spec.key] = None
            else:
                assert space is not None
                ms = fit.predict(block_features(space, spec))
                estimates[spec.key] = (ms, fit.rmspe * ms)
        if spec.key in estimates:
            ms, error = estimates[spec.key]
            estimated_sum += ms
            variance += error**2
    share = covered / len(keys) if keys else 1.0
    total = table_sum + estimated_sum
    calibrated = calibration is not None and not missing and bool(keys)
    if calibrated:
        assert calibration is not None
        total = calibration.apply(total, len(keys))
    return LatencyEstimate(
        total_ms=total,
        covered_share=share,
        n_blocks=len(keys),
        missing_keys=list(missing),
        estimated_keys=list(estimates),
        estimated_ms=estimated_sum,
        estimated_error_ms=math.sqrt(variance),
        table_ms=table_sum,
        calibrated=calibrated,
    )
