"""CSV and Parquet files of latency tables: how tables travel between farms, hosts and people.

A file has the columns `device, key, kind, median_ms, p10_ms, p90_ms, count, provenance`, one row per
entry; `provenance` is a JSON object written as a string (in both formats, so heterogeneous
provenance survives Parquet's typed columns). The format follows the path's suffix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latency_lut._table import LatencyEntry, LatencyTable

COLUMNS = ("device", "key", "kind", "median_ms", "p10_ms", "p90_ms", "count", "provenance")
SUFFIXES = (".csv", ".parquet")

_LATENCY_COLUMNS = ("median_ms", "p10_ms", "p90_ms")
# `kind` follows from the key and `provenance` may be unknown; `device` may come from `device=`.
_OPTIONAL_COLUMNS = ("kind", "provenance")
# Rows handed to the table per `put_many`.
_IMPORT_BATCH = 5000


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"unsupported latency table file {str(path)!r}: suffix {suffix or '(none)'!r}; "
            f"allowed suffixes: {list(SUFFIXES)}"
        )
    return suffix


def export_table(table: LatencyTable, device: str, path: str | Path) -> int:
    """Write the table of `device` to `path` (`.csv` or `.parquet`); returns the number of rows.

    An entry without a `kind` is written with its key's kind (the key's part before the first `|`).
    """
    path = Path(path)
    suffix = _format_of(path)
    rows = [entry.to_row() for entry in table.entries(device)]
    for row in rows:
        row["provenance"] = json.dumps(row["provenance"], sort_keys=True)
    frame = pd.DataFrame(rows, columns=list(COLUMNS)).astype(
        {
            "device": "object",
            "key": "object",
            "kind": "object",
            "median_ms": "float64",
            "p10_ms": "float64",
            "p90_ms": "float64",
            "count": "int64",
            "provenance": "object",
        }
    )
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return len(frame)


def _read(path: Path, suffix: str) -> pd.DataFrame:
    if suffix == ".csv":
        # Everything as text first, so that validation sees what the file says (pandas would turn
        # "NA" keys into NaN and "1e400" into inf without a word); floats are parsed exactly below.
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_parquet(path)


def _bad_rows(mask: pd.Series) -> list[int]:
    """Numbers of the flagged data rows, counted from 1 after the header; at most five."""
    return [int(i) + 1 for i in mask[mask].index[:5]]


def _number(value: Any) -> float:
    """`value` as a float (Python's parser: exact for text that `repr` wrote), NaN when it is none."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column].map(_number).astype("float64")
    bad = ~values.map(math.isfinite)
    if bad.any():
        examples = [frame[column].iloc[i - 1] for i in _bad_rows(bad)]
        raise ValueError(
            f"column {column!r} must hold finite numbers; rows {_bad_rows(bad)} have {examples!r}"
        )
    return values


def _provenance(value: Any, row: int) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"column 'provenance' row {row}: not a JSON object ({error})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"column 'provenance' row {row}: expected a JSON object, got {value!r}")
    return parsed


def _texts(frame: pd.DataFrame, column: str, *, required: bool) -> list[str]:
    values = frame[column]
    bad = values.isna() | ~values.map(lambda v: isinstance(v, str))
    if required:
        bad |= values.map(lambda v: not (isinstance(v, str) and v.strip()))
    if bad.any():
        raise ValueError(
            f"column {column!r} must hold {'non-empty ' if required else ''}text; "
            f"rows {_bad_rows(bad)} do not"
        )
    return [str(v) for v in values]


def read_entries(path: str | Path, *, device: str | None = None) -> list[LatencyEntry]:
    """Parse and validate a `.csv` or `.parquet` latency table file into entries.

    `device` sets (or overrides) every row's device; without it the file needs a `device` column.
    Raises `ValueError` naming the column and rows for missing columns, non-numeric or negative
    latencies, counts that are not positive integers, empty keys and provenance that is not JSON
    (rows are counted from 1 after the header, at most five named).
    """
    path = Path(path)
    frame = _read(path, _format_of(path)).reset_index(drop=True)
    required = [c for c in COLUMNS if c not in _OPTIONAL_COLUMNS and not (c == "device" and device)]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"latency table file {str(path)!r} lacks the columns {missing}; "
            f"expected columns: {list(COLUMNS)}"
            + ("" if device else " (or pass device= to set the device column)")
        )
    if device is not None:
        if not device.strip():
            raise ValueError("device must be a non-empty name")
        frame["device"] = device
    n = len(frame)
    devices = _texts(frame, "device", required=True)
    keys = _texts(frame, "key", required=True)
    kinds = _texts(frame, "kind", required=False) if "kind" in frame.columns else [""] * n
    latencies = {column: _numbers(frame, column) for column in _LATENCY_COLUMNS}
    for column, values in latencies.items():
        negative = values < 0
        if negative.any():
            raise ValueError(
                f"column {column!r} must be >= 0 (milliseconds); rows {_bad_rows(negative)} are not"
            )
    counts = _numbers(frame, "count")
    not_count = (counts < 1) | (counts != counts.round())
    if not_count.any():
        raise ValueError(f"column 'count' must hold integers >= 1; rows {_bad_rows(not_count)} do not")
    provenances = (
        [_provenance(value, i + 1) for i, value in enumerate(frame["provenance"])]
        if "provenance" in frame.columns
        else [{} for _ in range(n)]
    )
    return [
        LatencyEntry(
            device=devices[i],
            key=keys[i],
            median_ms=float(latencies["median_ms"].iloc[i]),
            p10_ms=float(latencies["p10_ms"].iloc[i]),
            p90_ms=float(latencies["p90_ms"].iloc[i]),
            count=int(counts.iloc[i]),
            kind=kinds[i] or keys[i].split("|", 1)[0],
            provenance=provenances[i],
        )
        for i in range(n)
    ]


def import_table(table: LatencyTable, path: str | Path, *, device: str | None = None) -> int:
    """Validate a `.csv` or `.parquet` file and upsert its rows into `table`; returns how many.

    The whole file is validated before anything is written, so a bad file changes nothing.
    `device` sets or overrides the device of every row (see `read_entries`).
    """
    entries = read_entries(path, device=device)
    for start in range(0, len(entries), _IMPORT_BATCH):
        table.put_many(entries[start : start + _IMPORT_BATCH])
    return len(entries)
