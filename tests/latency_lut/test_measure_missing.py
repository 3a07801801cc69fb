"""`measure_missing` fills exactly the missing keys, and a block sum then prices subnets from them
(isolated timings here; `test_predictors.py` covers the other timings)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from latency_lut import (
    LatencyTable,
    MemoryLatencyTable,
    NoLocalBackendError,
    TableView,
    TorchCPUBackend,
    measure_missing,
    missing_entries,
    needed_blocks,
)
from latency_lut.predictors import BlockSum
from search_spaces import SearchSpace, get_space

FAST = {"warmup": 1, "repeats": 3, "timings": ["isolated"]}
HOST = "host-cpu-torch"


def predict(table: LatencyTable, blocks: list) -> object:
    """The plain sum of the table's median entries over `blocks`."""
    return BlockSum(TableView.from_entries(HOST, table.entries(HOST), "median")).predict(blocks)


def test_fills_exactly_the_missing_keys_then_nothing(
    table: LatencyTable, space: SearchSpace, device_name: Callable[[str], str]
) -> None:
    # An explicit backend measures for any device name; a run-unique one keeps parallel runs on the
    # shared PostgreSQL database apart.
    device = device_name("host")
    backend = TorchCPUBackend(threads=1)
    small = space.reference_config("small")
    first = measure_missing(space, device, table, configs=[small], backend=backend, **FAST)
    keys = [spec.key for spec in space.blocks(small)]
    assert (first.needed, first.already_present, first.measured) == (3, 0, 3)
    assert first.measured_keys == keys
    assert first.seconds > 0
    assert table.keys(device) == set(keys)

    big = space.reference_config("big")
    second = measure_missing(space, device, table, configs=[small, big], backend=backend, **FAST)
    new_keys = [spec.key for spec in space.blocks(big)]
    assert second.needed == len(set(keys) | set(new_keys))
    assert second.already_present == 3
    assert set(second.measured_keys) == set(new_keys) - set(keys)
    assert table.keys(device) == set(keys) | set(new_keys)

    third = measure_missing(space, device, table, configs=["small", "big"], backend=backend, **FAST)
    assert (third.measured, third.already_present) == (0, third.needed)


def test_entries_carry_statistics_and_provenance(space: SearchSpace) -> None:
    table = MemoryLatencyTable()
    measure_missing(space, HOST, table, configs=["small"], **FAST)
    for spec in space.blocks(space.reference_config("small")):
        entry = table.get_many(HOST, [spec.key])[spec.key]
        assert entry.kind == spec.kind
        assert entry.count == 3
        assert 0 < entry.p10_ms <= entry.median_ms <= entry.p90_ms
        assert entry.provenance["backend"] == "torch-cpu"
        assert entry.provenance["threads"] == 1
        assert entry.provenance["space"] == "tiny-lut-test"
        assert entry.provenance["space_options"] == {"resolution": 8}
        assert (entry.provenance["warmup"], entry.provenance["repeats"]) == (1, 3)


def test_predict_sums_medians_and_reports_removed_entries(space: SearchSpace) -> None:
    table = MemoryLatencyTable()
    config = space.reference_config("big")
    measure_missing(space, HOST, table, configs=[config], **FAST)
    blocks = space.blocks(config)
    medians = table.snapshot(HOST)

    estimate = predict(table, blocks)
    assert estimate.covered_share == 1.0 and estimate.complete
    assert math.isclose(estimate.total_ms, sum(medians[spec.key] for spec in blocks), rel_tol=1e-12)

    # "big" repeats its 3x3 conv block: the missing key counts once per occurrence.
    removed = blocks[1].key
    assert [spec.key for spec in blocks].count(removed) == 2
    partial = MemoryLatencyTable(e for e in table.entries(HOST) if e.key != removed)
    estimate = predict(partial, blocks)
    assert estimate.missing_keys == [removed]
    assert estimate.covered_share == pytest.approx(2 / 4)
    assert math.isclose(estimate.total_ms, medians[blocks[0].key] + medians[blocks[3].key], rel_tol=1e-12)

    report = measure_missing(space, HOST, partial, configs=[config], **FAST)
    assert report.measured_keys == [removed]
    assert predict(partial, blocks).covered_share == 1.0


def test_whole_space_by_default_with_progress(space: SearchSpace) -> None:
    table = MemoryLatencyTable()
    calls: list[tuple[int, int, str]] = []
    report = measure_missing(space, HOST, table, progress=lambda *args: calls.append(args), **FAST)
    keys = [spec.key for spec in space.all_blocks()]
    assert report.needed == report.measured == len(keys) == 8
    assert calls == [(i + 1, 8, key) for i, key in enumerate(keys)]
    assert table.keys(HOST) == set(keys)
    for spec in space.all_blocks():
        assert table.get_many(HOST, [spec.key])[spec.key].kind == spec.kind


def test_an_interruption_loses_at_most_one_batch(space: SearchSpace) -> None:
    table = MemoryLatencyTable()

    def stop_after_five(done: int, total: int, key: str) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_missing(space, HOST, table, progress=stop_after_five, batch_size=2, **FAST)
    # Blocks 1-4 were written in two batches; block 5 was measured but its batch was not full.
    order = [spec.key for spec in space.all_blocks()]
    assert table.keys(HOST) == set(order[:4])
    resumed = measure_missing(space, HOST, table, batch_size=2, **FAST)
    assert resumed.measured_keys == order[4:]


def test_remote_device_needs_a_farm_or_import(space: SearchSpace, device_name: Callable[[str], str]) -> None:
    table = MemoryLatencyTable()
    with pytest.raises(NoLocalBackendError, match="`nas lut import`"):
        measure_missing(space, "iphone14pro-coreml-ane", table, configs=["small"], **FAST)
    assert table.devices() == []
    # A complete table needs no backend, wherever its device is.
    phone = device_name("phone")
    local = measure_missing(space, phone, table, configs=["small"], backend=TorchCPUBackend(), **FAST)
    report = measure_missing(space, phone, table, configs=["small"], **FAST)
    assert (report.measured, report.already_present) == (0, local.measured)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeats": 0}, "repeats must be an integer >= 1"),
        ({"warmup": -1}, "warmup must be an integer >= 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_measuring(
    space: SearchSpace, kwargs: dict[str, int], message: str
) -> None:
    table = MemoryLatencyTable()
    with pytest.raises(ValueError, match=message):
        measure_missing(space, HOST, table, **kwargs)
    assert table.devices() == []


def test_needed_blocks_are_distinct_in_first_seen_order(space: SearchSpace) -> None:
    blocks = needed_blocks(space, ["small", "small", {"width": 4, "depth": 2}])
    keys = [spec.key for spec in blocks]
    assert len(keys) == len(set(keys)) == 4
    assert keys[:3] == [spec.key for spec in space.blocks(space.reference_config("small"))]
    with pytest.raises(ValueError, match="width"):
        needed_blocks(space, [{"width": 5}])


def test_efficientformerv2_s0_is_fully_priced_after_measuring() -> None:
    effv2 = get_space("efficientformerv2", resolution=64)
    table = MemoryLatencyTable()
    report = measure_missing(effv2, HOST, table, configs=["s0"], **FAST)
    blocks = effv2.blocks(effv2.reference_config("s0"))
    assert report.needed == report.measured == len({spec.key for spec in blocks})
    estimate = predict(table, blocks)
    assert estimate.covered_share == 1.0
    medians = table.snapshot(HOST)
    assert math.isclose(estimate.total_ms, sum(medians[spec.key] for spec in blocks), rel_tol=1e-12)


def test_missing_entries_counts_what_a_search_measures_first(
    table: LatencyTable, space: SearchSpace, device_name: Callable[[str], str]
) -> None:
    device = device_name("count")
    every = [
        (spec.key, t) for spec in needed_blocks(space) for t in ("isolated", "in_context", "call_overhead")
    ]
    assert [(spec.key, t) for spec, t in missing_entries(space, device, table)] == every
    small = space.reference_config("small")
    report = measure_missing(
        space, device, table, configs=[small], backend=TorchCPUBackend(threads=1), **FAST
    )
    left = missing_entries(space, device, table)
    assert len(left) == len(every) - report.measured
    assert not {(spec.key, t) for spec, t in left} & {(spec.key, "isolated") for spec in space.blocks(small)}
    assert missing_entries(space, device, table, timings=["isolated"]) == [
        (spec, "isolated") for spec, t in left if t == "isolated"
    ]
