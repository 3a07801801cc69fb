"""How fast are our Pareto front and hypervolume? 100,000 points in 2 and 3 objectives, next to Optuna.

For each dimension and point distribution:
- `non_dominated` (nas.pareto: O(n log n) sweeps) vs Optuna's own Pareto computation
  (`optuna.study._multi_objective._is_pareto_front`, what `study.best_trials` uses), checked to
  select exactly the same points;
- `ParetoFront.add` one point at a time (what the runner does as trials arrive), total time;
- `hypervolume` of the front (exact) vs Optuna's `optuna._hypervolume.compute_hypervolume`, checked
  to agree to 1e-9 relative.
Distributions: `uniform` (points uniform in the unit cube: a small front) and `front-heavy` (points
near the simplex x + y (+ z) = 1, so a large share of them is non-dominated). Times are the best of
`--repeats` runs. Optuna's hypervolume gets at most `--optuna-hv-limit` front points (the cross-check
then runs on that subset, ours is also timed on the whole front).

    python benchmarks/pareto_speed.py                     # 100,000 points
    python benchmarks/pareto_speed.py --points 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _is_pareto_front

from nas.pareto import ParetoFront, hypervolume, non_dominated


def points(kind: str, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return rng.random((n, d))
    raw = rng.random((n, d)) + 1e-9
    simplex = raw / raw.sum(axis=1, keepdims=True)
    return simplex + rng.random((n, d)) * 0.002


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def incremental(pts: np.ndarray) -> int:
    front = ParetoFront(pts.shape[1])
    for i, p in enumerate(pts):
        front.add(i, p)
    return len(front)


def row(d: int, kind: str, pts: np.ndarray, repeats: int, n_inc: int, hv_limit: int) -> str:
    """One table row: both Pareto computations (checked equal), incremental adds, both hypervolumes
    (checked equal; Optuna's on the first `hv_limit` front points when the front is larger)."""
    ours_s, ours = best_of(repeats, partial(non_dominated, pts))
    optuna_s, mask = best_of(repeats, partial(_is_pareto_front, pts, assume_unique_lexsorted=False))
    assert np.array_equal(np.flatnonzero(mask), ours), "the two fronts differ"
    front = pts[ours]
    inc_s, _ = best_of(1, partial(incremental, pts[:n_inc]))
    ref = np.full(d, 1.1)
    hv_s, hv = best_of(repeats, partial(hypervolume, front, ref))
    subset = front[:hv_limit]
    ohv_s, ohv = best_of(
        1 if len(subset) < len(front) else repeats, partial(compute_hypervolume, subset, ref)
    )
    if len(subset) < len(front):
        hv = hypervolume(subset, ref)
    assert abs(hv - ohv) <= 1e-9 * max(1.0, abs(ohv)), (hv, ohv)
    ohv_label = f"{ohv_s:.3f} s" + ("" if len(subset) == len(front) else f" ({len(subset)} of the front)")
    inc_label = f"{inc_s:.3f} s" + ("" if n_inc == len(pts) else f" ({n_inc} pts)")
    return (
        f"| {d} | {kind} | {len(front)} | {ours_s:.3f} s | {optuna_s:.3f} s | {optuna_s / ours_s:.1f}x "
        f"| {inc_label} | {hv_s:.3f} s | {ohv_label} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--incremental-points", type=int, default=None, help="points for ParetoFront.add (default: --points)"
    )
    parser.add_argument(
        "--optuna-hv-limit",
        type=int,
        default=10_000,
        help="front points Optuna's hypervolume gets (its WFG takes minutes beyond ~20,000 in 3-D)",
    )
    args = parser.parse_args(argv)
    n_inc = args.incremental_points or args.points
    rng = np.random.default_rng(0)
    print(f"points={args.points} repeats={args.repeats} (best of)\n")
    print(
        "| objectives | distribution | front size | non_dominated | Optuna _is_pareto_front | speed-up "
        "| ParetoFront.add x n | hypervolume (front) | Optuna compute_hypervolume |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for d in (2, 3):
        for kind in ("uniform", "front-heavy"):
            pts = points(kind, args.points, d, rng)
            print(row(d, kind, pts, args.repeats, n_inc, args.optuna_hv_limit), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
