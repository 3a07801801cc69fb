"""CSV and Parquet files of latency tables: how tables travel between farms, hosts and people.

A file has the columns `device, key, kind, median_ms, p10_ms, p90_ms, count, provenance`, one row per
entry; `provenance` is a JSON object written as a string (in both formats, so heterogeneous
provenance survives Parquet's typed columns). The format follows the path's suffix.

An import validates the whole file before it writes anything, and then writes it in one transaction
(`LatencyTable.put_many`): a file with a bad row changes nothing. What every row must hold:
non-empty text without control characters, keys of at most `MAX_KEY_CHARS` characters, finite
latencies in [0, `MAX_LATENCY_MS`] with p10 <= median <= p90, counts in [1, 2**31 - 1], provenance
a JSON object of at most `MAX_PROVENANCE_DEPTH` levels and `MAX_PROVENANCE_BYTES` bytes; and at least
one row. `key_check` adds a caller's rules for keys (the service checks them against the spaces:
`latency_lut.key_checks.table_row_problem`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latency_lut._table import LatencyEntry, LatencyTable
from latency_lut.key_checks import MAX_KEY_CHARS

COLUMNS = ("device", "key", "kind", "median_ms", "p10_ms", "p90_ms", "count", "provenance")
SUFFIXES = (".csv", ".parquet")

_LATENCY_COLUMNS = ("median_ms", "p10_ms", "p90_ms")
# `kind` follows from the key and `provenance` may be unknown; `device` may come from `device=`.
_OPTIONAL_COLUMNS = ("kind", "provenance")
#: The largest latency a table holds (one hour): beyond it a block was not timed but stalled, and
#: sums of such figures would overflow.
MAX_LATENCY_MS = 3_600_000.0
#: The largest sample count (the count column is a 32-bit integer on PostgreSQL).
MAX_COUNT = 2**31 - 1
#: Nesting levels and bytes (as compact JSON) of one row's provenance.
MAX_PROVENANCE_DEPTH = 32
MAX_PROVENANCE_BYTES = 64 * 1024

#: A caller's check of a row's key (with its provenance): a message saying what is wrong, or None.
KeyCheck = Callable[[str, Mapping[str, Any]], str | None]


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


def _check_provenance(value: dict[str, Any], row: int) -> None:
    """Depth, size and NUL characters of one row's provenance (`ValueError` naming the row)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            raise ValueError(f"column 'provenance' row {row}: text with a NUL character")
        if isinstance(item, dict | list):
            if depth > MAX_PROVENANCE_DEPTH:
                raise ValueError(
                    f"column 'provenance' row {row}: nested deeper than {MAX_PROVENANCE_DEPTH} levels"
                )
            children = list(item.values()) + list(item.keys()) if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        raise ValueError(f"column 'provenance' row {row}: holds NaN or infinity, not JSON") from None
    if size > MAX_PROVENANCE_BYTES:
        raise ValueError(
            f"column 'provenance' row {row}: {size:,} bytes as JSON; at most {MAX_PROVENANCE_BYTES:,}"
        )


def _texts(frame: pd.DataFrame, column: str, *, required: bool, max_chars: int = 200) -> list[str]:
    values = frame[column]
    bad = values.isna() | ~values.map(lambda v: isinstance(v, str))
    if required:
        bad |= values.map(lambda v: not (isinstance(v, str) and v.strip()))
    if bad.any():
        raise ValueError(
            f"column {column!r} must hold {'non-empty ' if required else ''}text; "
            f"rows {_bad_rows(bad)} do not"
        )
    texts = [str(v) for v in values]
    long = pd.Series([len(t) > max_chars for t in texts], index=values.index)
    if long.any():
        raise ValueError(
            f"column {column!r} holds at most {max_chars} characters; rows {_bad_rows(long)} are longer"
        )
    control = pd.Series([any(ord(c) < 32 or c == "\x7f" for c in t) for t in texts], index=values.index)
    if control.any():
        raise ValueError(
            f"column {column!r} must not hold control characters (NUL, newlines, ...); "
            f"rows {_bad_rows(control)} do"
        )
    return texts


def read_entries(
    path: str | Path, *, device: str | None = None, key_check: KeyCheck | None = None
) -> list[LatencyEntry]:
    """Parse and validate a `.csv` or `.parquet` latency table file into entries.

    `device` sets (or overrides) every row's device; without it the file needs a `device` column.
    Raises `ValueError` naming the column and rows for anything the module docstring's rules refuse
    (missing columns, no rows, latencies that are not finite, negative, too large or out of order,
    counts that are not integers in range, empty or too long keys, provenance that is not a JSON
    object within its limits) and for keys `key_check` refuses (rows are counted from 1 after the
    header, at most five named).
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
    if n == 0:
        raise ValueError(f"latency table file {path.name!r} has no rows (a header alone imports nothing)")
    devices = _texts(frame, "device", required=True)
    keys = _texts(frame, "key", required=True, max_chars=MAX_KEY_CHARS)
    kinds = _texts(frame, "kind", required=False) if "kind" in frame.columns else [""] * n
    latencies = {column: _numbers(frame, column) for column in _LATENCY_COLUMNS}
    for column, values in latencies.items():
        bad = (values < 0) | (values > MAX_LATENCY_MS)
        if bad.any():
            raise ValueError(
                f"column {column!r} must be in [0, {MAX_LATENCY_MS:.0f}] (milliseconds); "
                f"rows {_bad_rows(bad)} are not"
            )
    disordered = (latencies["p10_ms"] > latencies["median_ms"]) | (
        latencies["median_ms"] > latencies["p90_ms"]
    )
    if disordered.any():
        raise ValueError(
            f"columns p10_ms <= median_ms <= p90_ms must hold; rows {_bad_rows(disordered)} break it"
        )
    counts = _numbers(frame, "count")
    not_count = (counts < 1) | (counts > MAX_COUNT) | (counts != counts.round())
    if not_count.any():
        raise ValueError(
            f"column 'count' must hold integers in [1, {MAX_COUNT}]; rows {_bad_rows(not_count)} do not"
        )
    provenances = (
        [_provenance(value, i + 1) for i, value in enumerate(frame["provenance"])]
        if "provenance" in frame.columns
        else [{} for _ in range(n)]
    )
    for i, provenance in enumerate(provenances):
        _check_provenance(provenance, i + 1)
    if key_check is not None:
        problems = [
            (i + 1, problem) for i, key in enumerate(keys) if (problem := key_check(key, provenances[i]))
        ]
        if problems:
            rows = [row for row, _ in problems[:5]]
            raise ValueError(
                f"column 'key': {len(problems)} row(s) hold keys that cannot be in a table, rows {rows}; "
                f"row {problems[0][0]}: {problems[0][1]}"
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


def import_table(
    table: LatencyTable, path: str | Path, *, device: str | None = None, key_check: KeyCheck | None = None
) -> int:
    """Validate a `.csv` or `.parquet` file and upsert its rows into `table`; returns how many.

    The whole file is validated before anything is written, then written by one `put_many` (one
    transaction on SQL tables), so a bad file changes nothing. `device` and `key_check` as in
    `read_entries`.
    """
    entries = read_entries(path, device=device, key_check=key_check)
    table.put_many(entries)
    return len(entries)
