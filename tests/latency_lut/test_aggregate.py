"""Robust aggregation of runs into entries: median of run medians, MAD outliers flagged, not averaged."""

from __future__ import annotations

import pytest

from latency_lut.aggregate import RunSamples, aggregate_runs, outlier_runs


def test_one_run_is_its_own_entry() -> None:
    aggregate = aggregate_runs([RunSamples("a", [3.0, 1.0, 2.0, 4.0], {"backend": "torch-cpu"})])
    assert aggregate.median_ms == 2.5
    assert (aggregate.p10_ms, aggregate.p90_ms) == pytest.approx((1.3, 3.7))
    assert aggregate.count == 4 and aggregate.kept_runs == ["a"] and aggregate.outlier_runs == []
    assert aggregate.provenance == {"backend": "torch-cpu", "runs": 1, "run_ids": ["a"], "outlier_runs": []}


def test_entry_is_the_median_of_run_medians_not_of_pooled_samples() -> None:
    # Pooled, the many samples of run b would dominate; per run, each run has one vote.
    runs = [
        RunSamples("a", [1.0]),
        RunSamples("b", [1.02] * 99 + [5.0]),
        RunSamples("c", [1.04, 1.04, 1.04]),
    ]
    aggregate = aggregate_runs(runs)
    assert aggregate.median_ms == pytest.approx(1.02)
    assert aggregate.count == 104


def test_a_far_run_is_flagged_and_left_out_instead_of_averaged_in() -> None:
    runs = [RunSamples(f"r{i}", [1.0 + 0.01 * i] * 5, {"host": f"h{i}"}) for i in range(4)]
    runs.append(RunSamples("throttled", [3.0] * 5, {"host": "hot"}))
    aggregate = aggregate_runs(runs)
    assert aggregate.outlier_runs == ["throttled"]
    assert "throttled" not in aggregate.kept_runs
    assert aggregate.median_ms == pytest.approx(1.015)
    assert aggregate.p90_ms < 1.1  # the outlier's samples are not pooled either
    assert aggregate.count == 20
    assert aggregate.provenance["host"] == "h3"  # the latest kept run's provenance
    assert aggregate.provenance["outlier_runs"] == ["throttled"]


def test_two_runs_never_flag_each_other() -> None:
    assert outlier_runs({"a": 1.0, "b": 10.0}) == set()


def test_runs_agreeing_within_a_few_percent_are_never_outliers() -> None:
    # Two identical runs give a MAD of zero; the relative floor keeps a 2% deviation in.
    assert outlier_runs({"a": 1.0, "b": 1.0, "c": 1.02}) == set()
    assert outlier_runs({"a": 1.0, "b": 1.0, "c": 1.2}) == {"c"}


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="without runs"):
        aggregate_runs([])
    with pytest.raises(ValueError, match="run 'x' has no samples"):
        aggregate_runs([RunSamples("x", [])])
