"""The `LatencyTable` contract, run on every implementation (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import pytest

from latency_lut import LatencyEntry, LatencyTable

DeviceName = Callable[[str], str]


def _entry(device: str, i: int, *, median: float | None = None, kind: str = "tiny.conv") -> LatencyEntry:
    median = 0.1 * (i + 1) + 1e-12 * i if median is None else median
    return LatencyEntry(
        device=device,
        key=f"tiny.conv|dim={i}|hw=8x8",
        median_ms=median,
        p10_ms=median * 0.9,
        p90_ms=median * 1.25,
        count=30,
        kind=kind,
        provenance={"backend": "torch-cpu", "threads": 1, "nested": {"list": [1, 2.5, "x"]}, "i": i},
    )


def _assert_same(got: LatencyEntry, want: LatencyEntry) -> None:
    assert (got.device, got.key, got.kind, got.count) == (want.device, want.key, want.kind, want.count)
    for name in ("median_ms", "p10_ms", "p90_ms"):
        assert math.isclose(getattr(got, name), getattr(want, name), rel_tol=1e-9), name
    assert got.provenance == want.provenance


def test_put_then_get_reads_back_unchanged(table: LatencyTable, device_name: DeviceName) -> None:
    device = device_name("cpu")
    entries = [_entry(device, 0), _entry(device, 1, kind=""), _entry(device, 2, median=1 / 3)]
    for entry in entries:
        table.put(entry)
    got = table.get_many(device, [e.key for e in entries])
    assert set(got) == {e.key for e in entries}
    for entry in entries:
        _assert_same(got[entry.key], entry)


def test_put_replaces_the_entry_of_the_same_key(table: LatencyTable, device_name: DeviceName) -> None:
    device = device_name("cpu")
    table.put(_entry(device, 0, median=5.0))
    replacement = LatencyEntry(device, _entry(device, 0).key, 2.0, 1.5, 3.0, 7, "tiny.conv", {"run": 2})
    table.put(replacement)
    entries = table.entries(device)
    assert len(entries) == 1
    _assert_same(entries[0], replacement)


def test_put_many_counts_and_the_last_of_repeated_keys_wins(
    table: LatencyTable, device_name: DeviceName
) -> None:
    device = device_name("cpu")
    batch = [_entry(device, 0, median=1.0), _entry(device, 1), _entry(device, 0, median=9.0)]
    assert table.put_many(iter(batch)) == 3
    assert table.put_many([]) == 0
    assert table.get_many(device, [batch[0].key])[batch[0].key].median_ms == 9.0
    assert len(table.entries(device)) == 2


def test_get_many_returns_only_present_keys(table: LatencyTable, device_name: DeviceName) -> None:
    device = device_name("cpu")
    table.put_many([_entry(device, i) for i in range(3)])
    keys = [_entry(device, i).key for i in (0, 2, 5)] + ["never|seen=1"]
    assert set(table.get_many(device, keys)) == {_entry(device, 0).key, _entry(device, 2).key}
    assert table.get_many(device, []) == {}
    assert table.get_many(device_name("other"), keys) == {}


def test_thousands_of_rows_in_one_call(table: LatencyTable, device_name: DeviceName) -> None:
    device = device_name("bulk")
    entries = [_entry(device, i) for i in range(2500)]
    assert table.put_many(entries) == 2500
    got = table.get_many(device, [e.key for e in entries] + ["absent|x=1"])
    assert len(got) == 2500
    _assert_same(got[entries[1234].key], entries[1234])
    assert table.missing(device, ["absent|x=1", entries[7].key]) == ["absent|x=1"]


def test_devices_never_mix(table: LatencyTable, device_name: DeviceName) -> None:
    a, b = device_name("a"), device_name("b")
    table.put(_entry(a, 0, median=1.0))
    table.put(_entry(b, 0, median=2.0))
    table.put(_entry(b, 1, median=3.0))
    key = _entry(a, 0).key
    assert table.get_many(a, [key])[key].median_ms == 1.0
    assert table.get_many(b, [key])[key].median_ms == 2.0
    assert table.keys(a) == {key}
    assert table.snapshot(b) == {key: 2.0, _entry(b, 1).key: 3.0}
    ours = [d for d in table.devices() if d.startswith(device_name(""))]
    assert ours == [a, b]


def test_entries_are_ordered_by_key_and_listed_per_device(
    table: LatencyTable, device_name: DeviceName
) -> None:
    device = device_name("cpu")
    # Mixed case and punctuation: a database collation would order these differently from Python.
    keys = ["b|x=1", "B|x=1", "a.b|x=1", "a|x=1", "a_b|x=1", "Z|x=2"]
    table.put_many(LatencyEntry(device, key, 1.0, 1.0, 1.0, 1) for key in keys)
    assert [e.key for e in table.entries(device)] == sorted(keys)
    assert table.keys(device) == set(keys)
    assert table.entries(device_name("empty")) == []
    assert table.snapshot(device_name("empty")) == {}


def test_missing_keeps_order_and_drops_repeats(table: LatencyTable, device_name: DeviceName) -> None:
    device = device_name("cpu")
    table.put(LatencyEntry(device, "k|b=1", 1.0, 1.0, 1.0, 1))
    asked = ["k|c=1", "k|b=1", "k|a=1", "k|c=1"]
    assert table.missing(device, asked) == ["k|c=1", "k|a=1"]


def test_concurrent_writers_and_readers_from_threads(table: LatencyTable, device_name: DeviceName) -> None:
    device = device_name("threads")
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for start in range(0, 40, 10):
                table.put_many(_entry(device, worker * 1000 + i) for i in range(start, start + 10))
                table.get_many(device, [_entry(device, worker * 1000).key])
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(table.keys(device)) == 160


@pytest.mark.parametrize("median", [0.0, 1e-6, 123456.789012345])
def test_float_extremes_round_trip(table: LatencyTable, device_name: DeviceName, median: float) -> None:
    device = device_name("cpu")
    entry = LatencyEntry(device, "tiny.head|dim=4", median, median, median, 1, "tiny.head")
    table.put(entry)
    _assert_same(table.entries(device)[0], entry)
