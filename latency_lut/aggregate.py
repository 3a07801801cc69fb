"""Robust aggregation of raw latency samples into table entries.

A device's entry for a key may be measured by several agent runs (reruns, several machines of one
model, a retry after a reboot). Each run contributes its median; the entry's median is the median of
the runs' medians. A run whose median lies far from the others (a machine throttling, a noisy
neighbour) is *flagged* as an outlier by its robust z-score (distance to the median in units of the
median absolute deviation, scaled to a normal's standard deviation) and left out of the entry rather
than averaged in. The entry's p10 and p90 come from the pooled samples of the runs kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Robust z-score above which a run is an outlier (Iglewicz and Hoaglin's usual cut-off).
OUTLIER_Z = 3.5
#: The spread is taken as at least this share of the median: runs that agree to a few percent are
#: never outliers, however tightly the others agree among themselves.
MIN_RELATIVE_SPREAD = 0.03
# 1.4826 * MAD estimates a normal distribution's standard deviation.
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class RunSamples:
    """The samples (ms) one agent run uploaded for one key, with that upload's provenance."""

    run_id: str
    samples_ms: Sequence[float]
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return float(np.median(np.asarray(self.samples_ms, dtype=np.float64)))


@dataclass(frozen=True)
class Aggregate:
    """An entry's statistics and which runs it kept or flagged."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    count: int
    kept_runs: list[str]
    outlier_runs: list[str]
    provenance: dict[str, Any]


def outlier_runs(medians: Mapping[str, float]) -> set[str]:
    """Runs whose median has a robust z-score above `OUTLIER_Z` among `medians` (run id -> ms).

    With fewer than three runs there is no majority to disagree with, so nothing is flagged.
    """
    if len(medians) < 3:
        return set()
    values = np.asarray(list(medians.values()), dtype=np.float64)
    center = float(np.median(values))
    mad = float(np.median(np.abs(values - center)))
    spread = max(_MAD_TO_SIGMA * mad, MIN_RELATIVE_SPREAD * abs(center), 1e-12)
    return {run for run, value in medians.items() if abs(value - center) / spread > OUTLIER_Z}


def aggregate_runs(runs: Sequence[RunSamples]) -> Aggregate:
    """The entry of one key from its runs (in upload order); see the module docstring.

    The provenance is the latest kept run's, plus `runs` (how many were kept), `run_ids` and
    `outlier_runs`.
    """
    if not runs:
        raise ValueError("cannot aggregate a key without runs")
    for run in runs:
        if len(run.samples_ms) == 0:
            raise ValueError(f"run {run.run_id!r} has no samples")
    medians = {run.run_id: run.median_ms for run in runs}
    flagged = outlier_runs(medians)
    kept = [run for run in runs if run.run_id not in flagged]
    pooled = np.concatenate([np.asarray(run.samples_ms, dtype=np.float64) for run in kept])
    p10, p90 = np.percentile(pooled, [10, 90])
    provenance = {
        **dict(kept[-1].provenance),
        "runs": len(kept),
        "run_ids": [run.run_id for run in kept],
        "outlier_runs": [run.run_id for run in runs if run.run_id in flagged],
    }
    return Aggregate(
        median_ms=float(np.median([medians[run.run_id] for run in kept])),
        p10_ms=float(p10),
        p90_ms=float(p90),
        count=int(pooled.size),
        kept_runs=[run.run_id for run in kept],
        outlier_runs=provenance["outlier_runs"],
        provenance=provenance,
    )
