"""Pareto fronts and hypervolume, all objectives minimised.

Conventions shared by every function here:
- a *point* is one trial's objective values in minimisation form (a maximised objective is negated,
  see `Objective.to_min`); `a` *dominates* `b` when `a <= b` in every objective and `a < b` in one;
- equal points do not dominate each other, so duplicates stay on the front together;
- the hypervolume is the measure of the region dominated by the points and bounded by the reference
  point `ref`; points that are not strictly better than `ref` in every objective add nothing.

The runner, the dashboard and the benchmarks report one figure, `normalized_hypervolume`: the
hypervolume of the points mapped by a `Normalizer` (0 at the lower bound, 1 at the upper bound, per
objective, values below the lower bound clipped to 0) against the reference point `HV_REFERENCE` =
1.1 in every dimension. It therefore lies in [0, 1.1 ** d] whatever the points: 0 for a front with
no point better than 1.1 in every normalised objective, 1.1 ** d for a point at (or beyond) the lower
bound in every objective. With the same bounds (the runner takes them from the space's smallest and
largest subnets, which depend only on the space, its options, the objectives and the LUTs) the
figures of two searches are comparable; see `Normalizer` for what clipping costs.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

__all__ = [
    "HV_REFERENCE",
    "Normalizer",
    "ParetoFront",
    "dominates",
    "hypervolume",
    "non_dominated",
    "normalized_hypervolume",
]

#: Reference point of every reported hypervolume, per normalised objective.
HV_REFERENCE = 1.1


def _as_points(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    array = np.asarray(points, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n points x d objectives), got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("points contain NaN; objective values must be numbers")
    return array


def dominates(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> bool:
    """Whether `a` dominates `b` (minimisation): no worse everywhere and better somewhere."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated(points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Indices (ascending) of the rows of `points` that no other row dominates.

    Exact duplicates are all kept. Methods, after collapsing duplicates and sorting the distinct
    points lexicographically (so no point can be dominated by a later one):
    - 2 objectives: O(n log n), a sweep keeping the smallest second coordinate seen so far;
    - 3 objectives: O(n log n), a sweep with a Fenwick tree over the ranks of the second coordinate
      holding the smallest third coordinate seen so far (a prefix-minimum query per point), after a
      vectorised pass that drops the rows dominated by a few clearly non-dominated pivots;
    - any other number: O(n^2) pairwise comparison, vectorised by rows.
    """
    array = _as_points(points)
    n, d = array.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(array, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if d == 2:
        keep = _non_dominated_sorted_2d(unique)
    elif d == 3:
        keep = _prefilter(unique)
        survivors = np.flatnonzero(keep)
        keep[survivors] = _non_dominated_sorted_3d(unique[survivors])
    else:
        keep = _non_dominated_pairwise(unique)
    return np.flatnonzero(keep[inverse])


def _non_dominated_sorted_2d(unique: np.ndarray) -> np.ndarray:
    # Distinct rows in lexicographic order: an earlier row with y' <= y dominates (it differs in x or
    # in y, and x' <= x holds by the order).
    best_y_before = np.minimum.accumulate(np.concatenate(([np.inf], unique[:-1, 1])))
    return unique[:, 1] < best_y_before


def _prefilter(unique: np.ndarray, rounds: int = 32) -> np.ndarray:
    """Rows not dominated by any of up to `rounds` pivots: the alive rows of smallest coordinate sum,
    which are non-dominated. Vectorised, so a small front (most rows dominated by a few pivots) costs
    little Python; the exact sweep then runs on the survivors. Removing dominated rows changes no
    verdict: whatever a removed row dominates, its (surviving) pivot dominates too."""
    alive = np.ones(len(unique), dtype=bool)
    order = np.argsort(unique.sum(axis=1), kind="stable")
    cursor = 0
    for _ in range(rounds):
        while cursor < len(order) and not alive[order[cursor]]:
            cursor += 1
        if cursor == len(order):
            break
        pivot = unique[order[cursor]]
        cursor += 1
        alive &= ~(np.all(unique >= pivot, axis=1) & np.any(unique > pivot, axis=1))
    return alive


def _non_dominated_sorted_3d(unique: np.ndarray) -> np.ndarray:
    # Same argument as in 2-D: a row is dominated iff an earlier row has y' <= y and z' <= z, i.e. iff
    # the smallest z among earlier rows with y' <= y is <= z.
    ys = np.unique(unique[:, 1])
    ranks = np.searchsorted(ys, unique[:, 1]) + 1
    size = len(ys)
    tree = [np.inf] * (size + 1)
    keep = np.zeros(len(unique), dtype=bool)
    for i, (rank, z) in enumerate(zip(ranks.tolist(), unique[:, 2].tolist(), strict=True)):
        best = np.inf
        j = rank
        while j > 0:
            best = min(best, tree[j])
            j -= j & -j
        keep[i] = z < best
        j = rank
        while j <= size:
            if z < tree[j]:
                tree[j] = z
            j += j & -j
    return keep


def _non_dominated_pairwise(unique: np.ndarray, chunk: int = 512) -> np.ndarray:
    keep = np.ones(len(unique), dtype=bool)
    for start in range(0, len(unique), chunk):
        rows = unique[start : start + chunk]
        no_worse = np.all(unique[None, :, :] <= rows[:, None, :], axis=2)
        better = np.any(unique[None, :, :] < rows[:, None, :], axis=2)
        keep[start : start + chunk] = ~np.any(no_worse & better, axis=1)
    return keep


class ParetoFront:
    """The non-dominated set of the points added so far, kept incrementally.

    Each point comes with the `number` of its trial. After any sequence of `add`s, `members` equals
    the numbers that `non_dominated` would select from all added points (duplicates included).
    """

    def __init__(self, n_objectives: int):
        if n_objectives < 1:
            raise ValueError(f"n_objectives must be >= 1, got {n_objectives}")
        self.n_objectives = n_objectives
        self._size = 0
        # Rows [0, size) hold the members and their trial numbers; the buffers double when full, so
        # adding is amortised O(1) copying on top of the vectorised O(front) dominance test.
        self._buffer = np.zeros((16, n_objectives), dtype=float)
        self._ids = np.zeros(16, dtype=np.int64)

    def add(self, number: int, point: Sequence[float]) -> bool:
        """Offer a point; returns True if it joined the front (removing the members it dominates)."""
        p = np.asarray(point, dtype=float)
        if p.shape != (self.n_objectives,):
            raise ValueError(f"point must have {self.n_objectives} values, got shape {p.shape}")
        if np.isnan(p).any():
            raise ValueError(f"point {list(p)} contains NaN")
        size = self._size
        if size:
            members = self._buffer[:size]
            # One difference per member: dominated by a member whose largest difference is <= 0
            # and which is not equal to `p`; dominating those whose smallest difference is >= 0.
            diff = members - p
            most, least = diff.max(axis=1), diff.min(axis=1)
            equal = (most == 0) & (least == 0)
            if np.any((most <= 0) & ~equal):
                return False
            beaten = (least >= 0) & ~equal
            if beaten.any():
                survivors = ~beaten
                size = int(survivors.sum())
                self._buffer[:size] = members[survivors]
                self._ids[:size] = self._ids[: self._size][survivors]
        if size == len(self._buffer):
            self._buffer = np.concatenate([self._buffer, np.zeros_like(self._buffer)])
            self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
        self._buffer[size] = p
        self._ids[size] = number
        self._size = size + 1
        return True

    @property
    def members(self) -> list[int]:
        """Trial numbers on the front, ascending."""
        return sorted(self._ids[: self._size].tolist())

    @property
    def points(self) -> np.ndarray:
        """The front's points, one row per member, in the order of `members`."""
        order = np.argsort(self._ids[: self._size], kind="stable")
        return self._buffer[: self._size][order]

    def __len__(self) -> int:
        return self._size


class Normalizer:
    """Per-objective affine map of minimised values onto the span of two bounds, clipped below at 0.

    `lo` and `hi` are the per-objective bounds (the runner takes them from the space's smallest and
    largest subnets). A value `v` maps to `max(0, (v - lo) / (hi - lo))`, and to 1 in a dimension
    where `hi == lo` (no span to scale by). Values above `hi` map above 1 (beyond the reference
    point 1.1 they add nothing to the hypervolume). Values below `lo` are clipped to 0: the bounds are
    fixed, so hypervolumes under the same bounds stay comparable and never exceed 1.1 ** d, at the
    price that two points both beyond `lo` in an objective tie there (clipping is monotone, so a
    point that dominates another never scores less). Bounds that truly bound the objectives lose
    nothing to it, which is why MACs count every attention matmul (`search_spaces._counting`).
    """

    def __init__(self, lo: Sequence[float], hi: Sequence[float]):
        self.lo = np.asarray(lo, dtype=float)
        self.hi = np.asarray(hi, dtype=float)
        if self.lo.shape != self.hi.shape or self.lo.ndim != 1:
            raise ValueError(
                f"lo and hi must be 1-D of equal length, got {self.lo.shape} and {self.hi.shape}"
            )
        if not (np.isfinite(self.lo).all() and np.isfinite(self.hi).all()):
            raise ValueError(f"bounds must be finite, got lo={list(self.lo)} hi={list(self.hi)}")

    @classmethod
    def from_points(cls, points: np.ndarray | Sequence[Sequence[float]]) -> Normalizer:
        """Bounds = per-objective minimum and maximum of `points` (at least one row)."""
        array = _as_points(points)
        if len(array) == 0:
            raise ValueError("cannot take bounds from zero points")
        return cls(array.min(axis=0), array.max(axis=0))

    def __call__(self, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        array = _as_points(points)
        if array.shape[1] != len(self.lo):
            raise ValueError(f"points have {array.shape[1]} objectives, the bounds {len(self.lo)}")
        span = self.hi - self.lo
        flat = span == 0
        out = np.maximum((array - self.lo) / np.where(flat, 1.0, span), 0.0)
        out[:, flat] = 1.0
        return out


def normalized_hypervolume(
    points: np.ndarray | Sequence[Sequence[float]], normalizer: Normalizer, ref: float = HV_REFERENCE
) -> float:
    """The reported hypervolume: `points` (minimisation form) mapped by `normalizer`, against `ref` in
    every objective; in [0, ref ** d] (0 for no points)."""
    array = _as_points(points) if len(points) else np.zeros((0, len(normalizer.lo)))
    if len(array) == 0:
        return 0.0
    return hypervolume(normalizer(array), [ref] * array.shape[1])


def hypervolume(points: np.ndarray | Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Exact hypervolume dominated by `points` and bounded by `ref` (minimisation).

    1 objective: the length `ref - min`. 2 objectives: a sweep over the front sorted by the first
    objective, O(n log n). 3 objectives: a sweep along the third objective that keeps the 2-D
    staircase of the points below and its area up to date as each point is inserted, O(n log n)
    comparisons. Other dimensions raise ValueError.
    """
    array = _as_points(points) if len(points) else np.zeros((0, len(ref)))
    r = np.asarray(ref, dtype=float)
    d = len(r)
    if d not in (1, 2, 3):
        raise ValueError(f"hypervolume is implemented for 1, 2 or 3 objectives, got {d}")
    if array.shape[1] != d:
        raise ValueError(f"points have {array.shape[1]} objectives but ref has {d}")
    inside = array[np.all(array < r, axis=1)]
    if len(inside) == 0:
        return 0.0
    if d == 1:
        return float(r[0] - inside[:, 0].min())
    if d == 2:
        return _hypervolume_2d(inside, r)
    return _hypervolume_3d(inside[non_dominated(inside)], r)


def _hypervolume_3d(front: np.ndarray, ref: np.ndarray) -> float:
    # Sweep up the third objective, keeping the 2-D staircase of the points seen so far (x ascending,
    # y strictly descending) and the area it dominates; each slab adds area * its height. Every
    # point is inserted once and removed at most once, so the sweep is O(n log n) comparisons (plus
    # the list moves of insertion).
    order = np.lexsort((front[:, 1], front[:, 0], front[:, 2]))
    xs_all, ys_all, zs_all = (front[order, k].tolist() for k in range(3))
    rx, ry, rz = (float(v) for v in ref)
    xs: list[float] = []
    ys: list[float] = []
    area = volume = 0.0
    for k, (x, y, z) in enumerate(zip(xs_all, ys_all, zs_all, strict=True)):
        i = bisect.bisect_left(xs, x)
        dominated = (i > 0 and ys[i - 1] <= y) or (i < len(xs) and xs[i] == x and ys[i] <= y)
        if not dominated:
            end = i
            while end < len(xs) and ys[end] >= y:
                end += 1
            right = xs[end] if end < len(xs) else rx
            # Area of the strip [x, right) before the insertion: the predecessor's height up to the
            # first removed point, then each removed point's own height.
            old = (xs[i] if i < end else right) - x
            old *= ry - ys[i - 1] if i > 0 else 0.0
            for m in range(i, end):
                nxt = xs[m + 1] if m + 1 < end else right
                old += (nxt - xs[m]) * (ry - ys[m])
            area += (right - x) * (ry - y) - old
            xs[i:end] = [x]
            ys[i:end] = [y]
        upper = zs_all[k + 1] if k + 1 < len(zs_all) else rz
        volume += area * (upper - z)
    return float(volume)


def _hypervolume_2d(points: np.ndarray, ref: np.ndarray) -> float:
    front = np.unique(points[non_dominated(points)], axis=0)
    # Distinct non-dominated points sorted by x have strictly decreasing y.
    xs = np.append(front[:, 0], ref[0])
    return float(np.sum((xs[1:] - xs[:-1]) * (ref[1] - front[:, 1])))
