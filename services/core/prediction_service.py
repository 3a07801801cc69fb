"""`PredictionService`: a device's latency predictions and their measured accuracy.

Predictions sum a device's table entries, estimate the keys it lacks with the fallback fitted on its
own entries, and apply its subnet calibration for the space (fitted on the subnets its farm measured
end to end with role `calibration`). Fitted models are cached per (device, space, options) and
refitted when the device's table or calibration subnets change.

Accuracy pairs (role `validation`) store, per whole subnet, the prediction made when it was uploaded
and the measured latency. The report leaves out subnets also used for calibration, so every figure is
measured on held-out subnets.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from latency_lut import LatencyEntry, LatencyEstimate, predict
from latency_lut.accuracy import AccuracyReport, accuracy_report
from latency_lut.calibration import CalibrationPoint, SubnetCalibration, fit_calibration
from latency_lut.fallback import FallbackModel, entry_features, fit_fallback
from latency_lut.features import BlockFeatures, block_features
from nas import utcnow
from search_spaces import BlockSpec, SearchSpace, config_id
from services.core.db import AccuracyPairRow
from services.core.measurement_store import MeasurementStore, options_json

_PAIRS = AccuracyPairRow.__table__
ROLES = ("validation", "calibration")


#: Points `accuracy(include_pairs=True)` returns at most (a plot needs no more).
MAX_PLOTTED_PAIRS = 5000


class PairConflictError(RuntimeError):
    """A run uploads different samples for a subnet it already uploaded."""

    def __init__(self, run_id: str, fields: list[str], config_ids: list[str]):
        super().__init__(
            f"run {run_id!r} already uploaded different samples for the subnets {config_ids[:5]}; a run "
            "measures each subnet once; nothing of this batch was written"
        )
        self.fields = fields
        self.config_ids = config_ids


@dataclass(frozen=True)
class DevicePredictor:
    """A device's table snapshot for one space, with its fallback and subnet calibration."""

    device: str
    space: SearchSpace
    medians: dict[str, float]
    fallback: FallbackModel
    calibration: SubnetCalibration | None

    def predict(self, config: Mapping[str, Any] | str, *, calibrate: bool = True) -> LatencyEstimate:
        blocks = self.space.blocks(self.space.canonicalize(config))
        return predict(
            self.medians,
            self.device,
            blocks,
            fallback=self.fallback,
            space=self.space,
            calibration=self.calibration if calibrate else None,
        )


@dataclass(frozen=True)
class PairIn:
    """One subnet measured end to end, as an agent uploads it."""

    config: Mapping[str, Any]
    samples_ms: Sequence[float]


@dataclass(frozen=True)
class StoredPair:
    config_id: str
    n_blocks: int
    predicted_ms: float | None
    measured_ms: float
    estimated: bool
    duplicate: bool


def estimate_dict(estimate: LatencyEstimate) -> dict[str, Any]:
    return {
        "total_ms": estimate.total_ms,
        "table_ms": estimate.table_ms,
        "covered_share": estimate.covered_share,
        "n_blocks": estimate.n_blocks,
        "complete": estimate.complete,
        "estimated": estimate.estimated,
        "estimated_keys": list(estimate.estimated_keys),
        "estimated_ms": estimate.estimated_ms,
        "estimated_error_ms": estimate.estimated_error_ms,
        "missing_keys": list(estimate.missing_keys),
        "calibrated": estimate.calibrated,
    }


class PredictionService:
    """Predictions and accuracy of devices on one database; see the module docstring."""

    def __init__(self, store: MeasurementStore):
        self.store = store
        self.engine = store.engine
        self._cache: dict[tuple[str, str, str], tuple[Any, DevicePredictor]] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- prediction
    def predictor(self, device: str, space: SearchSpace) -> DevicePredictor:
        """The device's predictor for `space` at its options (fitted once per table version)."""
        self.store.device(device)
        cache_key = (device, space.name, options_json(space))
        version = self._version(device, space)
        with self._lock:
            cached = self._cache.get(cache_key)
        if cached is not None and cached[0] == version:
            return cached[1]
        entries = self.store.lut.entries(device)
        kinds = {spec.kind for spec in space.all_blocks()}
        own = [e for e in entries if (e.kind or e.key.split("|", 1)[0]) in kinds]
        fallback = fit_fallback(device, own, lambda entry: self._features(space, entry))
        base = DevicePredictor(device, space, {e.key: e.median_ms for e in entries}, fallback, None)
        points = []
        for pair in self._pairs(device, space, role="calibration"):
            estimate = base.predict(pair["config"], calibrate=False)
            if estimate.complete:
                points.append(CalibrationPoint(estimate.total_ms, estimate.n_blocks, pair["measured_ms"]))
        predictor = DevicePredictor(device, space, base.medians, fallback, fit_calibration(points))
        with self._lock:
            self._cache[cache_key] = (version, predictor)
        return predictor

    @staticmethod
    def _features(space: SearchSpace, entry: LatencyEntry) -> BlockFeatures | None:
        stored = entry_features(entry)
        if stored is not None:
            return stored
        try:
            return block_features(space, BlockSpec.from_key(entry.key))
        except (ValueError, TypeError, KeyError):
            return None

    def _version(self, device: str, space: SearchSpace) -> tuple[Any, ...]:
        from latency_lut.sql_table import lut_entries

        with self.engine.connect() as conn:
            table = conn.execute(
                sa.select(sa.func.count(), sa.func.max(lut_entries.c.updated_at)).where(
                    lut_entries.c.device == device
                )
            ).one()
            pairs = conn.execute(
                sa.select(sa.func.count(), sa.func.max(_PAIRS.c.id)).where(
                    _PAIRS.c.device == device,
                    _PAIRS.c.space == space.name,
                    _PAIRS.c.role == "calibration",
                )
            ).one()
        return (*table, *pairs)

    # ----------------------------------------------------------------- accuracy pairs
    def add_pairs(
        self,
        device: str,
        *,
        run_id: str,
        role: str,
        space: SearchSpace,
        provenance: Mapping[str, Any],
        pairs: Sequence[PairIn],
    ) -> list[StoredPair]:
        """Predict and store subnets measured end to end by one run; idempotent per (run, subnet).

        Configs are canonicalized first (a bad one raises `ConfigError` naming it and writes
        nothing). Validation subnets are predicted with the device's current table, fallback and
        calibration; calibration subnets store their uncalibrated block sum for the next fit.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {list(ROLES)}, got {role!r}")
        predictor = self.predictor(device, space)
        prepared = []
        for pair in pairs:
            canonical = space.canonicalize(pair.config)
            prepared.append((canonical, config_id(canonical), [float(v) for v in pair.samples_ms]))
        rows, stored = [], []
        with self.store.transaction(device) as conn:
            existing = {
                r["config_id"]: [float(v) for v in r["samples_ms"]]
                for r in conn.execute(
                    sa.select(_PAIRS.c.config_id, _PAIRS.c.samples_ms).where(
                        _PAIRS.c.device == device,
                        _PAIRS.c.run_id == run_id,
                        _PAIRS.c.config_id.in_([cid for _, cid, _ in prepared]),
                    )
                ).mappings()
            }
            conflicts = [
                (i, cid)
                for i, (_, cid, samples) in enumerate(prepared)
                if existing.get(cid, samples) != samples
            ]
            if conflicts:
                raise PairConflictError(
                    run_id, [f"pairs[{i}]" for i, _ in conflicts], [c for _, c in conflicts]
                )
            seen: set[str] = set()
            for canonical, cid, samples in prepared:
                estimate = predictor.predict(canonical, calibrate=role == "validation")
                uncalibrated = predictor.predict(canonical, calibrate=False)
                measured = float(np.median(samples))
                predicted = estimate.total_ms if estimate.complete else None
                duplicate = cid in existing or cid in seen
                stored.append(
                    StoredPair(cid, estimate.n_blocks, predicted, measured, estimate.estimated, duplicate)
                )
                if duplicate:
                    continue
                seen.add(cid)
                rows.append(
                    {
                        "device": device,
                        "run_id": run_id,
                        "role": role,
                        "space": space.name,
                        "space_options": dict(space.options),
                        "config": canonical,
                        "config_id": cid,
                        "n_blocks": estimate.n_blocks,
                        "params": sum(spec.params for spec in space.blocks(canonical)),
                        "block_sum_ms": uncalibrated.total_ms if uncalibrated.complete else None,
                        "predicted_ms": predicted,
                        "measured_ms": measured,
                        "samples_ms": samples,
                        "prediction": estimate_dict(estimate),
                        "provenance": dict(provenance),
                        "created_at": utcnow(),
                    }
                )
            if rows:
                conn.execute(_PAIRS.insert(), rows)
        return stored

    def _pairs(self, device: str, space: SearchSpace | None, *, role: str) -> list[dict[str, Any]]:
        query = sa.select(_PAIRS).where(_PAIRS.c.device == device, _PAIRS.c.role == role)
        if space is not None:
            query = query.where(_PAIRS.c.space == space.name)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query.order_by(_PAIRS.c.id)).mappings()]
        if space is None:
            return rows
        wanted = dict(space.options)
        return [r for r in rows if r["space_options"] == wanted]

    def accuracy(
        self,
        device: str,
        *,
        space: str | None = None,
        run_id: str | None = None,
        include_pairs: bool = False,
    ) -> tuple[AccuracyReport, dict[str, Any]]:
        """The report over the device's held-out validation pairs (optionally of one space or run),
        and details: pairs left out as calibration subnets or unpriced, runs and spaces covered, and
        with `include_pairs` the (predicted, measured) points themselves (at most `MAX_PLOTTED_PAIRS`,
        the newest)."""
        self.store.device(device)
        query = sa.select(_PAIRS).where(_PAIRS.c.device == device)
        if space is not None:
            query = query.where(_PAIRS.c.space == space)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query.order_by(_PAIRS.c.id)).mappings()]
        calibration_ids = {(r["space"], r["config_id"]) for r in rows if r["role"] == "calibration"}
        validation = [
            r for r in rows if r["role"] == "validation" and (run_id is None or r["run_id"] == run_id)
        ]
        held_out = [r for r in validation if (r["space"], r["config_id"]) not in calibration_ids]
        priced = [r for r in held_out if r["predicted_ms"] is not None]
        report = accuracy_report((r["predicted_ms"], r["measured_ms"]) for r in priced)
        runs: dict[str, dict[str, Any]] = {}
        for r in priced:
            run = runs.setdefault(r["run_id"], {"run_id": r["run_id"], "space": r["space"], "n": 0})
            run["n"] += 1
            run["created_at"] = r["created_at"].isoformat()
        details = {
            "excluded_calibration": len(validation) - len(held_out),
            "unpriced": len(held_out) - len(priced),
            "estimated": sum(1 for r in priced if r["prediction"].get("estimated")),
            "calibrated": sum(1 for r in priced if r["prediction"].get("calibrated")),
            "spaces": sorted({r["space"] for r in priced}),
            "runs": list(runs.values()),
        }
        if include_pairs:
            details["pairs"] = [
                {
                    "space": r["space"],
                    "run_id": r["run_id"],
                    "config_id": r["config_id"],
                    "predicted_ms": r["predicted_ms"],
                    "measured_ms": r["measured_ms"],
                    "estimated": bool(r["prediction"].get("estimated")),
                }
                for r in priced[-MAX_PLOTTED_PAIRS:]
            ]
        return report, details
