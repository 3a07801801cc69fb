"""`nas`: the command line. `nas serve` runs the service; `nas search ...` and `nas space ...` talk to
it over HTTP; `nas spaces`, `nas keys`, `nas db` and `nas lut measure|import|export` work locally
(the latter three on the database of `NAS_DATABASE_URL`); `nas farm run`, `nas devices ...` and
`nas lut validate|accuracy` are device farm commands that talk to a server (`services.cli.farm`).

Exit codes: 0 success, 1 the server is unreachable or a search did not succeed, 2 bad input (a bad
file, an unknown name, a request the server refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli import db as cli_db
from services.cli import farm as cli_farm
from services.cli import keys as cli_keys
from services.cli import space as cli_space
from services.cli import supernet as cli_supernet
from services.cli.common import out, set_api_key
from services.cli.errors import user_errors
from services.cli.lut import lut_app
from services.cli.search import load_spec_file, search_app
from services.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, help="Hardware-aware neural architecture search.")
app.add_typer(search_app, name="search")
app.add_typer(cli_space.space_app, name="space")
app.command("spaces")(cli_space.spaces)
app.add_typer(lut_app, name="lut")
app.add_typer(cli_supernet.app, name="supernet")
app.add_typer(cli_farm.farm_app, name="farm")
app.add_typer(cli_farm.devices_app, name="devices")
app.add_typer(cli_keys.keys_app, name="keys")
app.add_typer(cli_db.db_app, name="db")


@app.callback()
def _global_options(
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="NAS_API_KEY",
            show_envvar=True,
            help="API key sent to the server by every command that talks to one (`nas keys create`)",
        ),
    ] = None,
) -> None:
    # One invocation reads its environment once (in-process callers, such as tests, may have changed
    # it since the last one).
    get_settings.cache_clear()
    # Every sub-command's client reads the key from here (`services.cli.common.api_key`).
    set_api_key(api_key)


@app.command()
@user_errors()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default NAS_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default NAS_PORT)")] = None,
    demo: Annotated[
        Path | None,
        typer.Option(
            help="spec file to submit at start-up when the database has no search; also creates and "
            "prints an admin API key when the database has none"
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth", help="development only: serve without API keys (refused unless bound to loopback)"
        ),
    ] = False,
) -> None:
    """Run the API server with its scheduler (searches run in this process, on Ray)."""
    import uvicorn

    from services.core.auth import list_keys
    from services.server.app import create_app

    overrides = {"host": host, "port": port, "auth_disabled": True if no_auth else None}
    settings = get_settings().with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    demo_spec = load_spec_file(demo) if demo is not None else None
    api = create_app(settings)
    if settings.auth_disabled:
        out.print(
            "[bold yellow]Auth is disabled[/bold yellow] (development, loopback only): no API key needed."
        )
    elif demo_spec is not None:
        cli_keys.bootstrap_demo_key(api.state.engine, out)
    elif not list_keys(api.state.engine):
        out.print("Auth is on and the database has no API key: `nas keys create --name me --scope admin`.")
    if demo_spec is not None:
        _submit_demo(api, settings, demo_spec)
    # With NAS_LOG_FORMAT=json the app has routed uvicorn's loggers to its JSON handler already.
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    uvicorn.run(api, host=settings.host, port=settings.port, log_level="info", log_config=log_config)


def _submit_demo(api: Any, settings: Settings, spec_data: dict[str, Any]) -> None:
    from nas import SearchSpec
    from services.core.search_queue import check_spec

    queue = api.state.queue
    if queue.count() > 0:
        out.print("[dim]--demo: the database already holds searches; nothing submitted.[/dim]")
        return
    spec = check_spec(
        SearchSpec.model_validate(spec_data), api.state.lut, supernet_dir=settings.supernet_dir
    ).spec
    search_id = queue.submit(spec).id
    base = f"http://{settings.host}:{settings.port}"
    out.print(f"Submitted demo search [bold]{search_id}[/bold] ({spec.name or spec.space}). Follow it with:")
    auth = "" if settings.auth_disabled else '-H "Authorization: Bearer $NAS_API_KEY" '
    out.print(f"  curl {auth}{base}/v1/searches/{search_id}", markup=False)
    out.print(f"  nas search status {search_id}", markup=False)
    out.print(f"  nas search pareto {search_id}", markup=False)
    out.print(f"  API docs: {base}/docs", markup=False)


def main() -> None:
    """Entry point of the `nas` console script."""
    app()
