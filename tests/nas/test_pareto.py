"""Pareto fronts and hypervolume against brute-force and independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nas.pareto import (
    HV_REFERENCE,
    Normalizer,
    ParetoFront,
    dominates,
    hypervolume,
    non_dominated,
    normalized_hypervolume,
)


def brute_non_dominated(points: np.ndarray) -> list[int]:
    return [
        i
        for i, p in enumerate(points)
        if not any(np.all(q <= p) and np.any(q < p) for j, q in enumerate(points) if j != i)
    ]


def inclusion_exclusion_hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume of the union of the boxes [p, ref], summed over all subsets (exact, small n only)."""
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(range(len(points)), k):
            corner = points[list(subset)].max(axis=0)
            total += (-1) ** (k + 1) * float(np.prod(np.clip(ref - corner, 0.0, None)))
    return total


def random_points(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    # Small integer grids force ties in single coordinates and exact duplicates.
    return rng.integers(0, 6, size=(n, d)).astype(float)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_non_dominated_matches_brute_force(d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (0, 1, 2, 7, 40, 150):
        points = random_points(rng, n, d)
        assert non_dominated(points).tolist() == brute_non_dominated(points)


@pytest.mark.parametrize("d", [2, 3])
def test_non_dominated_on_continuous_points(d: int) -> None:
    rng = np.random.default_rng(42)
    points = rng.random((300, d))
    points[:, -1] = 1.0 - points[:, 0] + 0.1 * rng.random(300)  # anti-correlated: large fronts
    assert non_dominated(points).tolist() == brute_non_dominated(points)


def test_duplicates_stay_on_the_front_together() -> None:
    points = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [2.0, 1.0]])
    assert non_dominated(points).tolist() == [0, 1, 2, 4]
    assert non_dominated(np.array([[1, 1, 1], [1, 1, 1], [1, 1, 2]])).tolist() == [0, 1]


def test_non_dominated_rejects_nan_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="NaN"):
        non_dominated(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        non_dominated(np.array([1.0, 2.0]))


def test_dominates() -> None:
    assert dominates([1, 2], [1, 3])
    assert not dominates([1, 2], [1, 2])
    assert not dominates([1, 3], [2, 2])


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_incremental_front_equals_batch(d: int, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    points = random_points(rng, 80, d)
    front = ParetoFront(d)
    for number, point in enumerate(points):
        before = set(front.members)
        joined = front.add(number, point)
        assert joined == (number in front.members)
        # A new member removes exactly the members it dominates; a rejected point changes nothing.
        expected = {m for m in before if not dominates(point, points[m])} | ({number} if joined else set())
        assert set(front.members) == expected
        assert front.members == non_dominated(points[: number + 1]).tolist()
    assert np.array_equal(front.points, points[front.members])
    assert len(front) == len(front.members)


def test_front_rejects_wrong_dimension() -> None:
    with pytest.raises(ValueError, match="2 values"):
        ParetoFront(2).add(0, [1.0, 2.0, 3.0])


def test_hypervolume_hand_computed() -> None:
    assert hypervolume([[1.0, 2.0], [2.0, 1.0]], [3.0, 3.0]) == pytest.approx(3.0)
    assert hypervolume([[0.0, 0.0, 0.0]], [1.0, 2.0, 3.0]) == pytest.approx(6.0)
    assert hypervolume([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]], [2.0, 2.0, 2.0]) == pytest.approx(5.0)
    assert hypervolume([[0.5]], [2.0]) == pytest.approx(1.5)
    # Dominated and duplicate points add nothing; points not better than ref in every dimension
    # contribute nothing.
    assert hypervolume([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0]], [3.0, 3.0]) == pytest.approx(3.0)
    assert hypervolume([[1.0, 2.0], [0.0, 3.0], [4.0, 0.0]], [3.0, 3.0]) == pytest.approx(2.0)
    assert hypervolume(np.zeros((0, 3)), [1.0, 1.0, 1.0]) == 0.0


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("seed", range(8))
def test_hypervolume_matches_inclusion_exclusion(d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = np.full(d, 1.1)
    for n in (1, 2, 5, 9):
        points = rng.random((n, d)) * 1.3  # some beyond the reference point
        points[: n // 3] = np.round(points[: n // 3], 1)  # some ties
        assert hypervolume(points, ref) == pytest.approx(inclusion_exclusion_hv(points, ref), abs=1e-12)


def test_hypervolume_of_a_staircase_equals_its_area() -> None:
    # Points on x + y = 1 at steps of 1/k against ref (1, 1): the area is a sum of k columns.
    k = 50
    xs = np.arange(k) / k
    points = np.column_stack([xs, 1 - xs - 1 / k])
    expected = sum((1 / k) * (1 - (1 - x - 1 / k)) for x in xs)
    assert hypervolume(points, [1.0, 1.0]) == pytest.approx(expected)
    # The same staircase extruded along a third axis of length 2 has twice the area as volume.
    points3 = np.column_stack([points, np.zeros(k)])
    assert hypervolume(points3, [1.0, 1.0, 2.0]) == pytest.approx(2 * expected)


def test_hypervolume_dimension_errors() -> None:
    with pytest.raises(ValueError, match="1, 2 or 3 objectives, got 4"):
        hypervolume([[0.0] * 4], [1.0] * 4)
    with pytest.raises(ValueError, match="ref has 3"):
        hypervolume([[0.0, 0.0]], [1.0, 1.0, 1.0])


def test_normalizer() -> None:
    norm = Normalizer(lo=[10.0, 0.0, 5.0], hi=[20.0, 4.0, 5.0])
    out = norm([[10.0, 4.0, 5.0], [15.0, 1.0, 7.0], [30.0, -4.0, 3.0]])
    # A flat dimension (hi == lo) maps to 1 whatever the value.
    # Below the lower bound: clipped to 0; above the upper bound: kept (it adds nothing beyond 1.1).
    assert out.tolist() == [[0.0, 1.0, 1.0], [0.5, 0.25, 1.0], [2.0, 0.0, 1.0]]
    fitted = Normalizer.from_points([[1.0, 8.0], [3.0, 4.0], [2.0, 6.0]])
    assert fitted.lo.tolist() == [1.0, 4.0] and fitted.hi.tolist() == [3.0, 8.0]
    with pytest.raises(ValueError, match="finite"):
        Normalizer([0.0], [np.inf])
    with pytest.raises(ValueError, match="2 objectives, the bounds 3"):
        norm([[1.0, 2.0]])


@pytest.mark.parametrize("d", [1, 2, 3])
def test_normalized_hypervolume_stays_within_its_bounds_whatever_the_points(d: int) -> None:
    """Bounds that do not bound the points (the temporal search that reported 2.377 > 1.21): the
    figure still lies in [0, 1.1 ** d], and a front that dominates another never scores less."""
    rng = np.random.default_rng(d)
    normalizer = Normalizer(lo=np.zeros(d), hi=np.ones(d))
    for _ in range(200):
        points = rng.uniform(-5.0, 3.0, size=(int(rng.integers(1, 30)), d))
        value = normalized_hypervolume(points, normalizer)
        assert 0.0 <= value <= HV_REFERENCE**d + 1e-12
        better = points - rng.uniform(0.0, 1.0, size=points.shape)
        assert normalized_hypervolume(better, normalizer) >= value - 1e-12
    assert normalized_hypervolume(np.full((1, d), -100.0), normalizer) == pytest.approx(HV_REFERENCE**d)
    assert normalized_hypervolume(np.zeros((0, d)), normalizer) == 0.0
    # Without clipping the same point would have scored (1.1 + 100) ** d.
    assert hypervolume(np.full((1, d), -100.0), [HV_REFERENCE] * d) > HV_REFERENCE**d
