"""CSV and Parquet export/import of latency tables: exact round trips and specific errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from latency_lut import LatencyEntry, MemoryLatencyTable, SqlLatencyTable
from latency_lut.io import COLUMNS, export_table, import_table

DEVICE = "host-cpu-torch"


def _entries(device: str = DEVICE) -> list[LatencyEntry]:
    return [
        LatencyEntry(device, "tiny.conv|dim=4|k=3", 0.1 + 0.2, 0.25, 1 / 3, 30, "tiny.conv", {"cpu": "x"}),
        LatencyEntry(
            device,
            "tiny.head|dim=8",
            12.000000000000002,
            11.5,
            13.25,
            5,
            "tiny.head",
            {"backend": "torch-cpu", "threads": 2, "nested": {"a": [1, 2.5, None]}},
        ),
        LatencyEntry(device, "tiny.stem|cout=4", 0.0, 0.0, 0.0, 1, "tiny.stem", {}),
    ]


def _source() -> MemoryLatencyTable:
    return MemoryLatencyTable([*_entries(), *_entries("other-device")])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"lut{suffix}"
    assert export_table(_source(), DEVICE, path) == 3
    target = MemoryLatencyTable()
    assert import_table(target, path) == 3
    assert target.devices() == [DEVICE]
    got = target.entries(DEVICE)
    want = sorted(_entries(), key=lambda e: e.key)
    assert got == want  # floats compared exactly
    assert [e.provenance for e in got] == [e.provenance for e in want]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_has_the_documented_columns(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"lut{suffix}"
    export_table(_source(), DEVICE, path)
    frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    assert tuple(frame.columns) == COLUMNS
    assert json.loads(frame["provenance"].iloc[1])["nested"] == {"a": [1, 2.5, None]}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_device_argument_sets_the_device(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"lut{suffix}"
    export_table(_source(), DEVICE, path)
    target = MemoryLatencyTable()
    assert import_table(target, path, device="iphone14pro-coreml-ane") == 3
    assert target.devices() == ["iphone14pro-coreml-ane"]
    assert target.snapshot("iphone14pro-coreml-ane") == _source().snapshot(DEVICE)


def test_a_file_without_rows_is_refused(tmp_path: Path) -> None:
    # A header alone is no table (an upload of one was taken for a successful import of nothing).
    path = tmp_path / "empty.parquet"
    assert export_table(_source(), "no-such-device", path) == 0
    with pytest.raises(ValueError, match="has no rows"):
        import_table(MemoryLatencyTable(), path)


def test_import_without_device_column_needs_device_argument(tmp_path: Path) -> None:
    path = tmp_path / "farm.csv"
    path.write_text("key,median_ms,p10_ms,p90_ms,count\ntiny.head|dim=4,1.5,1.0,2.0,10\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['device'\].*device="):
        import_table(MemoryLatencyTable(), path)
    target = MemoryLatencyTable()
    assert import_table(target, path, device="pixel8-tflite") == 1
    entry = target.entries("pixel8-tflite")[0]
    assert (entry.kind, entry.median_ms, entry.count, entry.provenance) == ("tiny.head", 1.5, 10, {})


def _write(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    path = tmp_path / "bad.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "device": DEVICE,
        "key": "tiny.head|dim=4",
        "kind": "tiny.head",
        "median_ms": 1.0,
        "p10_ms": 0.5,
        "p90_ms": 2.0,
        "count": 3,
        "provenance": "{}",
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"median_ms": "fast"}, r"column 'median_ms' must hold finite numbers; rows \[2\] have \['fast'\]"),
        ({"p90_ms": "inf"}, r"column 'p90_ms' must hold finite numbers; rows \[2\]"),
        ({"p10_ms": ""}, r"column 'p10_ms' must hold finite numbers; rows \[2\]"),
        ({"p10_ms": -0.5}, r"column 'p10_ms' must be in \[0, 3600000\] \(milliseconds\); rows \[2\]"),
        ({"median_ms": 1e308, "p90_ms": 1e308}, r"column 'median_ms' must be in \[0, 3600000\]"),
        (
            {"p10_ms": 3.0, "median_ms": 2.0, "p90_ms": 1.0},
            r"p10_ms <= median_ms <= p90_ms must hold; rows \[2\]",
        ),
        ({"count": 0}, r"column 'count' must hold integers in \[1, 2147483647\]; rows \[2\]"),
        ({"count": 2.5}, r"column 'count' must hold integers in \[1, 2147483647\]; rows \[2\]"),
        ({"count": 10**12}, r"column 'count' must hold integers in \[1, 2147483647\]; rows \[2\]"),
        ({"key": ""}, r"column 'key' must hold non-empty text; rows \[2\]"),
        ({"key": "tiny.head|dim=" + "8" * 2000}, r"column 'key' holds at most 1024 characters; rows \[2\]"),
        ({"key": "tiny.head|dim=8\x00"}, r"column 'key' must not hold control characters"),
        ({"provenance": json.dumps({"a": "b\x00"})}, r"column 'provenance' row 2: text with a NUL"),
        ({"provenance": "[" * 40 + "]" * 40}, r"column 'provenance' row 2: expected a JSON object"),
        ({"provenance": '{"a":' * 40 + "1" + "}" * 40}, r"column 'provenance' row 2: nested deeper than 32"),
        ({"device": " "}, r"column 'device' must hold non-empty text; rows \[2\]"),
        ({"provenance": "{not json"}, r"column 'provenance' row 2: not a JSON object"),
        ({"provenance": "[1, 2]"}, r"column 'provenance' row 2: expected a JSON object"),
    ],
)
def test_bad_values_are_named_and_nothing_is_written(
    tmp_path: Path, bad: dict[str, object], message: str
) -> None:
    path = _write(tmp_path, [_row(key="tiny.head|dim=8"), _row(**bad)])
    target = MemoryLatencyTable()
    with pytest.raises(ValueError, match=message):
        import_table(target, path)
    assert target.devices() == []


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "partial.parquet"
    pd.DataFrame([{"device": DEVICE, "key": "k|a=1", "median_ms": 1.0}]).to_parquet(path)
    with pytest.raises(ValueError, match=r"lacks the columns \['p10_ms', 'p90_ms', 'count'\]"):
        import_table(MemoryLatencyTable(), path)


@pytest.mark.parametrize("name", ["lut.json", "lut", "lut.csv.gz"])
def test_unknown_suffix_names_the_allowed_ones(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"allowed suffixes: \['.csv', '.parquet'\]"):
        export_table(_source(), DEVICE, tmp_path / name)
    with pytest.raises(ValueError, match=r"allowed suffixes"):
        import_table(MemoryLatencyTable(), tmp_path / name)


def test_import_into_a_sql_table_upserts(tmp_path: Path) -> None:
    path = tmp_path / "lut.csv"
    export_table(_source(), DEVICE, path)
    table = SqlLatencyTable(sa.create_engine(f"sqlite:///{tmp_path / 'lut.db'}"))
    table.put(LatencyEntry(DEVICE, "tiny.head|dim=8", 99.0, 99.0, 99.0, 1))
    assert import_table(table, path) == 3
    assert table.entries(DEVICE) == sorted(_entries(), key=lambda e: e.key)
    table.engine.dispose()
