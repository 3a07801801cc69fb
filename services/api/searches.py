"""`/v1/searches`: submit, list, inspect, follow (server-sent events), page through and export trials,
read the front, cancel."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.engine import Engine

from nas import SearchSpec, TrialState
from nas.objectives import PARAMETRIZED_OBJECTIVES, PLAIN_OBJECTIVES
from services.api.deps import LutDep, QueueDep, StoreDep
from services.api.errors import ResourceNotFoundError
from services.api.measurements import space_at
from services.api.spaces import EXPORT_RESPONSES, subnet_file
from services.auth import Scope, scope_by_method
from services.db import SearchRow, SearchStatus, TrialRow
from services.schemas import (
    ErrorBody,
    ObjectiveOut,
    ParetoOut,
    SearchCreated,
    SearchLinks,
    SearchOut,
    SearchPage,
    TrialOut,
    TrialPage,
)
from services.search_queue import SearchQueue, check_spec

MAX_TRIALS_PAGE = 1000
MAX_SEARCHES_PAGE = 200
MAX_PARETO_PAGE = 10_000
#: Largest offset or trial number a request may name (both databases' integer range).
MAX_NUMBER = 2**31 - 1
#: Trials read per query while exporting: the export's memory is bounded by this, not by the search.
EXPORT_CHUNK = 2000
#: Seconds between two keep-alive comments of an idle event stream.
EVENTS_KEEPALIVE_S = 15.0

_T = TrialRow.__table__
_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
ExportFormat = Literal["csv", "parquet"]

router = APIRouter(
    prefix="/v1/searches",
    tags=["searches"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    dependencies=[scope_by_method(read=Scope.SEARCHES_READ, write=Scope.SEARCHES_WRITE)],
)


@router.post("", status_code=202, response_model=SearchCreated)
def submit(spec: SearchSpec, queue: QueueDep, lut: LutDep) -> SearchCreated:
    """Validate a search spec and queue it; the scheduler picks it up."""
    row = queue.submit(check_spec(spec, lut).spec)  # the resolved spec: `proxy:default` expanded
    return SearchCreated(id=row.id, status=SearchStatus(row.status), links=SearchLinks.of(row.id))


@router.get("", response_model=SearchPage)
def list_searches(
    queue: QueueDep,
    status: Annotated[SearchStatus | None, Query(description="only searches in this status")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_NUMBER)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCHES_PAGE)] = 50,
) -> SearchPage:
    rows, total = queue.page(status=[status] if status else (), offset=offset, limit=limit)
    return SearchPage(items=[SearchOut.of(r) for r in rows], total=total, offset=offset, limit=limit)


@router.get("/{search_id}", response_model=SearchOut)
def get_search(search_id: str, queue: QueueDep) -> SearchOut:
    """A search with its `progress`: trial counts, elapsed seconds and the estimated seconds left."""
    return SearchOut.of(queue.get(search_id))


@router.get(
    "/{search_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def events(
    search_id: str,
    request: Request,
    queue: QueueDep,
    poll_s: Annotated[
        float, Query(ge=0.05, le=30, description="seconds between two reads of the search")
    ] = 1.0,
) -> StreamingResponse:
    """Server-sent events: `progress` whenever the search's counts or status change (the first at
    once), `end` with the final state when it has finished; then the stream closes. Each event's
    `data` is the search as `GET /v1/searches/{id}` returns it, without its spec."""
    row = await anyio.to_thread.run_sync(queue.get, search_id)  # 404 before the stream starts
    return StreamingResponse(
        _event_stream(queue, row, request, poll_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _event_stream(
    queue: SearchQueue, row: SearchRow, request: Request, poll_s: float
) -> AsyncIterator[bytes]:
    last_key: tuple[Any, ...] | None = None
    idle_s = 0.0
    while True:
        key = (row.status, row.trials_done, row.trials_failed, row.front_size, row.status_message)
        finished = SearchStatus(row.status).finished
        if finished:
            yield sse_event("end", _event_data(row), event_id=row.trials_done)
            return
        if key != last_key:
            yield sse_event("progress", _event_data(row), event_id=row.trials_done)
            last_key, idle_s = key, 0.0
        elif idle_s >= EVENTS_KEEPALIVE_S:
            yield b": keep-alive\n\n"
            idle_s = 0.0
        await anyio.sleep(poll_s)
        idle_s += poll_s
        if await request.is_disconnected():
            return
        # One primary-key read per poll.
        row = await anyio.to_thread.run_sync(queue.get, row.id)


def _event_data(row: SearchRow) -> dict[str, Any]:
    data = SearchOut.of(row).model_dump(mode="json")
    data.pop("spec", None)
    return data


def sse_event(event: str, data: Mapping[str, Any], *, event_id: int | None = None) -> bytes:
    """One server-sent event (`event:`, optional `id:`, one `data:` line of JSON, blank line)."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return ("\n".join(lines) + "\n\n").encode()


@router.get(
    "/{search_id}/trials",
    response_model=TrialPage,
    responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}},
)
def list_trials(
    search_id: str,
    queue: QueueDep,
    store: StoreDep,
    offset: Annotated[int, Query(ge=0, le=MAX_NUMBER)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_TRIALS_PAGE)] = 100,
    state: Annotated[TrialState | None, Query(description="only trials in this state")] = None,
    after: Annotated[
        int | None,
        Query(
            ge=-1,
            le=MAX_NUMBER,
            description="keyset paging: trials numbered above this (the last number of the previous "
            "page; -1 for the first), read from the index at any depth; `offset` must then be 0",
        ),
    ] = None,
    format: Annotated[
        Literal["json", "csv", "parquet"],
        Query(description="json: one page; csv or parquet: every trial as a file (as /trials/export)"),
    ] = "json",
) -> Any:
    """One page of the search's trials by number: `offset`/`limit`, or `after`/`limit` (cheaper on deep
    pages). `total` counts the trials (in `state`, if given)."""
    row = queue.get(search_id)
    if format != "json":
        return _export_response(store.engine, row, format, state)
    if after is None:
        trials = store.trials(search_id, offset=offset, limit=limit, state=state)
    else:
        if offset:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("query", "offset"),
                        "msg": "offset must be 0 with after",
                        "input": offset,
                    }
                ]
            )
        query = sa.select(_T).where(_T.c.search_id == search_id, _T.c.number > after)
        if state is not None:
            query = query.where(_T.c.state == TrialState(state).value)
        with store.engine.connect() as conn:
            trials = [_to_trial(r) for r in conn.execute(query.order_by(_T.c.number).limit(limit))]
    total = _trial_total(row, store, state)
    return TrialPage(items=[TrialOut.of(t) for t in trials], total=total, offset=offset, limit=limit)


def _trial_total(row: SearchRow, store: Any, state: TrialState | None) -> int:
    """Trials of the search (in `state`). A search that succeeded or was cancelled had its counts
    written from the store when it stopped, and they no longer change: those are read from its row
    instead of counting 100,000 trials on every page (PostgreSQL counts by visiting the rows)."""
    if SearchStatus(row.status) in (SearchStatus.SUCCEEDED, SearchStatus.CANCELLED):
        if state is None:
            return row.trials_done
        failed = row.trials_failed
        return failed if TrialState(state) == TrialState.FAILED else row.trials_done - failed
    return store.count(row.id, state=state)


@router.get(
    "/{search_id}/trials/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}},
)
def export_trials(
    search_id: str,
    queue: QueueDep,
    store: StoreDep,
    format: Annotated[ExportFormat, Query(description="csv or parquet")] = "csv",
    state: Annotated[TrialState | None, Query(description="only trials in this state")] = None,
) -> StreamingResponse:
    """Every trial of the search, one row each, with flat columns: `number`, `config_id`, `state`,
    `feasible`, `on_front`, `duration_s`, `finished_at`, `error`, then `value.<objective>`,
    `config.<choice>` and `metric.<name>` (scalar metrics). Read in chunks of 2,000 trials, so memory
    stays bounded at any search size (CSV streams; Parquet is spooled to a temporary file)."""
    return _export_response(store.engine, queue.get(search_id), format, state)


def _export_response(engine: Engine, row: SearchRow, fmt: str, state: TrialState | None) -> StreamingResponse:
    spec = SearchSpec.model_validate(row.spec)
    name = f"trials-{row.id}.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    chunks = _flat_chunks(engine, row.id, spec, state)
    body = _csv_stream(chunks) if fmt == "csv" else _parquet_stream(chunks)
    return StreamingResponse(body, media_type=_MEDIA_TYPES[fmt], headers=headers)


_BASE_COLUMNS = ["number", "config_id", "state", "feasible", "on_front", "duration_s", "finished_at", "error"]


def _config_columns(spec: SearchSpec) -> list[str]:
    from search_spaces import get_space

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


@router.get("/{search_id}/trials/{number}", response_model=TrialOut)
def get_trial(
    search_id: str, number: Annotated[int, PathParam(ge=0, le=MAX_NUMBER)], queue: QueueDep, store: StoreDep
) -> TrialOut:
    """One trial by its number (404 naming the numbers that exist when it does not)."""
    queue.get(search_id)
    trial = store.get(search_id, number)
    if trial is None:
        count = store.count(search_id)
        raise ResourceNotFoundError(
            f"search {search_id} has no trial {number}; it has {count} trials",
            field="number",
            allowed=f"0..{count - 1}" if count else None,
        )
    return TrialOut.of(trial)


@router.get("/{search_id}/trials/{number}/export", response_class=Response, responses=EXPORT_RESPONSES)
def export_trial(
    search_id: str,
    number: Annotated[int, PathParam(ge=0, le=MAX_NUMBER)],
    queue: QueueDep,
    store: StoreDep,
    format: Annotated[
        Literal["onnx", "torchscript", "coreml"], Query(description="model file format")
    ] = "onnx",
) -> Response:
    """The subnet of one trial as a model file, at the search's space options (as
    `POST /v1/spaces/{name}/export` builds it: same limits and errors). The dashboard links here."""
    spec = SearchSpec.model_validate(queue.get(search_id).spec)
    trial = get_trial(search_id, number, queue, store)
    space = space_at(spec.space, spec.space_options)
    return subnet_file(space, space.canonicalize(trial.config), format)


@router.get("/{search_id}/pareto", response_model=ParetoOut)
def pareto(
    search_id: str,
    queue: QueueDep,
    store: StoreDep,
    offset: Annotated[int, Query(ge=0, le=MAX_NUMBER)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PARETO_PAGE)] = MAX_PARETO_PAGE,
) -> Response:
    """The current Pareto front (final once the search has finished), one page of its members.

    The runner keeps front membership up to date as trials arrive (a flag on the trial rows, indexed
    with the search id), so this read costs the same at 100 trials and at 100,000."""
    row = queue.get(search_id)
    spec = SearchSpec.model_validate(row.spec)
    of_front = (_T.c.search_id == search_id) & _T.c.on_front
    query = sa.select(*_MEMBER_COLUMNS).where(of_front).order_by(_T.c.number).offset(offset).limit(limit)
    with store.engine.connect() as conn:
        members = [_member_json(r) for r in conn.execute(query)]
        if offset == 0 and len(members) < limit:
            total = len(members)
        else:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(_T).where(of_front)).scalar_one())
    head = ParetoOut(
        search_id=row.id,
        status=SearchStatus(row.status),
        objectives=[ObjectiveOut(name=name.strip(), direction=_direction(name)) for name in spec.objectives],
        constraints=list(spec.constraints),
        hypervolume=row.hypervolume,
        total=total,
        offset=offset,
        limit=limit,
        trials=[],
    ).model_dump_json(exclude={"trials"})
    return Response(f'{head[:-1]},"trials":[{",".join(members)}]}}', media_type="application/json")


# A front's members go out as the database holds them: their JSON columns are read as text and
# spliced into the answer, not decoded and encoded again (that was most of the read's time at a few
# hundred members). The shape is `TrialOut`'s.
_JSON_COLUMNS = ("config", "values", "metrics")
_MEMBER_COLUMNS = [
    *(_T.c[name] for name in TrialOut.model_fields if name not in _JSON_COLUMNS),
    *(sa.cast(_T.c[name], sa.Text).label(name) for name in _JSON_COLUMNS),
]


def _member_json(row: sa.Row) -> str:
    m = row._mapping
    finished = m["finished_at"]
    scalars = {
        "number": m["number"],
        "config_id": m["config_id"],
        "state": m["state"],
        "feasible": bool(m["feasible"]),
        "error": m["error"],
        "duration_s": float(m["duration_s"]),
        "finished_at": finished.isoformat().replace("+00:00", "Z") if finished is not None else None,
    }
    head = json.dumps(scalars, separators=(",", ":"))
    return f'{head[:-1]},"config":{m["config"]},"values":{m["values"]},"metrics":{m["metrics"]}}}'


@router.post("/{search_id}/cancel", response_model=SearchOut, responses={409: {"model": ErrorBody}})
def cancel(search_id: str, queue: QueueDep) -> SearchOut:
    """Queued: cancelled at once. Running: stops after the trials in flight. Finished: 409."""
    return SearchOut.of(queue.cancel(search_id))


def _to_trial(row: sa.Row) -> Any:
    from services.store import _to_trial as to_trial

    return to_trial(row)


def _direction(objective: str) -> str:
    objective = objective.strip()
    kind = objective.partition(":")[0]
    return PLAIN_OBJECTIVES.get(objective) or PARAMETRIZED_OBJECTIVES.get(kind, "minimize")
