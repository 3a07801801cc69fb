"""`nas keys create|list|revoke`: API keys in the database of `NAS_DATABASE_URL` (run on the server's
host; the server reads the same table). A key is printed once, when it is created."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.cli.common import out
from services.cli.errors import user_errors
from services.settings import get_settings

if TYPE_CHECKING:
    from services.core.auth import ApiKey

#: The scopes of `services.core.auth.Scope`, spelled here so that `nas --help` does not import the
#: database layer (and with it sqlalchemy and the search packages); a test keeps the two equal.
SCOPE_NAMES = ("searches:read", "searches:read-all", "searches:write", "lut:write", "admin")

keys_app = typer.Typer(
    no_args_is_help=True,
    help="API keys of the server's database (NAS_DATABASE_URL): create (printed once), list, revoke.",
)

_DURATION = re.compile(r"^(\d+)\s*([hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str | None, now: datetime | None = None) -> datetime | None:
    """`30d`, `12h`, `2w`, or an ISO date/time (UTC when it names no zone); None: never expires."""
    if text is None or not text.strip():
        return None
    now = now or datetime.now(UTC)
    match = _DURATION.match(text.strip().lower())
    if match:
        amount = int(match.group(1))
        if amount <= 0:
            raise ValueError(f"--expires {text!r}: the duration must be positive")
        return now + timedelta(**{_UNITS[match.group(2)]: amount})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--expires {text!r} is neither a duration (30d, 12h, 2w) nor an ISO date (2027-01-31)"
        ) from None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    if when <= now:
        raise ValueError(f"--expires {text!r} is in the past")
    return when


def _engine() -> Any:
    from services.core.db import make_engine
    from services.core.migrations import init_db

    engine = make_engine(get_settings().database_url)
    init_db(engine)
    return engine


def print_new_key(key: ApiKey, token: str, console: Console = out) -> None:
    """The one time a token is shown, with how to use it."""
    console.print(
        f"Created API key {key.id} ({key.name}) with scopes {', '.join(key.scopes)}"
        + (f", for team {key.team}" if key.team else "")
        + (f", expires {key.expires_at.isoformat()}" if key.expires_at else "")
        + ". It is shown only now:",
        markup=False,
        highlight=False,
    )
    console.print(f"  export NAS_API_KEY={token}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        "  (the CLI and farm agents read NAS_API_KEY; curl: -H 'Authorization: Bearer $NAS_API_KEY')",
        markup=False,
        highlight=False,
    )


@keys_app.command("create")
@user_errors()
def keys_create(
    name: Annotated[str, typer.Option(help="who or what uses the key, e.g. alice or farm-iphone14")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", help=f"repeatable or comma-separated: {', '.join(SCOPE_NAMES)}"),
    ],
    expires: Annotated[str | None, typer.Option(help="30d, 12h, 2w or an ISO date (default: never)")] = None,
    team: Annotated[
        str | None,
        typer.Option(
            help="the team the key acts for: its searches belong to the team (default: the key's name)"
        ),
    ] = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from services.core.auth import create_key

    key, token = create_key(_engine(), name, scope, expires_at=parse_expiry(expires), team=team)
    print_new_key(key, token)


@keys_app.command("list")
@user_errors()
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Every key with its scopes and state (never the key itself)."""
    from services.core.auth import list_keys

    keys = list_keys(_engine())
    if as_json:
        out.print_json(
            data=[
                {
                    "id": k.id,
                    "name": k.name,
                    "team": k.team,
                    "scopes": list(k.scopes),
                    "created_at": k.created_at.isoformat(),
                    "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                    "active": k.active(),
                }
                for k in keys
            ]
        )
        return
    table = Table("id", "name", "team", "scopes", "created", "expires", "state")
    for k in keys:
        state = "active" if k.active() else ("revoked" if k.revoked_at else "expired")
        expiry = k.expires_at.isoformat(timespec="minutes") if k.expires_at else "never"
        table.add_row(
            k.id,
            k.name,
            k.team or "-",
            ", ".join(k.scopes),
            k.created_at.isoformat(timespec="minutes"),
            expiry,
            state,
        )
    out.print(table)
    out.print(f"{len(keys)} keys, {sum(k.active() for k in keys)} active")


@keys_app.command("revoke")
@user_errors()
def keys_revoke(
    key: Annotated[str, typer.Argument(help="the key's id (see `nas keys list`) or the key")],
) -> None:
    """Revoke a key: the server refuses it from the next request on."""
    from services.core.auth import revoke_key

    revoked = revoke_key(_engine(), key)
    assert revoked.revoked_at is not None
    out.print(f"revoked API key {revoked.id} ({revoked.name}) at {revoked.revoked_at.isoformat()}")


def bootstrap_demo_key(engine: Any, console: Console = out) -> None:
    """For `nas serve --demo`: create an admin key when the database has no active one, and print it."""
    from services.core.auth import Scope, create_key, has_active_admin

    if has_active_admin(engine):
        console.print(
            "Auth is on; this database already has an admin API key (printed when it was created). "
            "Lost it? `nas keys create --name me --scope admin` makes another.",
            markup=False,
            highlight=False,
        )
        return
    key, token = create_key(engine, "demo-admin", [Scope.ADMIN.value])
    print_new_key(key, token, console)
