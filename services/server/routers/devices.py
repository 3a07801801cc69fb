"""`/v1/devices`: latency targets (built in, registered by farms, or known by an imported table) and
their work lists (uploads, table files, predictions and accuracy: `services.server.routers.measurements`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from search_spaces import SearchSpace
from services.core.measurement_store import DeviceConflictError, DeviceInfo
from services.server.deps import DeviceDep, MeasurementsDep, QueueDep, Scope, require_scope
from services.server.errors import canonical_at, conflict, error_response, space_at
from services.server.schemas import DeviceIn, DeviceOut, WorkItem, WorkPage

# Each route declares its scope: farms write with lut:write, reading (and predicting) needs searches:read.
router = APIRouter(prefix="/v1/devices", tags=["devices"])
READ = [require_scope(Scope.SEARCHES_READ)]
WRITE = [require_scope(Scope.LUT_WRITE)]


def device_out(info: DeviceInfo) -> DeviceOut:
    return DeviceOut(**info.__dict__)


@router.get("", response_model=list[DeviceOut], dependencies=READ)
def list_all(store: MeasurementsDep) -> list[DeviceOut]:
    """Every device: built in, registered, or known by its table; with its table size."""
    return [device_out(info) for info in store.devices()]


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


def _json_param(name: str, text: str | None, kind: type) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, kind):
        shape = "a JSON object" if kind is dict else "a JSON list"
        raise _QueryError(name, f"{name} must be {shape}, got {text!r}", shape)
    return value


class _QueryError(Exception):
    def __init__(self, field: str, message: str, allowed: Any):
        super().__init__(message)
        self.field, self.message, self.allowed = field, message, allowed


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
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """The blocks a space needs (at its options: all of its blocks, or those of `configs`; or the
    space of a search) that the device's table lacks, in the space's order, paginated. Each item
    names what builds it."""
    try:
        option_values = _json_param("options", options, dict) or {}
        config_list: list[Any] | None = None
        if configs is not None:
            stripped = configs.strip()
            if stripped.startswith("["):
                config_list = _json_param("configs", stripped, list)
            else:
                config_list = [name.strip() for name in stripped.split(",") if name.strip()]
    except _QueryError as exc:
        return error_response(422, exc.field, exc.message, exc.allowed)
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
    page = store.work(device, instance, config_list)
    items = [
        WorkItem(
            key=spec.key,
            kind=spec.kind,
            space=instance.name,
            options=dict(instance.options),
            params=spec.params,
        )
        for spec in page.missing[offset : offset + limit]
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
