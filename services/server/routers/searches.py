"""`/v1/searches`: submit, list, inspect, follow (server-sent events), page through and export trials,
read the front, cancel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse

from nas import SearchSpec, TrialState
from nas.objectives import objective_direction
from services.core.db import SearchRow, SearchStatus
from services.core.model_export import export_model
from services.core.search_phase import tables_to_measure
from services.core.search_queue import SearchForbiddenError, SearchQueue, check_spec, spec_warnings
from services.core.trial_export import TrialsFormat, trials_file
from services.server.deps import LutDep, QueueDep, ReadsDep, Scope, SettingsDep, StoreDep, scope_by_method
from services.server.errors import ResourceNotFoundError, space_at
from services.server.schemas import (
    EXPORT_RESPONSES,
    ErrorBody,
    ObjectiveOut,
    ParetoOut,
    SearchCreated,
    SearchLinks,
    SearchOut,
    SearchPage,
    StepOut,
    StepPage,
    TableToMeasureOut,
    TrialOut,
    TrialPage,
)

MAX_TRIALS_PAGE = 1000
MAX_SEARCHES_PAGE = 200
MAX_PARETO_PAGE = 10_000
MAX_STEPS_PAGE = 1000
#: Largest offset or trial number a request may name (both databases' integer range).
MAX_NUMBER = 2**31 - 1
#: Seconds between two keep-alive comments of an idle event stream.
EVENTS_KEEPALIVE_S = 15.0

router = APIRouter(
    prefix="/v1/searches",
    tags=["searches"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    dependencies=[scope_by_method(read=Scope.SEARCHES_READ, write=Scope.SEARCHES_WRITE)],
)


@router.post("", status_code=202, response_model=SearchCreated)
def submit(spec: SearchSpec, queue: QueueDep, lut: LutDep, settings: SettingsDep) -> SearchCreated:
    """Validate a search spec and queue it; the scheduler picks it up. `warnings` say what the spec
    will likely not achieve (a budget too small for the strategy's latency target); the search keeps
    them in its own `warnings`. `measure_first` counts the latency-table entries it will measure on
    its host before the first trial."""
    resolved = check_spec(spec, lut, supernet_dir=settings.supernet_dir)
    warnings = spec_warnings(resolved, lut)
    measure = tables_to_measure(resolved, lut)
    row = queue.submit(resolved.spec, warnings=warnings)  # the resolved spec: `proxy:default` expanded
    message = "queued"
    if measure:
        counts = ", ".join(f"{m.entries:,} entries of {m.device} ({m.blocks:,} blocks)" for m in measure)
        message += (
            f"; before its first trial the scheduler measures the missing latency-table entries: {counts}"
        )
    return SearchCreated(
        id=row.id,
        status=SearchStatus(row.status),
        links=SearchLinks.of(row.id),
        warnings=warnings,
        measure_first=[
            TableToMeasureOut(device=m.device, blocks=m.blocks, entries=m.entries) for m in measure
        ],
        message=message,
    )


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
    reads: ReadsDep,
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
        return _trials_file_response(reads, row, format, state)
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
        trials = reads.page_after(search_id, after=after, limit=limit, state=state)
    total = reads.count(row, state=state)
    return TrialPage(items=[TrialOut.of(t) for t in trials], total=total, offset=offset, limit=limit)


@router.get(
    "/{search_id}/trials/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}},
)
def export_trials(
    search_id: str,
    queue: QueueDep,
    reads: ReadsDep,
    format: Annotated[TrialsFormat, Query(description="csv or parquet")] = "csv",
    state: Annotated[TrialState | None, Query(description="only trials in this state")] = None,
) -> StreamingResponse:
    """Every trial of the search, one row each, with flat columns: `number`, `config_id`, `state`,
    `feasible`, `on_front`, `duration_s`, `finished_at`, `error`, then `value.<objective>`,
    `config.<choice>` and `metric.<name>` (scalar metrics). Read in chunks of 2,000 trials, so memory
    stays bounded at any search size (CSV streams; Parquet is spooled to a temporary file)."""
    return _trials_file_response(reads, queue.get(search_id), format, state)


def _trials_file_response(
    reads: ReadsDep, row: SearchRow, fmt: TrialsFormat, state: TrialState | None
) -> StreamingResponse:
    export = trials_file(reads.engine, row, fmt, state)
    headers = {"Content-Disposition": f'attachment; filename="{export.filename}"'}
    return StreamingResponse(export.body, media_type=export.media_type, headers=headers)


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
        Literal["onnx", "torchscript", "coreml", "quantized"],
        Query(
            description="model file format (quantized: packed weights + assignment JSON, bit-width spaces)"
        ),
    ] = "onnx",
) -> Response:
    """The subnet of one trial as a model file, at the search's space options (as
    `POST /v1/spaces/{name}/export` builds it: same limits and errors). The dashboard links here."""
    spec = SearchSpec.model_validate(queue.get(search_id).spec)
    trial = get_trial(search_id, number, queue, store)
    space = space_at(spec.space, spec.space_options)
    model = export_model(space, space.canonicalize(trial.config), format)
    headers = {"Content-Disposition": f'attachment; filename="{model.filename}"'}
    return Response(model.content, media_type=model.media_type, headers=headers)


@router.get("/{search_id}/pareto", response_model=ParetoOut)
def pareto(
    search_id: str,
    queue: QueueDep,
    reads: ReadsDep,
    offset: Annotated[int, Query(ge=0, le=MAX_NUMBER)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PARETO_PAGE)] = MAX_PARETO_PAGE,
) -> Response:
    """The current Pareto front (final once the search has finished), one page of its members by
    trial number. Costs the same at 100 trials and at 100,000 (front membership is indexed)."""
    row = queue.get(search_id)
    spec = SearchSpec.model_validate(row.spec)
    page = reads.front_page(search_id, offset=offset, limit=limit)
    head = ParetoOut(
        search_id=row.id,
        status=SearchStatus(row.status),
        objectives=[ObjectiveOut(name=n.strip(), direction=objective_direction(n)) for n in spec.objectives],
        constraints=list(spec.constraints),
        hypervolume=row.hypervolume,
        total=page.total,
        offset=offset,
        limit=limit,
        items=[],
    ).model_dump_json(exclude={"items"})
    # The members are JSON text as the database holds them (`TrialOut`'s shape), spliced in.
    return Response(f'{head[:-1]},"items":[{",".join(page.members_json)}]}}', media_type="application/json")


@router.get("/{search_id}/steps", response_model=StepPage)
def steps(
    search_id: str,
    queue: QueueDep,
    offset: Annotated[int, Query(ge=0, le=MAX_NUMBER)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_STEPS_PAGE)] = MAX_STEPS_PAGE,
) -> StepPage:
    """The step log of a stepwise search (`evolving`, `slimming`): per step the action taken, its
    quality and latency change, why it was chosen (its score under the strategy's rule and the
    runner-up) and every probed action. Written when the search ends; empty before that and for
    other strategies."""
    row = queue.get(search_id)
    log = list(row.steps or [])
    return StepPage(
        search_id=row.id,
        strategy=str((row.spec or {}).get("strategy", "")),
        final=SearchStatus(row.status).finished,
        items=[StepOut.of(step) for step in log[offset : offset + limit]],
        total=len(log),
        offset=offset,
        limit=limit,
    )


@router.post(
    "/{search_id}/cancel",
    response_model=SearchOut,
    responses={403: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)
def cancel(search_id: str, queue: QueueDep) -> SearchOut:
    """Queued: cancelled at once. Running: stops after the trials in flight. Finished: 409. Only the
    search's owner or an admin key may cancel it (403 for another key that may read it)."""
    try:
        return SearchOut.of(queue.cancel(search_id))
    except SearchForbiddenError as exc:
        detail = [{"field": "search_id", "message": str(exc), "allowed": ["owner", Scope.ADMIN.value]}]
        raise HTTPException(status_code=403, detail=detail) from None
