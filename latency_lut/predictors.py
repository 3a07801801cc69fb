"""Latency predictors: a subnet's blocks -> its latency on one device, with the error to expect.

Every predictor reads a device's table through one statistic of its entries (`p10` by default: on a
shared host the low percentile of a block's samples repeats better than the median, see docs/lut.md)
and predicts the same statistic of a whole subnet's samples. The predictors, by the name every
estimate and every trial records:

- `block_sum`: the sum of the blocks' isolated entries (what the tables priced with before);
- `overhead_corrected`: the isolated entries less one runtime call each (their `call_overhead`
  entries), plus one call for the whole network;
- `in_context`: the sum of in-context entries (each block timed right after its predecessor, see
  `latency_lut.timings`), isolated entries where a block has none;
- `learned:<level>`: a linear model fitted on whole subnets measured end to end. Blocks are grouped
  (`level` `global`: one group; `kind`: by block kind; `group`: by kind and resolution) and each
  group contributes the sum of its base entries (in-context where the table has them, else
  isolated), its block count and its parameters (millions), plus a constant. Coefficients are kept
  >= 0 (scikit-learn's `LinearRegression(positive=True)`) and fitted on the relative error (weights
  1/y^2). What it learns is what a sum of separately timed blocks misses inside a network: per kind
  and resolution, a scale, a per-block cost and a cost per weight that does not stay in the caches.

Blocks the table lacks are priced by the device's fallback (`latency_lut.fallback`) and marked
estimated; a block no fit covers leaves the subnet unpriced (`missing_keys`).

`select_predictor` fits and compares the candidates a device's table and measured subnets allow, by
their error on held-out subnets (cross-validated for the learned ones), and returns the best with its
expected error.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from latency_lut._table import LatencyEntry
from latency_lut.fallback import FallbackModel
from latency_lut.features import block_features
from latency_lut.timings import Timing, split_timing_key
from search_spaces import BlockSpec, SearchSpace

Statistic = Literal["median", "p10"]
STATISTICS: tuple[Statistic, ...] = ("p10", "median")
DEFAULT_STATISTIC: Statistic = "p10"
Level = Literal["global", "kind", "group"]
LEVELS: tuple[Level, ...] = ("global", "kind", "group")
#: Order in which table-only predictors are preferred when no measured subnet can tell them apart
#: (the order they ranked in `benchmarks/lut_accuracy.py` on both CPU runtimes, docs/lut.md).
TABLE_PREFERENCE = ("in_context", "block_sum", "overhead_corrected")
#: Measured subnets needed per coefficient of a learned model before it is fitted at all.
SUBNETS_PER_COEFFICIENT = 2
#: Folds of the cross-validation that estimates a learned predictor's held-out error.
FOLDS = 5


def sample_statistic(samples: Sequence[float], statistic: Statistic) -> float:
    """The statistic of latency samples (ms): their median or their 10th percentile."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples")
    return float(np.percentile(values, 10 if statistic == "p10" else 50))


@dataclass(frozen=True)
class LatencyEstimate:
    """A subnet's predicted latency (ms) and how it was made.

    `total_ms` is a complete prediction only when `missing_keys` is empty (else a lower bound).
    Blocks the table lacks but the fallback priced are in `estimated_keys` (`estimated_ms` of the
    total, one-sigma error `estimated_error_ms`). `table_ms` is the plain sum of the table's isolated
    entries (the oldest predictor, for comparison). `predictor` names what made `total_ms` and
    `expected_error` is that predictor's relative RMS error on held-out subnets of this device and
    space (None where nothing measured was there to tell).
    """

    total_ms: float
    covered_share: float
    n_blocks: int
    missing_keys: list[str] = field(default_factory=list)
    estimated_keys: list[str] = field(default_factory=list)
    estimated_ms: float = 0.0
    estimated_error_ms: float = 0.0
    table_ms: float = 0.0
    predictor: str = "block_sum"
    statistic: str = DEFAULT_STATISTIC
    expected_error: float | None = None

    @property
    def complete(self) -> bool:
        return not self.missing_keys

    @property
    def estimated(self) -> bool:
        """Whether part of the prediction comes from the fallback rather than measured entries."""
        return bool(self.estimated_keys)


@dataclass(frozen=True)
class TableView:
    """One device's entries as predictors read them: per timing, block key -> the statistic (ms)."""

    device: str
    statistic: Statistic
    isolated: dict[str, float]
    in_context: dict[str, float] = field(default_factory=dict)
    call_overhead: dict[str, float] = field(default_factory=dict)
    clocks: tuple[str, ...] = ()

    @classmethod
    def from_entries(
        cls, device: str, entries: Iterable[LatencyEntry], statistic: Statistic = DEFAULT_STATISTIC
    ) -> TableView:
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {list(STATISTICS)}, got {statistic!r}")
        by_timing: dict[str, dict[str, float]] = {"isolated": {}, "in_context": {}, "call_overhead": {}}
        clocks: set[str] = set()
        for entry in entries:
            if entry.device != device:
                continue
            timing, key = split_timing_key(entry.key)
            by_timing[timing][key] = entry.p10_ms if statistic == "p10" else entry.median_ms
            clock = entry.provenance.get("clock")
            if isinstance(clock, str):
                clocks.add(clock)
        return cls(device, statistic, **by_timing, clocks=tuple(sorted(clocks)))

    def values(self, timing: Timing) -> dict[str, float]:
        return {
            "isolated": self.isolated,
            "in_context": self.in_context,
            "call_overhead": self.call_overhead,
        }[timing]


def group_of(spec: BlockSpec, level: Level) -> str:
    """The group a block's features go to at `level`: everything, its kind, or kind and resolution."""
    if level == "global":
        return "*"
    if level == "kind" or "hw" not in spec.arg_dict:
        return spec.kind
    return f"{spec.kind}|hw={spec.arg_dict['hw']}"


class LatencyPredictor(abc.ABC):
    """Predicts the latency of a subnet (its blocks, in order) on the device of its `table`.

    Instances are plain data (picklable): evaluator actors receive them whole. `expected_error` is
    set by whoever validated the predictor (`select_predictor`).
    """

    name: ClassVar[str]

    def __init__(
        self,
        table: TableView,
        *,
        fallback: FallbackModel | None = None,
        space: SearchSpace | None = None,
        expected_error: float | None = None,
    ):
        if fallback is not None and space is None:
            raise ValueError("a fallback needs the space that builds the blocks (for their features)")
        self.table = table
        self.fallback = fallback
        self.space = space
        self.expected_error = expected_error

    @property
    def label(self) -> str:
        """The name estimates and trials record."""
        return self.name

    def predict(self, blocks: Sequence[BlockSpec]) -> LatencyEstimate:
        priced = self._price(blocks, self.base_timing)
        if priced.missing:
            return self._estimate(priced, priced.total)
        return self._estimate(priced, self._total(blocks, priced))

    #: The entries the predictor sums.
    base_timing: ClassVar[Timing] = "isolated"

    @abc.abstractmethod
    def _total(self, blocks: Sequence[BlockSpec], priced: _Priced) -> float:
        """The prediction of a subnet whose every block is priced."""

    def _price(self, blocks: Sequence[BlockSpec], timing: Timing) -> _Priced:
        primary = self.table.values(timing)
        isolated = self.table.isolated
        values: list[float] = []
        estimates: dict[str, tuple[float, float]] = {}
        missing: dict[str, None] = {}
        covered = 0
        estimated_ms = variance = 0.0
        for spec in blocks:
            value = primary.get(spec.key, isolated.get(spec.key))
            if value is not None:
                covered += 1
                values.append(value)
                continue
            if spec.key not in estimates and spec.key not in missing:
                fit = self.fallback.fit_for(spec.kind) if self.fallback is not None else None
                if fit is None:
                    missing[spec.key] = None
                else:
                    assert self.space is not None
                    ms = fit.predict(block_features(self.space, spec))
                    estimates[spec.key] = (ms, fit.rmspe * ms)
            if spec.key in estimates:
                estimated_ms += estimates[spec.key][0]
                variance += estimates[spec.key][1] ** 2
            values.append(estimates[spec.key][0] if spec.key in estimates else 0.0)
        table_ms = sum(isolated.get(spec.key, 0.0) for spec in blocks)
        return _Priced(
            values, covered, list(missing), list(estimates), estimated_ms, variance, table_ms, len(blocks)
        )

    def _estimate(self, priced: _Priced, total: float) -> LatencyEstimate:
        return LatencyEstimate(
            total_ms=float(total),
            covered_share=priced.covered / priced.n if priced.n else 1.0,
            n_blocks=priced.n,
            missing_keys=priced.missing,
            estimated_keys=priced.estimated_keys,
            estimated_ms=priced.estimated_ms,
            # The fits' leave-one-out errors, taken as independent.
            estimated_error_ms=math.sqrt(priced.variance),
            table_ms=priced.table_ms,
            predictor=self.label,
            statistic=self.table.statistic,
            expected_error=self.expected_error,
        )

    def describe(self) -> dict[str, Any]:
        """What the predictor is, for reports and the API."""
        return {
            "name": self.label,
            "statistic": self.table.statistic,
            "expected_error": self.expected_error,
            "clocks": list(self.table.clocks),
        }


@dataclass
class _Priced:
    """A subnet's blocks priced by one timing's entries (fallback estimates for the others)."""

    values: list[float]
    covered: int
    missing: list[str]
    estimated_keys: list[str]
    estimated_ms: float
    variance: float
    table_ms: float
    n: int

    @property
    def total(self) -> float:
        return float(sum(self.values))


class BlockSum(LatencyPredictor):
    name = "block_sum"

    def _total(self, blocks: Sequence[BlockSpec], priced: _Priced) -> float:
        return priced.total


class OverheadCorrectedSum(LatencyPredictor):
    """Isolated entries less one runtime call each, plus one call for the network (blocks without a
    `call_overhead` entry are taken as they are)."""

    name = "overhead_corrected"

    def _total(self, blocks: Sequence[BlockSpec], priced: _Priced) -> float:
        calls = self.table.call_overhead
        total = priced.total - sum(calls.get(spec.key, 0.0) for spec in blocks)
        return total + (calls.get(blocks[0].key, 0.0) if blocks else 0.0)


class InContextSum(LatencyPredictor):
    name = "in_context"
    base_timing = "in_context"

    def _total(self, blocks: Sequence[BlockSpec], priced: _Priced) -> float:
        return priced.total


@dataclass(frozen=True)
class GroupLinearModel:
    """`latency = sum over groups g of (a_g * base_ms_g + b_g * blocks_g + c_g * Mparams_g) + d`."""

    level: Level
    base_timing: Timing
    groups: tuple[str, ...]
    coefficients: tuple[float, ...]
    n_subnets: int

    def to_dict(self) -> dict[str, Any]:
        per_group = {
            g: {
                "per_base_ms": self.coefficients[3 * i],
                "per_block_ms": self.coefficients[3 * i + 1],
                "per_mparam_ms": self.coefficients[3 * i + 2],
            }
            for i, g in enumerate(self.groups)
        }
        return {
            "level": self.level,
            "base": self.base_timing,
            "n_subnets": self.n_subnets,
            "constant_ms": self.coefficients[-1],
            "groups": per_group,
        }


def _features(
    blocks: Sequence[BlockSpec], values: Sequence[float], level: Level, groups: Mapping[str, int]
) -> np.ndarray | None:
    """The feature row of a subnet, or None when one of its groups is not among `groups`."""
    row = np.zeros(3 * len(groups) + 1)
    row[-1] = 1.0
    for spec, value in zip(blocks, values, strict=True):
        index = groups.get(group_of(spec, level))
        if index is None:
            return None
        row[3 * index] += value
        row[3 * index + 1] += 1.0
        row[3 * index + 2] += spec.params / 1e6
    return row


class LearnedPredictor(LatencyPredictor):
    """A `GroupLinearModel` over the table's entries; subnets with a group the model never saw get
    its `global` companion model instead (fitted on the same subnets)."""

    name = "learned"

    def __init__(
        self,
        table: TableView,
        model: GroupLinearModel,
        backup: GroupLinearModel | None = None,
        **kwargs: Any,
    ):
        super().__init__(table, **kwargs)
        self.model = model
        self.backup = backup
        self.base_timing = model.base_timing  # type: ignore[misc]

    @property
    def label(self) -> str:
        return f"learned:{self.model.level}"

    def _total(self, blocks: Sequence[BlockSpec], priced: _Priced) -> float:
        for model in (self.model, self.backup):
            if model is None:
                continue
            groups = {g: i for i, g in enumerate(model.groups)}
            row = _features(blocks, priced.values, model.level, groups)
            if row is not None:
                return max(float(row @ np.asarray(model.coefficients)), 0.0)
        return priced.total

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model.to_dict()}


def fit_group_model(
    rows: Sequence[tuple[Sequence[BlockSpec], Sequence[float], float]], level: Level, base: Timing
) -> GroupLinearModel:
    """Fit a `GroupLinearModel` on (blocks, their base entries, measured ms) of whole subnets."""
    from sklearn.linear_model import LinearRegression

    groups: dict[str, int] = {}
    for blocks, _, _ in rows:
        for spec in blocks:
            groups.setdefault(group_of(spec, level), len(groups))
    x = np.array([_features(blocks, values, level, groups) for blocks, values, _ in rows])
    y = np.array([measured for _, _, measured in rows], dtype=np.float64)
    scale = np.max(np.abs(x), axis=0)
    scale[scale == 0] = 1.0
    fit = LinearRegression(fit_intercept=False, positive=True).fit(x / scale, y, sample_weight=1.0 / y**2)
    return GroupLinearModel(level, base, tuple(groups), tuple(float(c) for c in fit.coef_ / scale), len(rows))


@dataclass(frozen=True)
class MeasuredSubnet:
    """A subnet measured end to end on the device: its blocks and the statistic of its samples."""

    blocks: Sequence[BlockSpec]
    measured_ms: float


@dataclass(frozen=True)
class CandidateReport:
    """A candidate predictor's error on held-out subnets (relative errors, one per subnet priced)."""

    name: str
    errors: list[float]
    fitted_on: int = 0

    @property
    def rmspe(self) -> float | None:
        return float(np.sqrt(np.mean(np.square(self.errors)))) if self.errors else None


@dataclass(frozen=True)
class Selection:
    """Every candidate predictor of a device and space (learned ones fitted on all the measured
    subnets), each with its held-out error as `expected_error`, the reports they were judged by, and
    the one to price with."""

    predictor: LatencyPredictor
    predictors: dict[str, LatencyPredictor]
    candidates: list[CandidateReport]


def table_predictors(
    table: TableView, *, fallback: FallbackModel | None = None, space: SearchSpace | None = None
) -> dict[str, LatencyPredictor]:
    """The table-only predictors a table supports (in-context and overhead need their entries)."""
    out: dict[str, LatencyPredictor] = {"block_sum": BlockSum(table, fallback=fallback, space=space)}
    if table.call_overhead:
        out["overhead_corrected"] = OverheadCorrectedSum(table, fallback=fallback, space=space)
    if table.in_context:
        out["in_context"] = InContextSum(table, fallback=fallback, space=space)
    return out


def select_predictor(
    table: TableView,
    subnets: Sequence[MeasuredSubnet],
    *,
    fallback: FallbackModel | None = None,
    space: SearchSpace | None = None,
    seed: int = 0,
) -> Selection:
    """The best predictor for `table` judged on `subnets` (the device's measured subnets).

    Table-only predictors are scored on every subnet they price; learned ones on held-out folds
    (`FOLDS`-fold cross-validation), and only where there are `SUBNETS_PER_COEFFICIENT` subnets per
    coefficient. The one with the lowest held-out RMSPE wins (learned ones are then refitted on all
    subnets); without subnets, the first of `TABLE_PREFERENCE` the table supports.
    """
    predictors: dict[str, LatencyPredictor] = dict(table_predictors(table, fallback=fallback, space=space))
    reports = [_score_plain(name, predictor, subnets) for name, predictor in predictors.items()]
    base: Timing = "in_context" if table.in_context else "isolated"
    rows = _priced_rows(predictors["in_context" if base == "in_context" else "block_sum"], subnets)
    for level in LEVELS:
        report = _cross_validate(rows, level, base, seed)
        if report is None:
            continue
        reports.append(report)
        backup = fit_group_model(rows, "global", base) if level != "global" else None
        model = fit_group_model(rows, level, base)
        predictors[report.name] = LearnedPredictor(table, model, backup, fallback=fallback, space=space)
    for report in reports:
        predictors[report.name].expected_error = report.rmspe
    scored = [r for r in reports if r.rmspe is not None]
    if scored:
        best = predictors[min(scored, key=lambda r: r.rmspe or 0.0).name]
    else:
        best = next(predictors[name] for name in TABLE_PREFERENCE if name in predictors)
    return Selection(best, predictors, reports)


def _score_plain(
    name: str, predictor: LatencyPredictor, subnets: Sequence[MeasuredSubnet]
) -> CandidateReport:
    errors = []
    for subnet in subnets:
        estimate = predictor.predict(subnet.blocks)
        if estimate.complete:
            errors.append(estimate.total_ms / subnet.measured_ms - 1.0)
    return CandidateReport(name, errors)


def _priced_rows(
    predictor: LatencyPredictor, subnets: Sequence[MeasuredSubnet]
) -> list[tuple[Sequence[BlockSpec], list[float], float]]:
    """(blocks, base values, measured) of the subnets the predictor prices completely."""
    rows = []
    for subnet in subnets:
        priced = predictor._price(subnet.blocks, predictor.base_timing)
        if not priced.missing and subnet.measured_ms > 0:
            rows.append((subnet.blocks, priced.values, subnet.measured_ms))
    return rows


def _cross_validate(
    rows: Sequence[tuple[Sequence[BlockSpec], list[float], float]], level: Level, base: Timing, seed: int
) -> CandidateReport | None:
    from sklearn.model_selection import KFold

    n_groups = len({group_of(spec, level) for blocks, _, _ in rows for spec in blocks})
    if len(rows) < max(FOLDS, SUBNETS_PER_COEFFICIENT * (3 * n_groups + 1)):
        return None
    errors = []
    for train, test in KFold(FOLDS, shuffle=True, random_state=seed).split(np.arange(len(rows))):
        model = fit_group_model([rows[i] for i in train], level, base)
        backup = fit_group_model([rows[i] for i in train], "global", base)
        groups = {g: i for i, g in enumerate(model.groups)}
        for i in test:
            blocks, values, measured = rows[i]
            row = _features(blocks, values, level, groups)
            if row is None:
                row = _features(blocks, values, "global", {"*": 0})
                coefficients = backup.coefficients
            else:
                coefficients = model.coefficients
            errors.append(max(float(row @ np.asarray(coefficients)), 0.0) / measured - 1.0)
    return CandidateReport(f"learned:{level}", errors, fitted_on=len(rows))


__all__ = [
    "DEFAULT_STATISTIC",
    "LEVELS",
    "STATISTICS",
    "BlockSum",
    "CandidateReport",
    "GroupLinearModel",
    "InContextSum",
    "LatencyEstimate",
    "LatencyPredictor",
    "LearnedPredictor",
    "MeasuredSubnet",
    "OverheadCorrectedSum",
    "Selection",
    "TableView",
    "fit_group_model",
    "group_of",
    "sample_statistic",
    "select_predictor",
    "table_predictors",
]
