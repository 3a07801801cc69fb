"""API keys and their scopes (stored in `api_keys`); the request side, which checks a request's key
against the scope its route declares, is `services.server.deps`.

A key is a token `nas_<id>_<secret>`: `id` (12 hex digits) is public and names the key in listings and
revocations; `secret` is 256 random bits. The database keeps only the SHA-256 of the whole token
(`services.core.db.ApiKeyRow`), so a stolen database does not hand out working keys; with that much entropy a
plain hash is as strong as a salted KDF, and one hash per request costs microseconds. The digest is
compared in constant time.

Scopes: `searches:read` (read searches, spaces, devices, tables, the dashboard's data, metrics),
`searches:read-all` (`searches:read` over every owner's searches), `searches:write` (submit, cancel,
evaluate, export), `lut:write` (device farms: register devices, upload measurements and tables),
`admin` (everything).

Ownership: a search belongs to the team named on the key that submitted it, else to the key's name
(`owner_of`). A key reads and cancels its own searches (those owned by its name or its team); reading
other owners' searches needs `searches:read-all` or `admin`, cancelling them `admin`
(`SearchAccess`). Searches stored before owners existed belong to `legacy` (migration 0003).

"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from nas import utcnow
from services.core.db import ApiKeyRow

TOKEN_PREFIX = "nas_"
_TOKEN = re.compile(r"^nas_([0-9a-f]{12})_([A-Za-z0-9_-]{20,200})$")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Scope(enum.StrEnum):
    SEARCHES_READ = "searches:read"
    SEARCHES_READ_ALL = "searches:read-all"
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
    team: str | None = None

    @classmethod
    def of(cls, row: ApiKeyRow) -> ApiKey:
        return cls(
            row.id, row.name, tuple(row.scopes), row.created_at, row.expires_at, row.revoked_at, row.team
        )

    def active(self, now: datetime | None = None) -> bool:
        now = now or utcnow()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def allows(self, scope: str) -> bool:
        return scope_allowed(self.scopes, scope)


def scope_allowed(scopes: Iterable[str], scope: str) -> bool:
    """Whether a key with `scopes` may do what `scope` guards: `admin` allows everything and
    `searches:read-all` includes `searches:read`."""
    held = set(scopes)
    if Scope.ADMIN.value in held or scope in held:
        return True
    return scope == Scope.SEARCHES_READ.value and Scope.SEARCHES_READ_ALL.value in held


def owner_of(name: str, team: str | None) -> str:
    """The owner of the searches a key submits: its team if it names one, else its own name."""
    return team or name


@dataclass(frozen=True)
class SearchAccess:
    """Which searches a caller reaches: those of `owners` (its key's name and team), every one with
    `read_all`, and it cancels every one with `manage_all`; what it submits belongs to `submit_as`."""

    submit_as: str
    owners: frozenset[str]
    read_all: bool = False
    manage_all: bool = False

    @classmethod
    def of(cls, name: str, team: str | None, scopes: Iterable[str]) -> SearchAccess:
        held = tuple(scopes)
        return cls(
            submit_as=owner_of(name, team),
            owners=frozenset(o for o in (name, team) if o),
            read_all=scope_allowed(held, Scope.SEARCHES_READ_ALL.value),
            manage_all=Scope.ADMIN.value in held,
        )

    def may_read(self, owner: str) -> bool:
        return self.read_all or owner in self.owners

    def may_manage(self, owner: str) -> bool:
        return self.manage_all or owner in self.owners


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
    engine: Engine,
    name: str,
    scopes: Iterable[str],
    *,
    expires_at: datetime | None = None,
    team: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key and return it with its token (the only time the token exists in clear). With
    `team`, the searches it submits belong to that team (see `owner_of`)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("a key needs a name of 1 to 200 characters (who or what uses it)")
    if team is not None:
        team = team.strip()
        if not team or len(team) > 200:
            raise ValueError("a team needs a name of 1 to 200 characters")
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
        team=team,
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
