"""Request dependencies, as `Annotated` aliases, and how a request proves who sent it.

The objects requests need live on `app.state` (see `services.server.app`): the settings, the engine,
the search queue, the trial store and its read model, the latency table, the measurement store and
the prediction service. Path parameters that name a resource (`{device}`, `{name}` of a space) are
checked here, so a handler receives a name that exists or the request is a 404 naming what does.

Authentication: every API route declares its scope with a dependency, on the route or on its router:

    @router.get("/{id}", dependencies=[require_scope(Scope.SEARCHES_READ)])
    router = APIRouter(dependencies=[scope_by_method(read=Scope.SEARCHES_READ, write=Scope.SEARCHES_WRITE)])
    @router.get("", dependencies=[public()])      # health: no key needed

Every declaration on a route's way must hold (so a router's scope cannot be loosened by a route).
`api_routes(app.routes)` lists each route with what it declares; a test fails on any that declares
nothing. Clients send `Authorization: Bearer <key>` or `X-API-Key: <key>`: no or an unknown, revoked
or expired key is a 401, a key without the scope a 403; both JSON bodies name the scope needed.
Keys themselves (creation, hashing, scopes) are `services.core.auth`.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine

from latency_lut import BUILTIN_DEVICES, SqlLatencyTable
from search_spaces import FieldError, SearchSpace, UnknownSpaceError, get_space, space_class
from services.core.auth import READ_METHODS, Scope, SearchAccess, scope_allowed, verify_token
from services.core.dashboard_data import TrialColumnsCache
from services.core.measurement_store import MeasurementStore, UnknownDeviceError
from services.core.prediction_service import PredictionService
from services.core.search_queue import SearchQueue
from services.core.trial_reads import TrialReads
from services.core.trial_store import SqlTrialStore
from services.server.errors import ResourceNotFoundError
from services.server.middleware import RequestStats
from services.settings import Settings

__all__ = [
    "DeviceDep",
    "EngineDep",
    "HeavyRequestDep",
    "LutDep",
    "MeasurementsDep",
    "PredictionsDep",
    "QueueDep",
    "ReadsDep",
    "RequestStatsDep",
    "Scope",
    "SettingsDep",
    "SpaceName",
    "StoreDep",
    "TrialColumnsDep",
    "api_routes",
    "check_request_inputs",
    "host_tables_need_admin",
    "public",
    "require_scope",
    "scope_by_method",
]

_STATE_LOCK = threading.Lock()


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def app_engine(request: Request) -> Engine:
    return request.app.state.engine


def app_queue(request: Request) -> SearchQueue:
    """The search queue as the request's caller sees it: its own searches (and every one with
    `searches:read-all` or `admin`); what it submits is its own (see `services.core.auth`)."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        # The route's scope check runs first and records the caller; this only guards the order.
        principal = authenticate(request, Scope.SEARCHES_READ.value)
    return request.app.state.queue.with_access(principal.search_access())


def app_store(request: Request) -> SqlTrialStore:
    return request.app.state.store


def app_reads(request: Request) -> TrialReads:
    return request.app.state.reads


def app_lut(request: Request) -> SqlLatencyTable:
    return request.app.state.lut


def app_trial_columns(request: Request) -> TrialColumnsCache:
    return request.app.state.dashboard_columns


def app_request_stats(request: Request) -> RequestStats | None:
    return getattr(request.app.state, "request_stats", None)


def app_measurements(request: Request) -> MeasurementStore:
    """The app's `MeasurementStore`, created on first use from its engine and latency table."""
    state = request.app.state
    with _STATE_LOCK:
        if getattr(state, "measurements", None) is None:
            state.measurements = MeasurementStore(state.engine, state.lut)
            state.predictions = PredictionService(state.measurements)
    return state.measurements


def app_predictions(
    request: Request, _store: Annotated[MeasurementStore, Depends(app_measurements)]
) -> PredictionService:
    return request.app.state.predictions


SettingsDep = Annotated[Settings, Depends(app_settings)]
EngineDep = Annotated[Engine, Depends(app_engine)]
QueueDep = Annotated[SearchQueue, Depends(app_queue)]
StoreDep = Annotated[SqlTrialStore, Depends(app_store)]
ReadsDep = Annotated[TrialReads, Depends(app_reads)]
LutDep = Annotated[SqlLatencyTable, Depends(app_lut)]
TrialColumnsDep = Annotated[TrialColumnsCache, Depends(app_trial_columns)]
RequestStatsDep = Annotated[RequestStats | None, Depends(app_request_stats)]
MeasurementsDep = Annotated[MeasurementStore, Depends(app_measurements)]
PredictionsDep = Annotated[PredictionService, Depends(app_predictions)]


def known_device(device: str, store: MeasurementsDep) -> str:
    """The path's device, or 404 naming the known ones."""
    try:
        store.device(device)
    except UnknownDeviceError as exc:
        raise ResourceNotFoundError(str(exc), field="device", allowed=exc.known) from None
    return device


def known_space(name: Annotated[str, PathParam(description="a registered search space")]) -> str:
    """The path's space, or 404 naming the registered ones."""
    try:
        space_class(name)
    except UnknownSpaceError as exc:
        raise ResourceNotFoundError(str(exc), field="name", allowed=exc.allowed) from None
    return name


DeviceDep = Annotated[str, Depends(known_device)]
SpaceName = Annotated[str, Depends(known_space)]

#: Largest offset a list request may name (both databases' integer range).
MAX_OFFSET = 2**31 - 1
#: Page size of the lists that are short by nature (spaces, devices, samples, coverage): by default
#: one page holds them all.
SHORT_LIST_LIMIT = 1000
#: `offset` and `limit` of every list endpoint (`services.server.schemas.Page`).
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]
ShortListLimit = Annotated[int, Query(ge=1, le=SHORT_LIST_LIMIT, description="the most items to answer")]


# ----------------------------------------------------------------------------- expensive requests
#: Seconds a client is asked to wait (`Retry-After`) when the expensive requests are all taken.
HEAVY_RETRY_AFTER_S = 5


def heavy_gate(state: Any) -> threading.BoundedSemaphore:
    """The app's slots for expensive requests (`NAS_MAX_HEAVY_REQUESTS`), created on first use."""
    with _STATE_LOCK:
        if getattr(state, "heavy_requests", None) is None:
            state.heavy_requests = threading.BoundedSemaphore(state.settings.max_heavy_requests)
    return state.heavy_requests


class RequestDeadline:
    """When an expensive request must have finished (`NAS_HEAVY_REQUEST_TIMEOUT_S`). A handler calls
    `check` between its steps (each config, each device): a step under way is not interrupted, so
    the per-request limits (configs, input sizes) bound how far a request can run past it."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def check(self, doing: str) -> None:
        if time.monotonic() > self.at:
            message = (
                f"the request ran past the server's limit of {self.timeout_s:g} s "
                f"(NAS_HEAVY_REQUEST_TIMEOUT_S) while {doing}; send fewer configs or smaller space options"
            )
            raise HTTPException(
                status_code=503,
                detail=[{"field": "request", "message": message, "allowed": None}],
                headers={"Retry-After": str(HEAVY_RETRY_AFTER_S)},
            )


def heavy_request(request: Request) -> Iterator[RequestDeadline]:
    """An expensive request (predict, evaluate) holds one of `NAS_MAX_HEAVY_REQUESTS` slots while it
    runs; when none is free it is answered 429 with `Retry-After` at once (never queued)."""
    state = request.app.state
    gate = heavy_gate(state)
    if not gate.acquire(blocking=False):
        limit = state.settings.max_heavy_requests
        message = (
            f"the server is already running {limit} expensive request(s) (predictions, evaluations), the "
            f"most it runs at once (NAS_MAX_HEAVY_REQUESTS); retry in {HEAVY_RETRY_AFTER_S} s"
        )
        raise HTTPException(
            status_code=429,
            detail=[{"field": "request", "message": message, "allowed": None}],
            headers={"Retry-After": str(HEAVY_RETRY_AFTER_S)},
        )
    try:
        yield RequestDeadline(state.settings.heavy_request_timeout_s)
    finally:
        gate.release()


HeavyRequestDep = Annotated[RequestDeadline, Depends(heavy_request)]


@functools.cache
def _default_input_elements(space_name: str) -> int:
    """Elements of the example inputs of `space_name` at its default options (fixed per space)."""
    return sum(t.numel() for t in get_space(space_name).example_inputs())


def check_request_inputs(space: SearchSpace, settings: Settings, *, field: str = "space_options") -> None:
    """Refuse (422) options whose inputs have more than `NAS_MAX_REQUEST_INPUT_SCALE` times the
    elements of the space's default inputs: the cost of a request's MAC counts and predictor set-up
    grows with them (searches, which run in the background, take any valid options)."""
    elements = sum(t.numel() for t in space.example_inputs())
    default = _default_input_elements(space.name)
    limit = int(default * settings.max_request_input_scale)
    if elements > limit:
        raise FieldError(
            f"space options {dict(space.options)} give inputs of {elements:,} elements; a request may use at "
            f"most {limit:,} ({settings.max_request_input_scale:g}x the {default:,} of the space's defaults, "
            f"NAS_MAX_REQUEST_INPUT_SCALE); submit a search for larger options",
            field=field,
            allowed=f"inputs of at most {limit:,} elements",
        )


# ----------------------------------------------------------------------------- authentication
_BEARER = HTTPBearer(
    auto_error=False, bearerFormat="nas_<id>_<secret>", description="an API key from `nas keys create`"
)
_API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key, other header")


@dataclass(frozen=True)
class Principal:
    """Who made a request: a key, or everyone when auth is disabled (development on loopback)."""

    name: str
    key_id: str | None
    scopes: tuple[str, ...]
    team: str | None = None

    def allows(self, scope: str) -> bool:
        return scope_allowed(self.scopes, scope)

    def search_access(self) -> SearchAccess:
        return SearchAccess.of(self.name, self.team, self.scopes)


def _denied(status: int, message: str, scope: str) -> HTTPException:
    headers = {"WWW-Authenticate": 'Bearer realm="nas"'} if status == 401 else None
    detail = [{"field": "authorization", "message": message, "allowed": [scope, Scope.ADMIN.value]}]
    return HTTPException(status_code=status, detail=detail, headers=headers)


def request_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        kind, _, value = header.strip().partition(" ")
        if kind.lower() == "bearer" and value.strip():
            return value.strip()
    value = request.headers.get("x-api-key", "").strip()
    return value or None


def _client_is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else None
    if host is None:
        return True  # a Unix socket
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # not an IP address: an in-process test client


def authenticate(request: Request, scope: str) -> Principal:
    """The caller of `request` if it holds `scope`; else the 401/403 to answer."""
    settings = request.app.state.settings
    if settings.auth_disabled:
        if not _client_is_loopback(request):
            raise _denied(401, "auth is disabled on this server, which only answers loopback clients", scope)
        principal = Principal("auth disabled", None, (Scope.ADMIN.value,))
        request.state.principal = principal
        return principal
    principal = getattr(request.state, "principal", None)
    if principal is None:
        token = request_token(request)
        if token is None:
            raise _denied(
                401,
                f"this endpoint needs an API key with scope {scope!r}: send `Authorization: Bearer <key>` "
                "or `X-API-Key: <key>` (keys come from `nas keys create`)",
                scope,
            )
        key, reason = verify_token(request.app.state.engine, token)
        if key is None:
            raise _denied(401, f"{reason}; this endpoint needs scope {scope!r}", scope)
        principal = Principal(key.name, key.id, key.scopes, key.team)
        request.state.principal = principal
    if not principal.allows(scope):
        raise _denied(
            403,
            f"API key {principal.key_id} ({principal.name}) has scopes {list(principal.scopes)}; "
            f"this endpoint needs {scope!r}",
            scope,
        )
    return principal


class ScopeRequirement:
    """The dependency a route (or its router) declares: `scope_for(method)` is the scope it requires,
    None for a public route. Every declaration on a route's way (app, routers, route) must hold."""

    def __init__(self, read: str | None, write: str | None, *, public: bool = False):
        self.read = read
        self.write = write
        self.public = public

    def scope_for(self, method: str) -> str | None:
        if self.public:
            return None
        return self.read if method.upper() in READ_METHODS else self.write

    def __repr__(self) -> str:
        if self.public:
            return "public()"
        if self.read == self.write:
            return f"require_scope({self.read!r})"
        return f"scope_by_method(read={self.read!r}, write={self.write!r})"

    def __call__(
        self,
        request: Request,
        # Declared so that the OpenAPI document lists both ways to send a key (and /docs has an
        # "Authorize" button); `authenticate` reads the headers itself.
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
        _header: Annotated[str | None, Depends(_API_KEY_HEADER)] = None,
    ) -> None:
        scope = self.scope_for(request.method)
        if scope is not None:
            authenticate(request, scope)


class _PublicRoute(ScopeRequirement):
    """`public()`: declared, checks nothing, and asks for no key in the OpenAPI document."""

    def __init__(self) -> None:
        super().__init__(None, None, public=True)

    def __call__(self) -> None:  # type: ignore[override]
        return None


def _host_table_guard(request: Request, device: Annotated[str, PathParam()]) -> None:
    principal = authenticate(request, Scope.LUT_WRITE.value)
    builtin = BUILTIN_DEVICES.get(device)
    if builtin is not None and builtin.backend is not None and not principal.allows(Scope.ADMIN.value):
        raise _denied(
            403,
            f"device {device!r} is measured by this host ({builtin.backend}): its table changes only "
            f"through this host's measurement or with an admin key; API key {principal.key_id} "
            f"({principal.name}) has scopes {list(principal.scopes)}",
            Scope.ADMIN.value,
        )


def host_tables_need_admin() -> Any:
    """`dependencies=[host_tables_need_admin()]` on a route that writes the table of the path's
    `{device}`: a device this host measures itself (built in, with a local backend, such as
    `host-cpu-torch`, which every local search prices with) needs an admin key; others `lut:write`."""
    return Depends(_host_table_guard)


def require_scope(scope: Scope | str) -> Any:
    """`dependencies=[require_scope(Scope.SEARCHES_READ)]`: the route needs a key with this scope."""
    value = Scope(scope).value
    return Depends(ScopeRequirement(value, value))


def scope_by_method(*, read: Scope | str, write: Scope | str) -> Any:
    """For a router whose reads and writes differ: GET/HEAD/OPTIONS need `read`, the others `write`."""
    return Depends(ScopeRequirement(Scope(read).value, Scope(write).value))


def public() -> Any:
    """Declares a route open to everyone (health, the dashboard page itself)."""
    return Depends(_PublicRoute())


@dataclass(frozen=True)
class RouteInfo:
    """One API route as served: its methods, full path and every dependency on its way."""

    methods: frozenset[str]
    path: str
    dependencies: tuple[Any, ...]

    def required_scopes(self, method: str) -> frozenset[str] | None:
        """The scopes a request needs (empty: public), None when the route declares nothing."""
        found = [d.dependency for d in self.dependencies if isinstance(d.dependency, ScopeRequirement)]
        if not found:
            return None
        return frozenset(scope for r in found if (scope := r.scope_for(method)) is not None)


def api_routes(routes: Sequence[Any]) -> list[RouteInfo]:
    """Every FastAPI route of an app (`app.routes`), with the dependencies of the routers it is included
    through. FastAPI >= 0.160 keeps included routers unflattened; older versions list plain routes."""
    contexts: Iterable[Any]
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        contexts = routes
    else:
        contexts = iter_route_contexts(routes)
    out = []
    for context in contexts:
        original = getattr(context, "original_route", context)
        if isinstance(original, APIRoute):
            out.append(RouteInfo(frozenset(context.methods or ()), context.path, tuple(context.dependencies)))
    return out
