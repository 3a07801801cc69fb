"""What the dashboard plots, computed on the server so the page stays smooth at 100,000 trials.

A search's trials are read once into columns (`TrialColumns`: numbers, states, feasibility, one float
array per objective) and extended incrementally as the search appends trials. From those columns:

- `plot_points`: the Pareto front *in the objectives the user picked* (every member), plus a
  stratified sample of the other trials (one per cell of a grid over the plotted range, so outliers and
  sparse regions survive thinning, topped up at random);
- `hypervolume_curve`: the hypervolume after each of up to `max_points` evaluation counts, as the
  runner recorded it with each trial (so it ends at the search's own figure);
- `sort_numbers`: trial numbers ordered by any column, for the sortable table;
- `structure`: a config grouped stage by stage for the subnet drawing.

All fronts here are over feasible, complete trials with every picked objective present, with a
maximised objective negated (as in `nas.pareto`).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from nas.objectives import objective_direction
from nas.pareto import HV_REFERENCE, Normalizer, non_dominated, normalized_hypervolume
from search_spaces import SpaceError
from services.core.db import TrialRow

_T = TrialRow.__table__
_CONSTRAINT_OBJECTIVE = re.compile(r"^\s*([^<>=\s]+)")
_BLOCK_KEY = re.compile(r"^block(\d+)\.(.+)$")

#: Sortable columns of the trial table besides the objectives.
BASE_SORT_KEYS = ("number", "state", "feasible")


class DashboardQueryError(SpaceError):
    """A dashboard query names something the search does not have (422 naming the field)."""


@dataclass
class TrialColumns:
    """A search's trials as columns, in trial-number order."""

    numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    complete: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    feasible: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    values: dict[str, np.ndarray] = field(default_factory=dict)
    #: The search's hypervolume after each trial, as the runner stored it (NaN where it did not).
    hypervolume: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=float))

    def __len__(self) -> int:
        return len(self.numbers)

    def column(self, name: str) -> np.ndarray:
        """An objective's values (NaN where a trial has none)."""
        return self.values.get(name, np.full(len(self), np.nan))

    def extend(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        n_old = len(self)
        keys = {key for row in rows for key in (row["values"] or {})}
        for key in keys - self.values.keys():
            self.values[key] = np.full(n_old, np.nan)
        for key in list(self.values):
            added = [float((row["values"] or {}).get(key, math.nan)) for row in rows]
            self.values[key] = np.concatenate([self.values[key], np.asarray(added, dtype=float)])
        self.numbers = np.concatenate([self.numbers, [int(row["number"]) for row in rows]]).astype(np.int64)
        done = [row["state"] == "complete" for row in rows]
        self.complete = np.concatenate([self.complete, np.asarray(done, dtype=bool)])
        feasible = [bool(row["feasible"]) for row in rows]
        self.feasible = np.concatenate([self.feasible, np.asarray(feasible, dtype=bool)])
        recorded = [math.nan if row.get("hypervolume") is None else float(row["hypervolume"]) for row in rows]
        self.hypervolume = np.concatenate([self.hypervolume, np.asarray(recorded, dtype=float)])


class TrialColumnsCache:
    """Per-search `TrialColumns`, topped up with the trials added since the last read.

    Trials are append-only with increasing numbers, so a cached copy stays right once it is extended
    with the rows numbered above its last; a count that does not match means the rows changed in
    another way (a search deleted and re-created) and the search is read again from scratch.
    """

    def __init__(self, engine: Engine, max_searches: int = 16):
        self.engine = engine
        self.max_searches = max_searches
        self._columns: dict[str, TrialColumns] = {}
        self._lock = threading.Lock()

    def get(self, search_id: str) -> TrialColumns:
        with self._lock:
            cached = self._columns.pop(search_id, None) or TrialColumns()
            cached.extend(self._read(search_id, after=int(cached.numbers[-1]) if len(cached) else -1))
            if len(cached) != self._count(search_id):
                cached = TrialColumns()
                cached.extend(self._read(search_id, after=-1))
            self._columns[search_id] = cached
            while len(self._columns) > self.max_searches:
                self._columns.pop(next(iter(self._columns)))
            return cached

    def _read(self, search_id: str, *, after: int) -> list[Mapping[str, Any]]:
        query = (
            sa.select(
                _T.c.number,
                _T.c.state,
                _T.c["values"],
                _T.c.feasible,
                _T.c.metrics["hypervolume"].as_float().label("hypervolume"),
            )
            .where(_T.c.search_id == search_id, _T.c.number > after)
            .order_by(_T.c.number)
        )
        with self.engine.connect() as conn:
            return [row._mapping for row in conn.execute(query)]

    def _count(self, search_id: str) -> int:
        query = sa.select(sa.func.count()).select_from(_T).where(_T.c.search_id == search_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


# ----------------------------------------------------------------------------- objectives
def search_objectives(spec: Mapping[str, Any]) -> list[str]:
    """The objectives of a stored spec, then the other objectives its constraints bound."""
    names = [str(name).strip() for name in spec.get("objectives", [])]
    for text in spec.get("constraints", []):
        match = _CONSTRAINT_OBJECTIVE.match(str(text))
        if match:
            names.append(match.group(1))
    return list(dict.fromkeys(names))


def pick_objectives(available: Sequence[str], picked: Sequence[str]) -> list[str]:
    """Check a plot's 2 or 3 objectives against the search's; `DashboardQueryError` names the field."""
    picked = [name.strip() for name in picked if name.strip()]
    if not 2 <= len(picked) <= 3:
        raise DashboardQueryError(
            f"pick 2 or 3 objectives to plot, got {len(picked)}: {picked}",
            field="objectives",
            allowed=list(available),
        )
    if len(set(picked)) != len(picked):
        raise DashboardQueryError(
            f"objectives to plot must differ, got {picked}", field="objectives", allowed=list(available)
        )
    unknown = [name for name in picked if name not in available]
    if unknown:
        raise DashboardQueryError(
            f"the search has no objective {unknown[0]!r}; its objectives: {list(available)}",
            field="objectives",
            allowed=list(available),
        )
    return picked


def _min_form(columns: TrialColumns, names: Sequence[str]) -> np.ndarray:
    signs = [1.0 if objective_direction(name) == "minimize" else -1.0 for name in names]
    if not len(columns):
        return np.zeros((0, len(names)))
    return np.stack([columns.column(name) * sign for name, sign in zip(names, signs, strict=True)], axis=1)


# ----------------------------------------------------------------------------- the scatter plot
def plot_points(
    columns: TrialColumns, names: Sequence[str], *, max_points: int, seed: int = 0
) -> dict[str, Any]:
    """The front in `names` and a stratified sample of the rest, as columns per series.

    Series: `front` (feasible, non-dominated in `names`: always complete), `feasible` and `infeasible`
    (the others, thinned together so at most `max_points` points are returned in all, unless the front
    alone is larger).
    """
    points = _min_form(columns, names)
    valid = columns.complete & np.all(np.isfinite(points), axis=1)
    candidates = np.flatnonzero(valid & columns.feasible)
    on_front = np.zeros(len(columns), dtype=bool)
    if len(candidates):
        on_front[candidates[non_dominated(points[candidates])]] = True
    rest = np.flatnonzero(valid & ~on_front)
    budget = max(0, max_points - int(on_front.sum()))
    shown_rest = _stratified_sample(points, rest, budget, seed) if len(rest) > budget else rest

    def series(index: np.ndarray) -> dict[str, Any]:
        index = np.sort(index)
        out: dict[str, Any] = {"numbers": columns.numbers[index].tolist()}
        for axis, name in zip("xyz", names, strict=False):
            out[axis] = columns.column(name)[index].tolist()
        return out

    shown_feasible = shown_rest[columns.feasible[shown_rest]]
    shown_infeasible = shown_rest[~columns.feasible[shown_rest]]
    return {
        "objectives": [{"name": n, "direction": objective_direction(n)} for n in names],
        "counts": {
            "trials": len(columns),
            "plottable": int(valid.sum()),
            "failed": int((~columns.complete).sum()),
            "feasible": int((valid & columns.feasible).sum()),
            "infeasible": int((valid & ~columns.feasible).sum()),
            "front": int(on_front.sum()),
            "shown": int(on_front.sum()) + len(shown_rest),
        },
        "thinned": len(shown_rest) < len(rest),
        "front": series(np.flatnonzero(on_front)),
        "feasible": series(shown_feasible),
        "infeasible": series(shown_infeasible),
    }


def _stratified_sample(points: np.ndarray, index: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """`budget` of the rows `index`: one random row per occupied cell of a grid of about `budget`
    cells over their range (fewer cells are occupied when the cloud is clustered), topped up at
    random from the rows not yet taken."""
    if budget <= 0:
        return index[:0]
    rng = np.random.default_rng(seed)
    sub = points[index]
    d = sub.shape[1]
    side = max(1, math.floor(budget ** (1.0 / d)))
    scaled = Normalizer.from_points(sub)(sub)
    cells = np.clip((scaled * side).astype(np.int64), 0, side - 1)
    cell_id = np.ravel_multi_index(tuple(cells.T), (side,) * d)
    order = rng.permutation(len(index))
    _, first = np.unique(cell_id[order], return_index=True)
    chosen = order[first]
    if len(chosen) > budget:
        chosen = rng.choice(chosen, size=budget, replace=False)
    elif len(chosen) < budget:
        left = np.setdiff1d(np.arange(len(index)), chosen, assume_unique=True)
        chosen = np.concatenate([chosen, rng.choice(left, size=budget - len(chosen), replace=False)])
    return index[chosen]


# ----------------------------------------------------------------------------- hypervolume
def hypervolume_curve(columns: TrialColumns, names: Sequence[str], *, max_points: int) -> dict[str, Any]:
    """Hypervolume of the feasible front after 1..n evaluations (at most `max_points` of them).

    `normalized_by: "anchors"`: every trial carries the hypervolume the runner computed after it
    (`nas.pareto.normalized_hypervolume` with the bounds of the space's smallest and largest
    subnets), and the curve is those figures, so it ends at the search's own (`live_hypervolume`).
    `normalized_by: "observed"`: some trial lacks one (the runner could not evaluate its anchors, or
    the trials predate the figure); then the same function runs here with the per-objective minimum
    and maximum over all complete trials as bounds, as the runner does in that case.
    """
    empty = {"evaluations": [], "hypervolume": [], "reference": HV_REFERENCE, "normalized_by": "observed"}
    if not 1 <= len(names) <= 3 or not len(columns):
        return {**empty, "reason": "hypervolume is computed for 1 to 3 objectives" if len(columns) else ""}
    n = len(columns)
    stops = np.unique(np.linspace(1, n, num=min(n, max_points)).round().astype(np.int64))
    if np.isfinite(columns.hypervolume).all():
        curve = columns.hypervolume[stops - 1].tolist()
        return {
            **empty,
            "evaluations": stops.tolist(),
            "hypervolume": curve,
            "normalized_by": "anchors",
            "reason": "",
        }
    points = _min_form(columns, names)
    valid = columns.complete & np.all(np.isfinite(points), axis=1)
    if not valid.any():
        return {**empty, "reason": "no complete trial yet"}
    normalizer = Normalizer.from_points(points[valid])
    usable = valid & columns.feasible
    front = np.zeros((0, len(names)))
    start = 0
    curve = []
    for stop in stops.tolist():
        chunk = points[start:stop][usable[start:stop]]
        if len(chunk):
            merged = np.vstack([front, chunk])
            front = merged[non_dominated(merged)]
        curve.append(normalized_hypervolume(front, normalizer))
        start = stop
    return {**empty, "evaluations": stops.tolist(), "hypervolume": curve, "reason": ""}


# ----------------------------------------------------------------------------- the trial table
def sort_numbers(
    columns: TrialColumns,
    sort: str,
    descending: bool,
    *,
    objectives: Sequence[str],
    state: str | None = None,
    feasible: bool | None = None,
) -> np.ndarray:
    """Trial numbers of the filtered trials ordered by `sort` (ties by number; missing values last)."""
    keys = [*BASE_SORT_KEYS, *objectives]
    if sort not in keys:
        raise DashboardQueryError(f"cannot sort by {sort!r}; sortable: {keys}", field="sort", allowed=keys)
    keep = np.ones(len(columns), dtype=bool)
    if state is not None:
        keep &= columns.complete if state == "complete" else ~columns.complete
    if feasible is not None:
        keep &= columns.feasible == feasible
    index = np.flatnonzero(keep)
    numbers = columns.numbers[index]
    if sort == "number":
        key = numbers.astype(float)
    elif sort == "state":
        key = (~columns.complete[index]).astype(float)
    elif sort == "feasible":
        key = columns.feasible[index].astype(float)
    else:
        key = columns.column(sort)[index]
    missing = ~np.isfinite(key)
    key = np.where(missing, 0.0, -key if descending else key)
    tiebreak = -numbers if descending and sort == "number" else numbers
    order = np.lexsort((tiebreak, key, missing))
    return numbers[order]


# ----------------------------------------------------------------------------- subnet structure
def structure(config: Mapping[str, Any], choices: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A config grouped stage by stage, in the order of the space's choices.

    A key `<group>.<rest>` belongs to `<group>` (`stage2.width` -> `stage2`, `down0.resnets` ->
    `down0`); keys without a dot form the group `global`. Within a group, `blockN.<attr>` keys become
    the group's blocks (a block whose every attribute is 0 was dropped by the depth: `active` False);
    other keys are the group's settings. Each value carries the choice's options so a drawing can
    scale it.
    """
    options = {str(c["name"]): list(c.get("options", [])) for c in choices}
    order = list(options) + [key for key in config if key not in options]
    groups: dict[str, dict[str, Any]] = {}
    for key in order:
        if key not in config:
            continue
        group, sep, rest = key.partition(".")
        if not sep:
            group, rest = "global", key
        entry = groups.setdefault(group, {"name": group, "settings": [], "blocks": {}})
        block = _BLOCK_KEY.match(rest)
        item = {"key": key, "value": config[key], "options": options.get(key, [])}
        if block:
            slot = entry["blocks"].setdefault(
                int(block.group(1)), {"index": int(block.group(1)), "attrs": []}
            )
            slot["attrs"].append({**item, "name": block.group(2)})
        else:
            entry["settings"].append({**item, "name": rest})
    out = []
    for entry in groups.values():
        blocks = [entry["blocks"][i] for i in sorted(entry["blocks"])]
        for block in blocks:
            block["active"] = any(attr["value"] not in (0, False, "", None) for attr in block["attrs"])
        out.append({"name": entry["name"], "settings": entry["settings"], "blocks": blocks})
    return out
