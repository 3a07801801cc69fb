"""The fitted fallback for missing keys, and the accuracy measures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latency_lut import LatencyEntry, MemoryLatencyTable, TableView
from latency_lut.accuracy import accuracy_report, spearman
from latency_lut.fallback import POOLED, entry_features, fit_fallback, fit_linear
from latency_lut.features import BlockFeatures, block_features
from latency_lut.predictors import BlockSum
from search_spaces import SearchSpace

DEVICE = "test-device"


def _truth(f: BlockFeatures) -> float:
    return 0.05 + 2e-6 * f.macs + 1e-7 * f.bytes_moved


def _entry(kind: str, i: int, features: BlockFeatures, median: float) -> LatencyEntry:
    provenance = {
        "features": {"macs": features.macs, "params": features.params, "bytes_moved": features.bytes_moved}
    }
    return LatencyEntry(DEVICE, f"{kind}|i={i}", median, median, median, 3, kind, provenance)


def test_linear_fit_recovers_the_generating_model_with_small_loo_error() -> None:
    rng = np.random.default_rng(0)
    features = [BlockFeatures(int(m), int(p), int(b)) for m, p, b in rng.integers(1e4, 1e6, size=(30, 3))]
    fit = fit_linear("k", features, [_truth(f) for f in features])
    assert fit.intercept_ms == pytest.approx(0.05, rel=1e-6)
    assert fit.per_mac_ms == pytest.approx(2e-6, rel=1e-6)
    assert fit.per_param_ms == pytest.approx(0.0, abs=1e-12)
    assert fit.per_byte_ms == pytest.approx(1e-7, rel=1e-6)
    assert fit.rmspe < 1e-9 and fit.n == 30


def test_coefficients_stay_non_negative() -> None:
    # In this data latency falls with params: a plain least-squares fit gives params a negative weight.
    rng = np.random.default_rng(2)
    features = [BlockFeatures(int(m), int(p), 100) for m, p in rng.integers(1e4, 1e5, size=(20, 2))]
    medians = [0.2 + 1e-5 * f.macs - 1e-6 * f.params for f in features]
    x = np.array([[1.0, f.macs, f.params, f.bytes_moved] for f in features])
    assert np.linalg.lstsq(x, np.array(medians), rcond=None)[0][2] < 0
    fit = fit_linear("k", features, medians)
    assert min(fit.intercept_ms, fit.per_mac_ms, fit.per_param_ms, fit.per_byte_ms) >= 0
    assert fit.per_param_ms == 0.0 and fit.per_mac_ms > 0
    assert fit.rmspe > 0


def test_per_kind_fits_where_there_are_enough_entries_else_pooled() -> None:
    rng = np.random.default_rng(1)
    entries = []
    for i, (m, p, b) in enumerate(rng.integers(1e4, 1e6, size=(8, 3))):
        f = BlockFeatures(int(m), int(p), int(b))
        entries.append(_entry("big", i, f, _truth(f)))
    for i in range(3):
        f = BlockFeatures(1000 * (i + 1), 10, 10)
        entries.append(_entry("rare", i, f, 3 * _truth(f)))
    entries.append(LatencyEntry("other-device", "big|i=99", 99.0, 99.0, 99.0, 1, "big", {}))
    model = fit_fallback(DEVICE, entries, entry_features)
    assert set(model.fits) == {"big"} and model.fits["big"].n == 8
    assert model.pooled is not None and model.pooled.scope == POOLED and model.pooled.n == 11
    assert model.fit_for("rare") is model.pooled
    assert model.fit_for("big") is model.fits["big"]
    assert model.pooled.rmspe > model.fits["big"].rmspe  # pooling kinds of different speed costs accuracy


def test_too_few_entries_give_no_fallback_at_all() -> None:
    f = BlockFeatures(10, 10, 10)
    model = fit_fallback(DEVICE, [_entry("k", i, f, 1.0) for i in range(3)], entry_features)
    assert model.fits == {} and model.pooled is None and model.fit_for("k") is None


def test_entries_without_features_are_left_out() -> None:
    entries = [LatencyEntry(DEVICE, f"k|i={i}", 1.0, 1.0, 1.0, 1, "k", {}) for i in range(10)]
    assert fit_fallback(DEVICE, entries, entry_features).pooled is None


def test_predict_estimates_missing_keys_of_a_real_space_and_marks_them(space: SearchSpace) -> None:
    small, big = space.reference_config("small"), space.reference_config("big")
    measured = {spec.key: spec for spec in space.all_blocks()}
    wanted_missing = [
        spec.key for spec in space.blocks(big) if spec.key not in {s.key for s in space.blocks(small)}
    ]
    assert wanted_missing
    entries = []
    for key, spec in measured.items():
        features = block_features(space, spec)
        if key not in wanted_missing:
            entries.append(_entry_for(key, spec.kind, features, _truth(features)))
    table = MemoryLatencyTable(entries)
    model = fit_fallback(DEVICE, table.entries(DEVICE), entry_features)
    view = TableView.from_entries(DEVICE, table.entries(DEVICE), "median")
    plain = BlockSum(view).predict(space.blocks(big))
    assert set(plain.missing_keys) == set(wanted_missing) and not plain.estimated

    estimate = BlockSum(view, fallback=model, space=space).predict(space.blocks(big))
    assert estimate.complete and estimate.estimated
    assert set(estimate.estimated_keys) == set(wanted_missing)
    exact = sum(_truth(block_features(space, spec)) for spec in space.blocks(big))
    assert estimate.total_ms == pytest.approx(exact, rel=1e-6)
    assert estimate.table_ms + estimate.estimated_ms == pytest.approx(estimate.total_ms)
    assert estimate.estimated_error_ms >= 0
    assert estimate.covered_share == pytest.approx(1 - len(wanted_missing) / len(space.blocks(big)))
    with pytest.raises(ValueError, match="needs the space"):
        BlockSum(view, fallback=model)


def _entry_for(key: str, kind: str, features: BlockFeatures, median: float) -> LatencyEntry:
    provenance = {
        "features": {"macs": features.macs, "params": features.params, "bytes_moved": features.bytes_moved}
    }
    return LatencyEntry(DEVICE, key, median, median, median, 3, kind, provenance)


def test_accuracy_measures_on_known_pairs() -> None:
    report = accuracy_report([(1.04, 1.0), (1.12, 1.0), (0.8, 1.0), (2.0, 2.0)])
    assert report.n == 4
    assert report.rmse_ms == pytest.approx(math.sqrt((0.04**2 + 0.12**2 + 0.2**2) / 4))
    assert report.rmspe == pytest.approx(math.sqrt((0.04**2 + 0.12**2 + 0.2**2) / 4))
    assert report.mean_error == pytest.approx((0.04 + 0.12 - 0.2) / 4)
    assert (report.within_5, report.within_10, report.within_15) == (0.5, 0.5, 0.75)
    assert report.spearman == pytest.approx(spearman([1.04, 1.12, 0.8, 2.0], [1.0, 1.0, 1.0, 2.0]))
    empty = accuracy_report([])
    assert empty.n == 0 and empty.rmspe is None
    with pytest.raises(ValueError, match="positive measured"):
        accuracy_report([(1.0, 0.0)])


def test_fallback_fits_isolated_entries_on_the_chosen_statistic() -> None:
    """In-context and call-overhead entries are other timings of the same blocks: never fitted on."""
    features = [BlockFeatures(1000 * (i + 1), 10, 10) for i in range(8)]
    entries = [
        LatencyEntry(
            DEVICE,
            f"k|i={i}",
            2 * _truth(f),
            _truth(f),
            3 * _truth(f),
            5,
            "k",
            _entry("k", i, f, 0).provenance,
        )
        for i, f in enumerate(features)
    ]
    polluted = [
        LatencyEntry(DEVICE, f"ctx@k|i={i}", 100.0, 100.0, 100.0, 5, "k", e.provenance)
        for i, e in enumerate(entries)
    ]
    p10 = fit_fallback(DEVICE, entries + polluted, entry_features, statistic="p10")
    median = fit_fallback(DEVICE, entries, entry_features)
    assert p10.fits["k"].n == 8
    assert p10.fits["k"].predict(features[3]) == pytest.approx(_truth(features[3]), rel=1e-6)
    assert median.fits["k"].predict(features[3]) == pytest.approx(2 * _truth(features[3]), rel=1e-6)


def test_spearman_of_too_few_or_constant_values_is_none() -> None:
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
