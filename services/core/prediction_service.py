"""`PredictionService`: a device's latency predictors, the subnets it should measure next, and the
accuracy of its predictions.

Per (device, space, options) the service builds every candidate predictor the device's table and its
*calibration* subnets (whole subnets its farm measured end to end) allow, and selects the one with
the lowest error on held-out subnets (`latency_lut.predictors.select_predictor`): that predictor
prices searches, `/predict` and the dashboard. Blocks the table lacks are priced by the fallback
fitted on the device's own entries (marked estimated). Fitted predictors are cached and refitted when
the device's table or calibration subnets change.

*Validation* subnets (`nas lut validate`) are never fitted on: the accuracy report scores every
candidate on them (leaving out any also used for calibration) and, where the run measured each subnet
twice, reports how well the two measurements agree: the ceiling no predictor can beat.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from latency_lut import (
    LatencyEntry,
    LatencyEstimate,
    LatencyPredictor,
    MeasuredSubnet,
    TableView,
    select_predictor,
)
from latency_lut.accuracy import AccuracyReport, accuracy_report, repeatability_report
from latency_lut.fallback import FallbackModel, entry_features, fit_fallback
from latency_lut.features import BlockFeatures, block_features
from latency_lut.predictors import DEFAULT_STATISTIC, CandidateReport, Selection, sample_statistic
from latency_lut.sampling import choose_subnets
from latency_lut.timings import split_timing_key
from latency_lut.validate import sample_configs
from nas import utcnow
from search_spaces import BlockSpec, SearchSpace, config_id
from services.core.db import AccuracyPairRow
from services.core.measurement_store import MeasurementStore, options_json

_PAIRS = AccuracyPairRow.__table__
ROLES = ("validation", "calibration")
#: Points `accuracy(include_pairs=True)` returns at most (a plot needs no more).
MAX_PLOTTED_PAIRS = 5000
#: Random subnets `subnet_work` considers per subnet it proposes.
POOL_PER_SUBNET = 20


class PairConflictError(RuntimeError):
    """A run uploads different samples for a subnet it already uploaded."""

    def __init__(self, run_id: str, fields: list[str], config_ids: list[str]):
        super().__init__(
            f"run {run_id!r} already uploaded different samples for the subnets {config_ids[:5]}; a run "
            "measures each subnet once; nothing of this batch was written"
        )
        self.fields = fields
        self.config_ids = config_ids


class ClockMismatchError(ValueError):
    """Subnets timed on another clock than the device's table: their latencies are not comparable."""

    def __init__(self, message: str, table_clocks: Sequence[str]):
        super().__init__(message)
        self.table_clocks = tuple(table_clocks)


@dataclass(frozen=True)
class DevicePredictor:
    """A device's predictors for one space at its options: the selected one and every candidate."""

    device: str
    space: SearchSpace
    table: TableView
    fallback: FallbackModel
    selection: Selection

    @property
    def predictor(self) -> LatencyPredictor:
        """The predictor searches price with."""
        return self.selection.predictor

    def named(self, name: str) -> LatencyPredictor:
        """A candidate by name (`best` is the selected one); `ValueError` naming the candidates."""
        if name == "best":
            return self.predictor
        if name not in self.selection.predictors:
            raise ValueError(
                f"predictor {name!r} is not available for device {self.device!r} and space "
                f"{self.space.name!r}; available: {['best', *self.selection.predictors]}"
            )
        return self.selection.predictors[name]

    def predict(self, config: Mapping[str, Any] | str, *, predictor: str = "best") -> LatencyEstimate:
        blocks = self.space.blocks(self.space.canonicalize(config))
        return self.named(predictor).predict(blocks)

    def describe(self) -> dict[str, Any]:
        """The selected predictor and how every candidate did on the calibration subnets."""
        return {
            **self.predictor.describe(),
            "candidates": [_candidate_dict(r) for r in self.selection.candidates],
        }


@dataclass(frozen=True)
class PairIn:
    """One subnet measured end to end, as an agent uploads it (`repeat_samples_ms`: measured again)."""

    config: Mapping[str, Any]
    samples_ms: Sequence[float]
    repeat_samples_ms: Sequence[float] | None = None


@dataclass(frozen=True)
class StoredPair:
    config_id: str
    n_blocks: int
    predicted_ms: float | None
    measured_ms: float
    estimated: bool
    duplicate: bool


@dataclass(frozen=True)
class SubnetWork:
    """A whole subnet a device should measure end to end, and why it was chosen."""

    config: dict[str, Any]
    config_id: str
    reason: str


@dataclass
class AccuracyResult:
    """Every candidate's report on held-out subnets, the selected one's name, the ceiling and details."""

    selected: str | None
    statistic: str
    reports: dict[str, AccuracyReport]
    ceiling: AccuracyReport | None
    details: dict[str, Any] = field(default_factory=dict)


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
        "predictor": estimate.predictor,
        "statistic": estimate.statistic,
        "expected_error": estimate.expected_error,
    }


def _candidate_dict(report: CandidateReport) -> dict[str, Any]:
    return {
        "name": report.name,
        "n": len(report.errors),
        "rmspe": report.rmspe,
        "fitted_on": report.fitted_on,
    }


class PredictionService:
    """Predictors and accuracy of devices on one database; see the module docstring."""

    def __init__(self, store: MeasurementStore, *, statistic: str = DEFAULT_STATISTIC):
        self.store = store
        self.engine = store.engine
        self.statistic = statistic
        self._cache: dict[tuple[str, str, str], tuple[Any, DevicePredictor]] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- prediction
    def predictor(self, device: str, space: SearchSpace) -> DevicePredictor:
        """The device's predictors for `space` at its options (fitted once per table version)."""
        self.store.device(device)
        cache_key = (device, space.name, options_json(space))
        version = self._version(device, space)
        with self._lock:
            cached = self._cache.get(cache_key)
        if cached is not None and cached[0] == version:
            return cached[1]
        entries = self.store.lut.entries(device)
        kinds = {spec.kind for spec in space.all_blocks()}
        own = [e for e in entries if (e.kind or split_timing_key(e.key)[1].split("|", 1)[0]) in kinds]
        fallback = fit_fallback(
            device, own, lambda entry: self._features(space, entry), statistic=self.statistic
        )
        table = TableView.from_entries(device, entries, self.statistic)  # type: ignore[arg-type]
        subnets = [
            MeasuredSubnet(space.blocks(space.canonicalize(p["config"])), self._measured(p["samples_ms"]))
            for p in self._pairs(device, space, role="calibration")
        ]
        selection = select_predictor(table, subnets, fallback=fallback, space=space)
        predictor = DevicePredictor(device, space, table, fallback, selection)
        with self._lock:
            self._cache[cache_key] = (version, predictor)
        return predictor

    def _measured(self, samples: Sequence[float]) -> float:
        return sample_statistic(samples, self.statistic)  # type: ignore[arg-type]

    @staticmethod
    def _features(space: SearchSpace, entry: LatencyEntry) -> BlockFeatures | None:
        stored = entry_features(entry)
        if stored is not None:
            return stored
        try:
            return block_features(space, BlockSpec.from_key(split_timing_key(entry.key)[1]))
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

    # ----------------------------------------------------------------- subnets to measure
    def subnet_work(self, device: str, space: SearchSpace, n: int, *, seed: int = 0) -> list[SubnetWork]:
        """`n` whole subnets the device should measure end to end next (as calibration subnets),
        chosen among random subnets it has not measured yet (`POOL_PER_SUBNET` per wanted one) by
        `latency_lut.sampling.choose_subnets`: where its learned predictors disagree most, or spread
        over the space before it has any."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
            raise ValueError(f"the number of subnets must be an integer in [1, 1000], got {n!r}")
        measured = {p["config_id"] for p in self._pairs(device, space, role=None)}
        pool = sample_configs(space, POOL_PER_SUBNET * n, seed=seed, exclude=measured)
        chosen = choose_subnets(space, pool, n, self.predictor(device, space).selection.predictors)
        return [SubnetWork(pool[i], config_id(pool[i]), reason) for i, reason in chosen]

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
        nothing). A run timed on another clock than the device's table is refused
        (`ClockMismatchError`): its latencies would not be comparable. Each pair stores the
        prediction the device's selected predictor makes now.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {list(ROLES)}, got {role!r}")
        predictor = self.predictor(device, space)
        self._check_clock(device, predictor.table, provenance)
        prepared = []
        for pair in pairs:
            canonical = space.canonicalize(pair.config)
            repeat = None if pair.repeat_samples_ms is None else [float(v) for v in pair.repeat_samples_ms]
            prepared.append((canonical, config_id(canonical), [float(v) for v in pair.samples_ms], repeat))
        rows, stored = [], []
        with self.store.transaction(device) as conn:
            existing = {
                r["config_id"]: [float(v) for v in r["samples_ms"]]
                for r in conn.execute(
                    sa.select(_PAIRS.c.config_id, _PAIRS.c.samples_ms).where(
                        _PAIRS.c.device == device,
                        _PAIRS.c.run_id == run_id,
                        _PAIRS.c.config_id.in_([cid for _, cid, _, _ in prepared]),
                    )
                ).mappings()
            }
            conflicts = [
                (i, cid)
                for i, (_, cid, samples, _) in enumerate(prepared)
                if existing.get(cid, samples) != samples
            ]
            if conflicts:
                raise PairConflictError(
                    run_id, [f"pairs[{i}]" for i, _ in conflicts], [c for _, c in conflicts]
                )
            seen: set[str] = set()
            for canonical, cid, samples, repeat in prepared:
                blocks = space.blocks(canonical)
                estimate = predictor.predictor.predict(blocks)
                plain = predictor.named("block_sum").predict(blocks)
                measured = self._measured(samples)
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
                        "params": sum(spec.params for spec in blocks),
                        "block_sum_ms": plain.total_ms if plain.complete else None,
                        "predicted_ms": predicted,
                        "measured_ms": measured,
                        "samples_ms": samples,
                        "repeat_samples_ms": repeat,
                        "prediction": estimate_dict(estimate),
                        "provenance": dict(provenance),
                        "created_at": utcnow(),
                    }
                )
            if rows:
                conn.execute(_PAIRS.insert(), rows)
        return stored

    @staticmethod
    def _check_clock(device: str, table: TableView, provenance: Mapping[str, Any]) -> None:
        clock = provenance.get("clock")
        if isinstance(clock, str) and table.clocks and clock not in table.clocks:
            raise ClockMismatchError(
                f"these subnets were timed on the {clock!r} clock but the table of device {device!r} was "
                f"measured on {list(table.clocks)}: latencies on different clocks are not comparable; "
                f"measure again with --clock {table.clocks[0]}",
                table.clocks,
            )

    def _pairs(self, device: str, space: SearchSpace | None, *, role: str | None) -> list[dict[str, Any]]:
        query = sa.select(_PAIRS).where(_PAIRS.c.device == device)
        if role is not None:
            query = query.where(_PAIRS.c.role == role)
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
    ) -> AccuracyResult:
        """Every candidate predictor scored on the device's held-out validation subnets (optionally
        of one space or run), the repeatability ceiling of the subnets measured twice, and details:
        pairs left out as calibration subnets or unpriced, runs and spaces covered, and with
        `include_pairs` the selected predictor's (predicted, measured) points (the newest
        `MAX_PLOTTED_PAIRS`)."""
        from search_spaces import get_space

        self.store.device(device)
        rows = [r for r in self._pairs(device, None, role=None) if space is None or r["space"] == space]
        calibration_ids = {(r["space"], r["config_id"]) for r in rows if r["role"] == "calibration"}
        validation = [
            r for r in rows if r["role"] == "validation" and (run_id is None or r["run_id"] == run_id)
        ]
        held_out = [r for r in validation if (r["space"], r["config_id"]) not in calibration_ids]
        points: dict[str, list[tuple[float, float]]] = {}
        plotted: list[dict[str, Any]] = []
        selected: set[str] = set()
        unpriced = estimated = 0
        by_setting: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in held_out:
            by_setting.setdefault((r["space"], repr(sorted(r["space_options"].items()))), []).append(r)
        for group in by_setting.values():
            instance = get_space(group[0]["space"], **group[0]["space_options"])
            predictors = self.predictor(device, instance)
            selected.add(predictors.predictor.label)
            for r in group:
                blocks = instance.blocks(instance.canonicalize(r["config"]))
                measured = self._measured(r["samples_ms"])
                best = predictors.predictor.predict(blocks)
                if not best.complete:
                    unpriced += 1
                    continue
                estimated += int(best.estimated)
                for name, candidate in predictors.selection.predictors.items():
                    estimate = best if candidate is predictors.predictor else candidate.predict(blocks)
                    if estimate.complete:
                        points.setdefault(name, []).append((estimate.total_ms, measured))
                plotted.append(
                    {
                        "space": r["space"],
                        "run_id": r["run_id"],
                        "config_id": r["config_id"],
                        "predicted_ms": best.total_ms,
                        "measured_ms": measured,
                        "estimated": best.estimated,
                    }
                )
        repeats = [
            (self._measured(r["repeat_samples_ms"]), self._measured(r["samples_ms"]))
            for r in held_out
            if r.get("repeat_samples_ms")
        ]
        runs: dict[str, dict[str, Any]] = {}
        for r in held_out:
            run = runs.setdefault(r["run_id"], {"run_id": r["run_id"], "space": r["space"], "n": 0})
            run["n"] += 1
            run["created_at"] = r["created_at"].isoformat()
        details: dict[str, Any] = {
            "excluded_calibration": len(validation) - len(held_out),
            "unpriced": unpriced,
            "estimated": estimated,
            "spaces": sorted({r["space"] for r in held_out}),
            "runs": list(runs.values()),
        }
        if include_pairs:
            details["pairs"] = plotted[-MAX_PLOTTED_PAIRS:]
        return AccuracyResult(
            selected=", ".join(sorted(selected)) if selected else None,
            statistic=self.statistic,
            reports={name: accuracy_report(pairs) for name, pairs in points.items()},
            ceiling=repeatability_report(repeats) if repeats else None,
            details=details,
        )
