"""A search's trials as one file: CSV (streamed) or Parquet (spooled), one row per trial with flat
columns `number`, `config_id`, `state`, `feasible`, `on_front`, `duration_s`, `finished_at`, `error`,
then `value.<objective>`, `config.<choice>` and `metric.<name>` (scalar metrics).

Trials are read `EXPORT_CHUNK` at a time (keyset pagination on `number`), so memory stays bounded at
any search size.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from nas import SearchSpec, TrialState
from search_spaces import get_space
from services.core.db import SearchRow, TrialRow

#: Trials read per query while exporting: the export's memory is bounded by this, not by the search.
EXPORT_CHUNK = 2000
TrialsFormat = Literal["csv", "parquet"]
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}

_T = TrialRow.__table__


@dataclass
class TrialsFile:
    """The export of a search's trials: its bytes (a lazy stream), media type and file name."""

    body: Iterator[bytes]
    media_type: str
    filename: str


def trials_file(engine: Engine, search: SearchRow, fmt: TrialsFormat, state: TrialState | None) -> TrialsFile:
    """Every trial of `search` (in `state`) as a `fmt` file."""
    spec = SearchSpec.model_validate(search.spec)
    chunks = _flat_chunks(engine, search.id, spec, state)
    body = _csv_stream(chunks) if fmt == "csv" else _parquet_stream(chunks)
    return TrialsFile(body, MEDIA_TYPES[fmt], f"trials-{search.id}.{fmt}")


_BASE_COLUMNS = ["number", "config_id", "state", "feasible", "on_front", "duration_s", "finished_at", "error"]


def _config_columns(spec: SearchSpec) -> list[str]:
    try:
        space = get_space(spec.space, **spec.space_options)
        return [choice.name for choice in space.choices()]
    except Exception:  # a space no longer registered: the columns come from the trials instead
        return []


def _flat_chunks(
    engine: Engine, search_id: str, spec: SearchSpec, state: TrialState | None
) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
    """The search's trials as flat rows, `EXPORT_CHUNK` at a time (keyset pagination on `number`),
    each chunk with the column list (fixed by the first chunk)."""
    objectives = [o.strip() for o in spec.objectives]
    config_keys = _config_columns(spec)
    columns: list[str] | None = None
    after = -1
    while True:
        query = (
            sa.select(_T)
            .where(_T.c.search_id == search_id, _T.c.number > after)
            .order_by(_T.c.number)
            .limit(EXPORT_CHUNK)
        )
        if state is not None:
            query = query.where(_T.c.state == TrialState(state).value)
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        if columns is None:
            if not config_keys:
                config_keys = list(dict.fromkeys(k for r in rows for k in r["config"]))
            metric_keys = sorted(
                {k for r in rows for k, v in r["metrics"].items() if isinstance(v, int | float | bool)}
            )
            columns = [
                *_BASE_COLUMNS,
                *(f"value.{o}" for o in objectives),
                *(f"config.{k}" for k in config_keys),
                *(f"metric.{k}" for k in metric_keys),
            ]
        yield columns, [_flatten(r, objectives, config_keys, metric_keys) for r in rows]
        if len(rows) < EXPORT_CHUNK:
            return
        after = rows[-1]["number"]


def _flatten(
    row: Mapping[str, Any], objectives: list[str], config_keys: list[str], metric_keys: list[str]
) -> dict[str, Any]:
    flat = {name: row[name] for name in _BASE_COLUMNS}
    values, config, metrics = row["values"], row["config"], row["metrics"]
    for o in objectives:
        flat[f"value.{o}"] = values.get(o)
    for k in config_keys:
        flat[f"config.{k}"] = config.get(k)
    for k in metric_keys:
        value = metrics.get(k)
        flat[f"metric.{k}"] = value if isinstance(value, int | float | bool) else None
    return flat


def _csv_stream(chunks: Iterator[tuple[list[str], list[dict[str, Any]]]]) -> Iterator[bytes]:
    header_written = False
    for columns, rows in chunks:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        if not header_written:
            writer.writeheader()
            header_written = True
        for row in rows:
            finished = row["finished_at"]
            writer.writerow(
                {**row, "finished_at": finished.isoformat() if isinstance(finished, datetime) else ""}
            )
        yield buffer.getvalue().encode()


def _parquet_stream(chunks: Iterator[tuple[list[str], list[dict[str, Any]]]]) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        writer: pq.ParquetWriter | None = None
        schema: pa.Schema | None = None
        for columns, rows in chunks:
            if schema is None:
                schema = _arrow_schema(columns, rows)
                writer = pq.ParquetWriter(spool, schema, compression="zstd")
            if rows:
                assert writer is not None
                data = {c: [r.get(c) for r in rows] for c in columns}
                writer.write_table(pa.Table.from_pydict(data, schema=schema))
        if writer is not None:
            writer.close()
        spool.seek(0)
        while block := spool.read(1 << 20):
            yield block


def _arrow_schema(columns: list[str], rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    fixed = {
        "number": pa.int64(),
        "config_id": pa.string(),
        "state": pa.string(),
        "feasible": pa.bool_(),
        "on_front": pa.bool_(),
        "duration_s": pa.float64(),
        "finished_at": pa.timestamp("us", tz="UTC"),
        "error": pa.string(),
    }
    fields = []
    for column in columns:
        if column in fixed:
            kind = fixed[column]
        elif column.startswith("value."):
            kind = pa.float64()
        else:
            sample = [r[column] for r in rows if r.get(column) is not None]
            kind = _arrow_type(sample)
        fields.append(pa.field(column, kind))
    return pa.schema(fields)


def _arrow_type(sample: list[Any]) -> Any:
    import pyarrow as pa

    if sample and all(isinstance(v, bool) for v in sample):
        return pa.bool_()
    if sample and all(isinstance(v, int) and not isinstance(v, bool) for v in sample):
        return pa.int64()
    if sample and all(isinstance(v, int | float) and not isinstance(v, bool) for v in sample):
        return pa.float64()
    return pa.string() if sample else pa.float64()
