"""What every `nas` sub-command shares: its consoles, the options that recur (`--server`, `--json`,
`-o NAME=VALUE`) and the client of the server those commands talk to."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from services.client import NasClient
from services.option_values import parse_option_pairs

# Reports are lines that scripts read: never hard-wrapped.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ServerOpt = Annotated[
    str | None, typer.Option("--server", help="API URL (default: NAS_SERVER_URL or http://127.0.0.1:8000)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
OptionsOpt = Annotated[
    list[str] | None, typer.Option("--option", "-o", help="space option NAME=VALUE, repeatable")
]

#: The `--api-key` of the running `nas` command, set by the app's callback at every invocation.
_api_key: str | None = None


def set_api_key(value: str | None) -> None:
    global _api_key
    _api_key = value or None


def api_key() -> str | None:
    """The key given to `nas --api-key ...` (or NAS_API_KEY) for the running command, if any."""
    return _api_key


def client(server: str | None) -> NasClient:
    """A client of `server` (default: NAS_SERVER_URL) sending the command's API key."""
    return NasClient(server, api_key=api_key())


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """The `-o NAME=VALUE` options of a command as a dict (values as JSON when they parse)."""
    return parse_option_pairs(pairs)
