"""`/v1/searches`: submit, list, inspect, page through trials, read the front, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from nas import SearchSpec, TrialState
from nas.objectives import PARAMETRIZED_OBJECTIVES, PLAIN_OBJECTIVES
from services.api.deps import LutDep, QueueDep, StoreDep
from services.db import SearchStatus
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
from services.search_queue import check_spec

MAX_TRIALS_PAGE = 1000
MAX_SEARCHES_PAGE = 200

router = APIRouter(
    prefix="/v1/searches",
    tags=["searches"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)


@router.post("", status_code=202, response_model=SearchCreated)
def submit(spec: SearchSpec, queue: QueueDep, lut: LutDep) -> SearchCreated:
    """Validate a search spec and queue it; the scheduler picks it up."""
    check_spec(spec, lut)
    row = queue.submit(spec)
    return SearchCreated(id=row.id, status=SearchStatus(row.status), links=SearchLinks.of(row.id))


@router.get("", response_model=SearchPage)
def list_searches(
    queue: QueueDep,
    status: Annotated[SearchStatus | None, Query(description="only searches in this status")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCHES_PAGE)] = 50,
) -> SearchPage:
    rows, total = queue.page(status=[status] if status else (), offset=offset, limit=limit)
    return SearchPage(items=[SearchOut.of(r) for r in rows], total=total, offset=offset, limit=limit)


@router.get("/{search_id}", response_model=SearchOut)
def get_search(search_id: str, queue: QueueDep) -> SearchOut:
    return SearchOut.of(queue.get(search_id))


@router.get("/{search_id}/trials", response_model=TrialPage)
def list_trials(
    search_id: str,
    queue: QueueDep,
    store: StoreDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_TRIALS_PAGE)] = 100,
    state: Annotated[TrialState | None, Query(description="only trials in this state")] = None,
) -> TrialPage:
    queue.get(search_id)
    trials = store.trials(search_id, offset=offset, limit=limit, state=state)
    total = store.count(search_id, state=state)
    return TrialPage(items=[TrialOut.of(t) for t in trials], total=total, offset=offset, limit=limit)


@router.get("/{search_id}/pareto", response_model=ParetoOut)
def pareto(search_id: str, queue: QueueDep, store: StoreDep) -> ParetoOut:
    """The current Pareto front (final once the search has finished)."""
    row = queue.get(search_id)
    spec = SearchSpec.model_validate(row.spec)
    return ParetoOut(
        search_id=row.id,
        status=SearchStatus(row.status),
        objectives=[ObjectiveOut(name=name.strip(), direction=_direction(name)) for name in spec.objectives],
        constraints=list(spec.constraints),
        hypervolume=row.hypervolume,
        trials=[TrialOut.of(t) for t in store.pareto(search_id)],
    )


@router.post("/{search_id}/cancel", response_model=SearchOut, responses={409: {"model": ErrorBody}})
def cancel(search_id: str, queue: QueueDep) -> SearchOut:
    """Queued: cancelled at once. Running: stops after the trials in flight. Finished: 409."""
    return SearchOut.of(queue.cancel(search_id))


def _direction(objective: str) -> str:
    objective = objective.strip()
    kind = objective.partition(":")[0]
    return PLAIN_OBJECTIVES.get(objective) or PARAMETRIZED_OBJECTIVES.get(kind, "minimize")
