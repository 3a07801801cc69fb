"""The authorization matrix: every API route x every scope x no key / a wrong key, over real HTTP.

The routes come from the app itself, so a new endpoint fails `test_every_route_is_in_the_table`
until it declares a scope and is added to `EXPECTED` below with the scope it should need.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.routing import APIRoute
from svc_helpers import LiveServer, throwaway_server

from services.core.auth import ALL_SCOPES, create_key
from services.server.deps import api_routes

R, W, LUT, PUBLIC = "searches:read", "searches:write", "lut:write", None
#: `searches:read` over every owner's searches: allowed wherever `searches:read` is.
READ_ALL = "searches:read-all"

#: (method, path) -> the one scope it needs (None: open to everyone).
EXPECTED: dict[tuple[str, str], str | None] = {
    ("GET", "/v1/health"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/dashboard"): PUBLIC,
    ("GET", "/vendor/plotly.min.js"): PUBLIC,
    # spaces
    ("GET", "/v1/spaces"): R,
    ("GET", "/v1/spaces/{name}"): R,
    ("POST", "/v1/spaces/{name}/evaluate"): W,
    ("POST", "/v1/spaces/{name}/export"): W,
    # searches
    ("POST", "/v1/searches"): W,
    ("GET", "/v1/searches"): R,
    ("GET", "/v1/searches/{search_id}"): R,
    ("GET", "/v1/searches/{search_id}/events"): R,
    ("GET", "/v1/searches/{search_id}/trials"): R,
    ("GET", "/v1/searches/{search_id}/trials/export"): R,
    ("GET", "/v1/searches/{search_id}/trials/{number}"): R,
    ("GET", "/v1/searches/{search_id}/trials/{number}/export"): R,
    ("GET", "/v1/searches/{search_id}/pareto"): R,
    ("GET", "/v1/searches/{search_id}/steps"): R,
    ("POST", "/v1/searches/{search_id}/cancel"): W,
    # device farms
    ("GET", "/v1/devices"): R,
    ("POST", "/v1/devices"): LUT,
    ("GET", "/v1/devices/{device}"): R,
    ("GET", "/v1/devices/{device}/work"): R,
    ("GET", "/v1/devices/{device}/work/subnets"): R,
    ("POST", "/v1/devices/{device}/measurements"): LUT,
    ("GET", "/v1/devices/{device}/samples"): R,
    ("GET", "/v1/devices/{device}/table"): R,
    ("PUT", "/v1/devices/{device}/table"): LUT,
    ("POST", "/v1/devices/{device}/predict"): R,
    ("POST", "/v1/devices/{device}/accuracy"): LUT,
    ("GET", "/v1/devices/{device}/accuracy"): R,
    # dashboard data
    ("GET", "/v1/dashboard/capabilities"): R,
    ("GET", "/v1/dashboard/searches"): R,
    ("GET", "/v1/dashboard/searches/{search_id}/plot"): R,
    ("GET", "/v1/dashboard/searches/{search_id}/hypervolume"): R,
    ("GET", "/v1/dashboard/searches/{search_id}/trials"): R,
    ("GET", "/v1/dashboard/searches/{search_id}/trials/{number}"): R,
    ("GET", "/v1/dashboard/devices/coverage"): R,
    # operations
    ("GET", "/metrics"): R,
}

#: Routes that are not API routes and stay open: the OpenAPI document, its viewers, static files.
OPEN_NON_API = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static"}

WRONG_KEY = "nas_0123456789ab_" + "x" * 43


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[LiveServer]:
    with throwaway_server(tmp_path_factory.mktemp("matrix"), auth_disabled=False) as live:
        yield live


@pytest.fixture(scope="module")
def keys(secured: LiveServer) -> dict[str, str]:
    """One key per scope, each holding only that scope."""
    engine = secured.app.state.engine
    return {scope: create_key(engine, f"matrix-{scope}", [scope])[1] for scope in ALL_SCOPES}


def served_routes(app) -> dict[tuple[str, str], frozenset[str] | None]:
    out = {}
    for route in api_routes(app.routes):
        for method in route.methods - {"HEAD"}:
            out[(method, route.path)] = route.required_scopes(method)
    return out


def test_every_route_declares_a_scope(secured: LiveServer) -> None:
    undeclared = sorted(key for key, scopes in served_routes(secured.app).items() if scopes is None)
    assert not undeclared, f"routes without require_scope(...)/public(): {undeclared}"


def test_every_route_is_in_the_table(secured: LiveServer) -> None:
    served = served_routes(secured.app)
    assert len(served) >= 30
    missing = sorted(set(served) - set(EXPECTED))
    assert not missing, f"routes missing from EXPECTED in {__file__}: {missing}"
    # Entries of routes that the app does not have (yet): the metrics endpoint may be absent.
    stale = sorted(set(EXPECTED) - set(served) - {("GET", "/metrics")})
    assert not stale, f"EXPECTED names routes the app does not serve: {stale}"
    for key, scopes in served.items():
        expected = EXPECTED[key]
        assert scopes == (frozenset() if expected is None else frozenset({expected})), key


def test_non_api_routes_are_the_known_open_ones(secured: LiveServer) -> None:
    others = {
        route.path
        for route in secured.app.routes
        if not isinstance(route, APIRoute) and hasattr(route, "path")
    }
    assert others <= OPEN_NON_API, others - OPEN_NON_API


def _url(path: str) -> str:
    # Path parameters get values naming nothing: an allowed request then gets its 404/422, not 401/403.
    return re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1) == "number" else f"no-such-{m.group(1)}", path)


def _status(http: httpx.Client, method: str, path: str, headers: dict[str, str]) -> int:
    kwargs = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    # Streamed, so an allowed request to a stream (server-sent events) returns at its headers.
    with http.stream(method, _url(path), headers=headers, **kwargs) as response:
        return response.status_code


def _cases() -> list[tuple[str, str]]:
    return sorted(EXPECTED)


@pytest.mark.parametrize(("method", "path"), _cases(), ids=[f"{m} {p}" for m, p in _cases()])
def test_matrix(secured: LiveServer, keys: dict[str, str], method: str, path: str) -> None:
    if (method, path) not in served_routes(secured.app):
        pytest.skip(f"{method} {path} is not served by this app")
    needed = EXPECTED[(method, path)]
    outcomes: dict[str, int] = {}
    with httpx.Client(base_url=secured.url, timeout=60) as http:
        outcomes["no key"] = _status(http, method, path, {})
        outcomes["wrong key"] = _status(http, method, path, {"Authorization": f"Bearer {WRONG_KEY}"})
        for scope, token in keys.items():
            header = {"X-API-Key": token} if scope == "lut:write" else {"Authorization": f"Bearer {token}"}
            outcomes[scope] = _status(http, method, path, header)

    expected: dict[str, str] = {}
    for who in outcomes:
        if needed is None or who in (needed, "admin") or (needed == R and who == READ_ALL):
            expected[who] = "allowed"
        elif who in ("no key", "wrong key"):
            expected[who] = "401"
        else:
            expected[who] = "403"
    got = {who: str(status) if status in (401, 403) else "allowed" for who, status in outcomes.items()}
    assert got == expected, f"{method} {path} needs {needed}: statuses {outcomes}"
    # Allowed requests never fail on the server either (the values name nothing: 404/405/422 are fine).
    assert all(status < 500 for status in outcomes.values()), outcomes
