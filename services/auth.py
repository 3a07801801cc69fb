"""API keys and the scope every endpoint requires.

A key is a token `nas_<id>_<secret>`: `id` (12 hex digits) is public and names the key in listings and
revocations; `secret` is 256 random bits. The database keeps only the SHA-256 of the whole token
(`services.db.ApiKeyRow`), so a stolen database does not hand out working keys; with that much entropy a
plain hash is as strong as a salted KDF, and one hash per request costs microseconds. The digest is
compared in constant time.

Scopes: `searches:read` (read searches, spaces, devices, tables, the dashboard's data, metrics),
`searches:write` (submit, cancel, evaluate, export), `lut:write` (device farms: register devices,
upload measurements and tables), `admin` (everything).

Every API route declares its scope with a dependency, on the route or on its router:

    @router.get("/{id}", dependencies=[require_scope(Scope.SEARCHES_READ)])
    router = APIRouter(dependencies=[scope_by_method(read=Scope.SEARCHES_READ, write=Scope.SEARCHES_WRITE)])
    @router.get("", dependencies=[public()])      # health: no key needed

Every declaration on a route's way must hold (so a router's scope cannot be loosened by a route).
`api_routes(app.routes)` lists each route with what it declares; a test fails on any that declares
nothing. Clients send
`Authorization: Bearer <key>` or `X-API-Key: <key>`: no or an unknown, revoked or expired key is a 401,
a key without the scope a 403; both JSON bodies name the scope needed.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.db import ApiKeyRow, utcnow

TOKEN_PREFIX = "nas_"
_TOKEN = re.compile(r"^nas_([0-9a-f]{12})_([A-Za-z0-9_-]{20,200})$")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BEARER = HTTPBearer(
    auto_error=False, bearerFormat="nas_<id>_<secret>", description="an API key from `nas keys create`"
)
_API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key, other header")


class Scope(enum.StrEnum):
    SEARCHES_READ = "searches:read"
    SEARCHES_WRITE = "searches:write"
    LUT_WRITE = "lut:write"
    ADMIN = "admin"


ALL_SCOPES = [scope.value for scope in Scope]


class UnknownKeyError(LookupError):
    """A key named in `nas keys revoke` does not exist."""


# ----------------------------------------------------------------------------- keys in the database
@dataclass(frozen=True)
class ApiKey:
    """A stored key as listings show it (never its secret)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKeyRow) -> ApiKey:
        return cls(row.id, row.name, tuple(row.scopes), row.created_at, row.expires_at, row.revoked_at)

    def active(self, now: datetime | None = None) -> bool:
        now = now or utcnow()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def allows(self, scope: str) -> bool:
        return Scope.ADMIN.value in self.scopes or scope in self.scopes


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes checked against the known ones, deduplicated, in the order of `Scope`."""
    given = {s.strip() for text in scopes for s in text.split(",") if s.strip()}
    unknown = sorted(given - set(ALL_SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; allowed: {ALL_SCOPES}")
    if not given:
        raise ValueError(f"a key needs at least one scope; allowed: {ALL_SCOPES}")
    return tuple(s for s in ALL_SCOPES if s in given)


def create_key(
    engine: Engine, name: str, scopes: Iterable[str], *, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its token (the only time the token exists in clear)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("a key needs a name of 1 to 200 characters (who or what uses it)")
    checked = parse_scopes(scopes)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        if expires_at <= utcnow():
            raise ValueError(f"expiry {expires_at.isoformat()} is in the past")
    key_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKeyRow(
        id=key_id,
        name=name,
        token_sha256=hash_token(token),
        scopes=list(checked),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add(row)
    return ApiKey.of(row), token


def list_keys(engine: Engine) -> list[ApiKey]:
    with Session(engine) as session:
        rows = session.scalars(sa.select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id))
        return [ApiKey.of(row) for row in rows]


def revoke_key(engine: Engine, key: str) -> ApiKey:
    """Revoke a key given by its id or its whole token; revoking twice keeps the first time."""
    match = _TOKEN.match(key.strip())
    key_id = match.group(1) if match else key.strip()
    with Session(engine, expire_on_commit=False) as session, session.begin():
        row = session.get(ApiKeyRow, key_id)
        if row is None:
            known = [k.id for k in list_keys(engine)]
            raise UnknownKeyError(f"no API key with id {key_id!r}; ids: {known}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return ApiKey.of(row)


def has_active_admin(engine: Engine) -> bool:
    return any(k.active() and k.allows(Scope.ADMIN) for k in list_keys(engine))


def verify_token(engine: Engine, token: str) -> tuple[ApiKey | None, str]:
    """The active key a token belongs to, or None and why not (for the 401 message)."""
    match = _TOKEN.match(token.strip())
    if match is None:
        return None, f"not an API key of this server (keys look like {TOKEN_PREFIX}<id>_<secret>)"
    with Session(engine) as session:
        row = session.get(ApiKeyRow, match.group(1))
        key = ApiKey.of(row) if row is not None else None
        digest = row.token_sha256 if row is not None else hash_token("")
    # Compared even when the id is unknown, so both cases take the same time.
    if not hmac.compare_digest(digest, hash_token(token.strip())) or key is None:
        return None, "unknown API key"
    if key.revoked_at is not None:
        return None, f"API key {key.id} ({key.name}) was revoked at {key.revoked_at.isoformat()}"
    if not key.active():
        assert key.expires_at is not None
        return None, f"API key {key.id} ({key.name}) expired at {key.expires_at.isoformat()}"
    return key, ""


# ----------------------------------------------------------------------------- request checks
@dataclass(frozen=True)
class Principal:
    """Who made a request: a key, or everyone when auth is disabled (development on loopback)."""

    name: str
    key_id: str | None
    scopes: tuple[str, ...]

    def allows(self, scope: str) -> bool:
        return Scope.ADMIN.value in self.scopes or scope in self.scopes


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
        return Principal("auth disabled", None, (Scope.ADMIN.value,))
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
        principal = Principal(key.name, key.id, key.scopes)
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
