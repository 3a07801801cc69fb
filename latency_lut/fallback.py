"""The fallback for keys a device's table lacks: a linear model per block kind, fitted on the
device's own entries.

For each kind with enough entries, latency (ms) is fitted as `c0 + c1 * MACs + c2 * params + c3 *
bytes moved` by least squares on the relative error, coefficients kept >= 0 (a block never gets
faster for doing more). Kinds with too few entries use one model pooled over all of the device's
entries. Every fit reports its leave-one-out relative RMS error, and every estimate made with it
carries that error: estimates are always marked as such (see `predict`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latency_lut._lstsq import relative_lstsq, rms
from latency_lut._table import LatencyEntry
from latency_lut.features import BlockFeatures
from latency_lut.timings import split_timing_key

FEATURE_NAMES = ("macs", "params", "bytes_moved")
#: Entries a kind needs for a fit of its own (the model has four coefficients).
MIN_KIND_ENTRIES = 6
#: Entries a device needs for the pooled fit.
MIN_POOLED_ENTRIES = 4
#: Scope of the fit over all kinds.
POOLED = "*"

FeaturesOf = Callable[[LatencyEntry], BlockFeatures | None]


@dataclass(frozen=True)
class LinearFit:
    """`ms = intercept + per_mac * MACs + per_param * params + per_byte * bytes`, fitted on `n`
    entries of `scope` (a kind, or `*` for all kinds) with leave-one-out relative RMS error `rmspe`."""

    scope: str
    intercept_ms: float
    per_mac_ms: float
    per_param_ms: float
    per_byte_ms: float
    n: int
    rmspe: float

    def predict(self, features: BlockFeatures) -> float:
        macs, params, moved = features.as_row()
        value = self.intercept_ms + self.per_mac_ms * macs + self.per_param_ms * params
        return max(value + self.per_byte_ms * moved, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "intercept_ms": self.intercept_ms,
            "per_mac_ms": self.per_mac_ms,
            "per_param_ms": self.per_param_ms,
            "per_byte_ms": self.per_byte_ms,
            "n": self.n,
            "rmspe": self.rmspe,
        }


def fit_linear(scope: str, features: list[BlockFeatures], medians_ms: list[float]) -> LinearFit:
    """The fit of one scope; needs at least two entries with positive medians."""
    y = np.asarray(medians_ms, dtype=np.float64)
    if len(features) != len(y) or len(y) < 2:
        raise ValueError(f"a fit needs at least 2 entries with features, got {len(y)}")
    x = np.column_stack([np.ones(len(y)), np.asarray([f.as_row() for f in features], dtype=np.float64)])
    coef, loo = relative_lstsq(x, y, nonnegative=np.array([True, True, True, True]))
    return LinearFit(scope, *(float(c) for c in coef), n=len(y), rmspe=rms(loo))


@dataclass(frozen=True)
class FallbackModel:
    """Per-kind fits of one device, and the pooled fit for kinds without one."""

    device: str
    fits: dict[str, LinearFit] = field(default_factory=dict)
    pooled: LinearFit | None = None

    def fit_for(self, kind: str) -> LinearFit | None:
        """The kind's own fit, else the pooled one, else None (the device has too few entries)."""
        return self.fits.get(kind, self.pooled)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "fits": {kind: fit.to_dict() for kind, fit in sorted(self.fits.items())},
            "pooled": None if self.pooled is None else self.pooled.to_dict(),
        }


def entry_features(entry: LatencyEntry) -> BlockFeatures | None:
    """Features stored in an entry's provenance (`features`, as the farm agent uploads them)."""
    stored = entry.provenance.get("features")
    if not isinstance(stored, Mapping) or not all(name in stored for name in FEATURE_NAMES):
        return None
    try:
        return BlockFeatures(*(int(stored[name]) for name in FEATURE_NAMES))
    except (TypeError, ValueError):
        return None


def fit_fallback(
    device: str, entries: Iterable[LatencyEntry], features_of: FeaturesOf, *, statistic: str = "median"
) -> FallbackModel:
    """Fit the fallback of `device` on its isolated `entries` (entries of other devices, and
    in-context and call-overhead entries, are ignored), on their `statistic` (`median` or `p10`).

    `features_of(entry)` gives an entry's features, or None to leave the entry out (a key the
    caller's space cannot build). Entries with a zero value cannot enter a relative fit and are left
    out too.
    """
    by_kind: dict[str, tuple[list[BlockFeatures], list[float]]] = {}
    for entry in entries:
        value = entry.p10_ms if statistic == "p10" else entry.median_ms
        if entry.device != device or value <= 0 or split_timing_key(entry.key)[0] != "isolated":
            continue
        features = features_of(entry)
        if features is None:
            continue
        kind = entry.kind or entry.key.split("|", 1)[0]
        feats, medians = by_kind.setdefault(kind, ([], []))
        feats.append(features)
        medians.append(value)
    fits = {
        kind: fit_linear(kind, feats, medians)
        for kind, (feats, medians) in by_kind.items()
        if len(medians) >= MIN_KIND_ENTRIES
    }
    all_feats = [f for feats, _ in by_kind.values() for f in feats]
    all_medians = [m for _, medians in by_kind.values() for m in medians]
    pooled = fit_linear(POOLED, all_feats, all_medians) if len(all_medians) >= MIN_POOLED_ENTRIES else None
    return FallbackModel(device=device, fits=fits, pooled=pooled)
