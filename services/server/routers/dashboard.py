"""The dashboard: the page at `/`, its static files, and the JSON it plots (`/v1/dashboard/...`).

The page itself is static (services/static); everything it shows comes from the REST API and from the
endpoints here, which add what a plot needs and a plain API does not: thinned point clouds, a
hypervolume curve, sorting by objective values, a subnet grouped by stage, LUT coverage.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse

from nas import TrialState
from nas.objectives import objective_direction
from search_spaces import get_space
from services.core import lut_coverage
from services.core.dashboard_data import (
    BASE_SORT_KEYS,
    hypervolume_curve,
    pick_objectives,
    plot_points,
    search_objectives,
    sort_numbers,
    structure,
)
from services.core.db import SearchStatus
from services.core.precision_view import precision_view
from services.server.deps import (
    LutDep,
    QueueDep,
    ReadsDep,
    Scope,
    StoreDep,
    TrialColumnsDep,
    public,
    require_scope,
)
from services.server.errors import ResourceNotFoundError
from services.server.schemas import ErrorBody, ObjectiveOut, PrecisionView, SearchOut, TrialOut
from services.server.schemas.dashboard import (
    Capabilities,
    CoverageRow,
    HypervolumeOut,
    PlotOut,
    SearchSummary,
    SearchSummaryPage,
    SortedTrialPage,
    TrialDetail,
)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
#: Export routes the page links to when a server has them (none is built in yet).
EXPORT_ROUTE = "/v1/searches/{search_id}/trials/{number}/export"
ACCURACY_ROUTE = "/v1/devices/{device}/accuracy"
MAX_PLOT_POINTS = 200_000
MAX_TABLE_PAGE = 500
#: Largest offset a request may name (larger ones overflowed SQLite's integers: a 500 found by fuzzing).
MAX_OFFSET = 2**31 - 1

api = APIRouter(
    prefix="/v1/dashboard",
    tags=["dashboard"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    dependencies=[require_scope(Scope.SEARCHES_READ)],
)
# The page and its scripts are public: they hold no data, and the page sends the user's key.
pages = APIRouter(include_in_schema=False, dependencies=[public()])


def plotly_js() -> Path | None:
    """plotly.min.js as shipped inside the `plotly` Python package, or None when it is not installed."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


# ----------------------------------------------------------------------------- pages
@pages.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


@pages.get("/dashboard")
def dashboard_alias() -> RedirectResponse:
    return RedirectResponse("/")


@pages.get("/vendor/plotly.min.js")
def vendor_plotly() -> FileResponse:
    path = plotly_js()
    if path is None:
        raise ResourceNotFoundError(
            "plotly.min.js is not installed: the dashboard's plots need the `plotly` Python package "
            "(a dependency of hwnas; reinstall with `make install`)",
            field="path",
        )
    return FileResponse(path, media_type="text/javascript", headers={"cache-control": "max-age=86400"})


# ----------------------------------------------------------------------------- JSON
@api.get("/capabilities", response_model=Capabilities)
def capabilities(request: Request) -> Capabilities:
    # From the OpenAPI schema (generated once, then cached by FastAPI): since FastAPI 0.16x, included
    # routers stay nested in `app.routes` and are not flattened into APIRoutes there.
    paths = set(request.app.openapi().get("paths", {}))
    has_export = EXPORT_ROUTE in paths
    return Capabilities(
        plotting_library=plotly_js() is not None,
        export_formats=["json", "onnx", "coreml"] if has_export else ["json"],
        export_url=EXPORT_ROUTE if has_export else None,
        device_accuracy=ACCURACY_ROUTE in paths,
    )


@api.get("/searches", response_model=SearchSummaryPage)
def searches(
    queue: QueueDep,
    reads: ReadsDep,
    status: Annotated[list[SearchStatus] | None, Query(description="only these statuses")] = None,
    q: Annotated[str, Query(max_length=200, description="text in the name or id")] = "",
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SearchSummaryPage:
    """Searches newest first with their progress and the best value of each objective on the front."""
    rows, total = queue.page(status=status or (), text=q, offset=offset, limit=limit)
    fronts = reads.front_values(row.id for row in rows)
    items = []
    for row in rows:
        names = [str(name).strip() for name in row.spec.get("objectives", [])]
        items.append(
            SearchSummary(
                **SearchOut.of(row).model_dump(),
                space=str(row.spec.get("space", "")),
                strategy=str(row.spec.get("strategy", "")),
                objectives=[ObjectiveOut(name=n, direction=objective_direction(n)) for n in names],
                best=_best(names, fronts.get(row.id, [])),
            )
        )
    return SearchSummaryPage(items=items, total=total, offset=offset, limit=limit)


@api.get("/searches/{search_id}/plot", response_model=PlotOut)
def plot(
    search_id: str,
    columns_cache: TrialColumnsDep,
    queue: QueueDep,
    objectives: Annotated[
        list[str] | None, Query(description="2 or 3 objectives (repeat the parameter); default: the first")
    ] = None,
    max_points: Annotated[
        int, Query(ge=100, le=MAX_PLOT_POINTS, description="points returned at most")
    ] = 20_000,
) -> PlotOut:
    """The front in the picked objectives (all members) and a stratified sample of the other trials."""
    row = queue.get(search_id)
    available = search_objectives(row.spec)
    picked = pick_objectives(available, objectives or available[:3])
    columns = columns_cache.get(search_id)
    data = plot_points(columns, picked, max_points=max_points)
    return PlotOut(search_id=search_id, status=row.status, trials_done=len(columns), **data)


@api.get("/searches/{search_id}/hypervolume", response_model=HypervolumeOut)
def hypervolume(
    search_id: str,
    columns_cache: TrialColumnsDep,
    queue: QueueDep,
    max_points: Annotated[int, Query(ge=2, le=5000)] = 300,
) -> HypervolumeOut:
    """Hypervolume of the feasible front over the search's objectives after each evaluation count."""
    row = queue.get(search_id)
    names = [str(name).strip() for name in row.spec.get("objectives", [])]
    columns = columns_cache.get(search_id)
    curve = hypervolume_curve(columns, names, max_points=max_points)
    return HypervolumeOut(search_id=search_id, objectives=names, live_hypervolume=row.hypervolume, **curve)


@api.get("/searches/{search_id}/trials", response_model=SortedTrialPage)
def trials(
    search_id: str,
    columns_cache: TrialColumnsDep,
    queue: QueueDep,
    reads: ReadsDep,
    sort: Annotated[str, Query(description="number, state, feasible or an objective")] = "number",
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_TABLE_PAGE)] = 25,
    state: Annotated[TrialState | None, Query(description="only trials in this state")] = None,
    feasible: Annotated[bool | None, Query(description="only (in)feasible trials")] = None,
) -> SortedTrialPage:
    """A page of trials sorted by any column, objectives included (the plain API sorts by number)."""
    row = queue.get(search_id)
    names = search_objectives(row.spec)
    columns = columns_cache.get(search_id)
    ordered = sort_numbers(
        columns,
        sort,
        order == "desc",
        objectives=names,
        state=state.value if state else None,
        feasible=feasible,
    )
    page = [int(n) for n in ordered[offset : offset + limit]]
    by_number = reads.by_number(search_id, page)
    return SortedTrialPage(
        items=[TrialOut.of(by_number[n]) for n in page if n in by_number],
        total=len(ordered),
        offset=offset,
        limit=limit,
        sort=sort,
        order=order,
        sortable=[*BASE_SORT_KEYS, *names],
        front_numbers=sorted(set(page) & reads.front_numbers(search_id)),
    )


@api.get("/searches/{search_id}/trials/{number}", response_model=TrialDetail)
def trial_detail(
    search_id: str, number: int, queue: QueueDep, store: StoreDep, reads: ReadsDep
) -> TrialDetail:
    """One trial with its config grouped stage by stage (for the subnet drawing)."""
    row = queue.get(search_id)
    trial = store.get(search_id, number)
    if trial is None:
        raise ResourceNotFoundError(
            f"search {search_id} has no trial {number} (it has {store.count(search_id)})", field="number"
        )
    space_name = str(row.spec.get("space", ""))
    options = dict(row.spec.get("space_options") or {})
    space = get_space(space_name, **options)
    choices = [choice.to_dict() for choice in space.choices()]
    view = precision_view(space, trial.config) if trial.config else None
    return TrialDetail(
        search_id=search_id,
        space=space_name,
        space_options=options,
        on_front=number in reads.front_numbers(search_id),
        trial=TrialOut.of(trial),
        stages=structure(trial.config, choices),
        precision=None if view is None else PrecisionView.model_validate(view),
    )


@api.get("/devices/coverage", response_model=list[CoverageRow])
def devices_coverage(queue: QueueDep, lut: LutDep) -> list[CoverageRow]:
    """For each device and space (at default options and at the options of stored searches): how
    many of the space's distinct blocks the device's latency table has."""
    specs, _ = queue.page(limit=200)
    rows = lut_coverage.coverage(lut, lut_coverage.space_targets(row.spec for row in specs))
    return [CoverageRow(**r) for r in rows]


# ----------------------------------------------------------------------------- helpers
def _best(names: list[str], front: list[dict[str, Any]]) -> dict[str, float]:
    best: dict[str, float] = {}
    for name in names:
        found = [float(v[name]) for v in front if isinstance(v.get(name), int | float)]
        if found:
            best[name] = min(found) if objective_direction(name) == "minimize" else max(found)
    return best
