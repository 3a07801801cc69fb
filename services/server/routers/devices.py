"""`/v1/devices`: latency targets (built in, registered by farms, or known by an imported table) and
their work lists (uploads, table files, predictions and accuracy: `services.server.routers.measurements`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from latency_lut.measure import DEFAULT_TIMINGS
from latency_lut.timings import Timing
from search_spaces import SearchSpace
from services.core.measurement_store import DeviceConflictError, DeviceInfo
from services.server.deps import (
    SHORT_LIST_LIMIT,
    DeviceDep,
    MeasurementsDep,
    OffsetQuery,
    QueueDep,
    Scope,
    ShortListLimit,
    require_scope,
)
from services.server.errors import canonical_at, conflict, error_response, json_query_param, space_at
from services.server.schemas import DeviceIn, DeviceOut, DevicePage, WorkItem, WorkPage

# Each route declares its scope: farms write with lut:write, reading (and predicting) needs searches:read.
router = APIRouter(prefix="/v1/devices", tags=["devices"])
READ = [require_scope(Scope.SEARCHES_READ)]
WRITE = [require_scope(Scope.LUT_WRITE)]


def device_out(info: DeviceInfo) -> DeviceOut:
    return DeviceOut(**info.__dict__)


@router.get("", response_model=DevicePage, dependencies=READ)
def list_all(
    store: MeasurementsDep, offset: OffsetQuery = 0, limit: ShortListLimit = SHORT_LIST_LIMIT
) -> DevicePage:
    """Every device: built in, registered, or known by its table; with its table size."""
    devices = [device_out(info) for info in store.devices()]
    return DevicePage(items=devices[offset : offset + limit], total=len(devices), offset=offset, limit=limit)


@router.post(
    "", response_model=DeviceOut, status_code=201, responses={200: {"model": DeviceOut}}, dependencies=WRITE
)
def register(body: DeviceIn, store: MeasurementsDep, response: Response) -> DeviceOut:
    """Register a device (201), or update the description and metadata of one registered with the
    same runtime and hardware (200). Another runtime or hardware under a taken name: 409."""
    try:
        info, created = store.register_device(
            body.name,
            runtime=body.runtime,
            hardware=body.hardware,
            description=body.description,
            metadata=body.metadata,
        )
    except DeviceConflictError as exc:
        raise conflict(["name"], str(exc)) from None
    if not created:
        response.status_code = 200
    return device_out(info)


@router.get("/{device}", response_model=DeviceOut, dependencies=READ)
def describe(device: DeviceDep, store: MeasurementsDep) -> DeviceOut:
    return device_out(store.device(device))


@router.get("/{device}/work", response_model=WorkPage, dependencies=READ)
def work(
    device: DeviceDep,
    store: MeasurementsDep,
    queue: QueueDep,
    space: Annotated[str | None, Query(description="space name (or give `search`)")] = None,
    options: Annotated[
        str | None, Query(description='space options as JSON, e.g. {"resolution": 32}')
    ] = None,
    configs: Annotated[
        str | None,
        Query(description="JSON list of configs or reference names, or comma-separated reference names"),
    ] = None,
    search: Annotated[str | None, Query(description="a search id: its space and options")] = None,
    timing: Annotated[
        list[Timing] | None,
        Query(
            description="timings wanted (repeat the parameter; default: isolated, in_context, call_overhead)"
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """The table entries a space needs (at its options: of all its blocks, or those of `configs`; or
    the space of a search) that the device's table lacks, for each timing, in the space's order,
    paginated. Each item names what builds it, how to time it and the key to upload it under."""
    option_values = json_query_param("options", options, dict) or {}
    config_list: list[Any] | None = None
    if configs is not None:
        stripped = configs.strip()
        if stripped.startswith("["):
            config_list = json_query_param("configs", stripped, list)
        else:
            config_list = [name.strip() for name in stripped.split(",") if name.strip()]
    if search is not None:
        spec = queue.get(search).spec
        if space is not None and space != spec["space"]:
            return error_response(
                422,
                "space",
                f"search {search} is over space {spec['space']!r}, not {space!r}",
                [spec["space"]],
            )
        space, option_values = spec["space"], {**spec.get("space_options", {}), **option_values}
    if space is None:
        return error_response(422, "space", "give a space (or a search id)", "a registered space name")
    instance: SearchSpace = space_at(space, option_values, field="options")
    if config_list is not None:
        for i, config in enumerate(config_list):
            canonical_at(instance, config, field=f"configs[{i}]")
    page = store.work(device, instance, config_list, timing or DEFAULT_TIMINGS)
    items = [
        WorkItem(
            key=item.key,
            block_key=item.spec.key,
            timing=item.timing,
            after=None if item.after is None else item.after.key,
            kind=item.spec.kind,
            space=instance.name,
            options=dict(instance.options),
            params=item.spec.params,
        )
        for item in page.missing[offset : offset + limit]
    ]
    return WorkPage(
        device=device,
        space=instance.name,
        options=dict(instance.options),
        needed=page.needed,
        total=len(page.missing),
        offset=offset,
        limit=limit,
        items=items,
    )
