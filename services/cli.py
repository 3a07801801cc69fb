"""`nas`: the command line. `nas serve` runs the service; `nas search ...` talks to it over HTTP;
`nas spaces` and `nas lut measure|import|export` work locally (the latter on the database of
`NAS_DATABASE_URL`); `nas farm run`, `nas devices ...` and `nas lut validate|accuracy` are device farm
commands that talk to a server (`services.cli_farm`).

Exit codes: 0 success, 1 the server is unreachable or a search did not succeed, 2 bad input (a bad
file, an unknown name, a request the server refused).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services import cli_db, cli_farm, cli_keys, cli_supernet
from services.cli_errors import user_errors
from services.client import NasClient
from services.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Hardware-aware neural architecture search.")
search_app = typer.Typer(no_args_is_help=True, help="Submit and follow searches on a NAS server.")
lut_app = typer.Typer(
    no_args_is_help=True,
    help="Latency lookup tables: measure, import and export on this host's database; validate and "
    "accuracy on a server.",
)
app.add_typer(search_app, name="search")
app.add_typer(lut_app, name="lut")
app.add_typer(cli_supernet.app, name="supernet")
app.add_typer(cli_farm.farm_app, name="farm")
app.add_typer(cli_farm.devices_app, name="devices")
app.add_typer(cli_keys.keys_app, name="keys")
app.add_typer(cli_db.db_app, name="db")
lut_app.command("validate")(cli_farm.lut_validate)
lut_app.command("accuracy")(cli_farm.lut_accuracy)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


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
    # Every sub-command's client reads the key from here (`cli_keys.cli_api_key`).
    cli_keys.set_cli_api_key(api_key)


F = TypeVar("F", bound=Callable[..., Any])

ServerOpt = Annotated[
    str | None, typer.Option("--server", help="API URL (default: NAS_SERVER_URL or http://127.0.0.1:8000)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
OptionsOpt = Annotated[
    list[str] | None, typer.Option("--option", "-o", help="space option NAME=VALUE, repeatable")
]


def friendly_errors(command: F) -> F:
    """Turn the errors a user can cause into one paragraph on stderr and exit code 2 (1 when the
    server is unreachable); anything else is a bug and keeps its traceback."""
    from latency_lut import NoLocalBackendError

    errors = (ValueError, NoLocalBackendError, FileNotFoundError, PermissionError)
    return user_errors(errors)(command)


def _client(server: str | None) -> NasClient:
    return NasClient(server or Settings().server_url, api_key=cli_keys.cli_api_key())


def load_spec_file(path: Path) -> dict[str, Any]:
    """A search spec from a `.yaml`/`.yml`/`.json` file, as a dict (the server validates it)."""
    if not path.is_file():
        raise ValueError(f"spec file {str(path)!r} does not exist or is not a file")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"spec file {str(path)!r} is not valid {_format_name(path)}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"spec file {str(path)!r} must hold a mapping of spec fields (space, objectives, budget, ...), "
            f"not {type(data).__name__}"
        )
    return data


def _format_name(path: Path) -> str:
    return "JSON" if path.suffix.lower() == ".json" else "YAML"


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    from services.api.spaces import parse_option_value

    options: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--option takes NAME=VALUE (e.g. resolution=224), got {pair!r}")
        options[name.strip()] = parse_option_value(value.strip())
    return options


# --------------------------------------------------------------------------------------- serve
@app.command()
@friendly_errors
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

    from services.app import create_app

    overrides = {"host": host, "port": port, "auth_disabled": True if no_auth else None}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    demo_spec = load_spec_file(demo) if demo is not None else None
    api = create_app(settings)
    if settings.auth_disabled:
        out.print(
            "[bold yellow]Auth is disabled[/bold yellow] (development, loopback only): no API key needed."
        )
    elif demo_spec is not None:
        cli_keys.bootstrap_demo_key(api.state.engine, out)
    elif not cli_keys.list_keys(api.state.engine):
        out.print("Auth is on and the database has no API key: `nas keys create --name me --scope admin`.")
    if demo_spec is not None:
        _submit_demo(api, settings, demo_spec)
    # With NAS_LOG_FORMAT=json the app has routed uvicorn's loggers to its JSON handler already.
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    uvicorn.run(api, host=settings.host, port=settings.port, log_level="info", log_config=log_config)


def _submit_demo(api: Any, settings: Settings, spec_data: dict[str, Any]) -> None:
    from nas import SearchSpec
    from services.search_queue import check_spec

    queue = api.state.queue
    if queue.count() > 0:
        out.print("[dim]--demo: the database already holds searches; nothing submitted.[/dim]")
        return
    spec = check_spec(SearchSpec.model_validate(spec_data), api.state.lut).spec
    search_id = queue.submit(spec).id
    base = f"http://{settings.host}:{settings.port}"
    out.print(f"Submitted demo search [bold]{search_id}[/bold] ({spec.name or spec.space}). Follow it with:")
    auth = "" if settings.auth_disabled else '-H "Authorization: Bearer $NAS_API_KEY" '
    out.print(f"  curl {auth}{base}/v1/searches/{search_id}", markup=False)
    out.print(f"  nas search status {search_id}", markup=False)
    out.print(f"  nas search pareto {search_id}", markup=False)
    out.print(f"  API docs: {base}/docs", markup=False)


# --------------------------------------------------------------------------------------- search
@search_app.command("submit")
@friendly_errors
def search_submit(
    file: Annotated[Path, typer.Argument(help="search spec, YAML or JSON")],
    server: ServerOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the search with a progress bar")] = False,
) -> None:
    """Submit a search spec; prints its id (and with --wait follows it to the end)."""
    spec = load_spec_file(file)
    with _client(server) as client:
        created = client.submit(spec)
        out.print(f"queued search {created['id']}")
        if wait:
            final = _follow(client, created["id"])
            _print_search(final)
            if final["status"] != "succeeded":
                raise typer.Exit(1)


def _follow(client: NasClient, search_id: str, *, poll_s: float = 1.0) -> dict[str, Any]:
    """Follow the search's server-sent events with a progress bar (trials, failures, time left)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as bar:
        task = bar.add_task("queued", total=None)

        def on_progress(search: dict[str, Any]) -> None:
            description = f"[{search['status']}] {search['status_message']}"
            progress = search.get("progress") or {}
            if progress.get("failed"):
                description += f", {progress['failed']} failed"
            if progress.get("eta_s") and search["status"] == "running":
                description += f", ~{progress['eta_s']:.0f}s left"
            bar.update(task, total=search["budget_trials"], completed=search["trials_done"])
            bar.update(task, description=description)

        return client.watch(search_id, on_progress, poll_s=poll_s)


@search_app.command("status")
@friendly_errors
def search_status(search_id: str, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """Show a search's status and progress."""
    with _client(server) as client:
        search = client.get(search_id)
    if as_json:
        out.print_json(data=search)
    else:
        _print_search(search)


def _print_search(search: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    hv = search["hypervolume"]
    rows = [
        ("id", search["id"]),
        ("name", search["name"]),
        ("status", search["status"]),
        ("message", search["status_message"]),
        ("trials", f"{search['trials_done']} of {search['budget_trials']}"),
        ("failed trials", str(search["trials_failed"])),
        ("front size", str(search["front_size"])),
        ("hypervolume", "-" if hv is None else f"{hv:.4f}"),
        ("elapsed", f"{search['elapsed_s']:.1f}s"),
        ("time left", _eta_text(search)),
        ("error", search["error"] or "-"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    out.print(table)


def _eta_text(search: dict[str, Any]) -> str:
    eta = (search.get("progress") or {}).get("eta_s")
    return "-" if eta is None else f"~{eta:.0f}s"


@search_app.command("list")
@friendly_errors
def search_list(
    server: ServerOpt = None,
    status: Annotated[str | None, typer.Option(help="only searches in this status")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List searches, newest first."""
    with _client(server) as client:
        page = client.list(status=status, limit=limit)
    if as_json:
        out.print_json(data=page)
        return
    table = Table("name", "status", "trials", "front", "created")
    # Ids are what users copy into other commands: never truncated.
    table.add_column("id", no_wrap=True, min_width=32)
    for s in page["items"]:
        trials = f"{s['trials_done']}/{s['budget_trials']}"
        created = s["created_at"][:16].replace("T", " ")
        table.add_row(s["name"], s["status"], trials, str(s["front_size"]), created, s["id"])
    out.print(table)
    out.print(f"{len(page['items'])} of {page['total']} searches")


@search_app.command("pareto")
@friendly_errors
def search_pareto(search_id: str, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """The Pareto front of a search, one row per member."""
    with _client(server) as client:
        front = client.pareto(search_id)
    if as_json:
        out.print_json(data=front)
        return
    names = [o["name"] for o in front["objectives"]]
    table = Table("trial", *(f"{o['name']} ({o['direction'][:3]})" for o in front["objectives"]), "config id")
    for trial in front["trials"]:
        values = [f"{trial['values'][n]:.6g}" if n in trial["values"] else "-" for n in names]
        table.add_row(str(trial["number"]), *values, trial["config_id"])
    out.print(table)
    hv = front["hypervolume"]
    out.print(
        f"search {search_id} ({front['status']}): {len(front['trials'])} on the front"
        + ("" if hv is None else f", hypervolume {hv:.4f}")
    )


@search_app.command("cancel")
@friendly_errors
def search_cancel(search_id: str, server: ServerOpt = None) -> None:
    """Cancel a queued search at once, or a running one after its trials in flight."""
    with _client(server) as client:
        search = client.cancel(search_id)
    out.print(f"search {search_id}: {search['status']} ({search['status_message']})")


@search_app.command("watch")
@friendly_errors
def search_watch(
    search_id: str,
    server: ServerOpt = None,
    poll_s: Annotated[float, typer.Option(help="seconds between the server's reads of the search")] = 1.0,
) -> None:
    """Follow a search's event stream with a progress bar until it ends (exit 1 unless it succeeded)."""
    with _client(server) as client:
        final = _follow(client, search_id, poll_s=poll_s)
    _print_search(final)
    if final["status"] != "succeeded":
        raise typer.Exit(1)


@search_app.command("trials")
@friendly_errors
def search_trials(
    search_id: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file to write (csv or parquet)")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="csv, parquet or table (a page on the terminal)")
    ] = "csv",
    state: Annotated[str | None, typer.Option(help="only trials in this state (complete, failed)")] = None,
    limit: Annotated[int, typer.Option(help="rows of the table format")] = 20,
    server: ServerOpt = None,
) -> None:
    """Every trial of a search as a CSV or Parquet file (flat columns: value.*, config.*, metric.*),
    or the first rows as a table."""
    if fmt not in ("csv", "parquet", "table"):
        raise ValueError(f"--format must be csv, parquet or table, got {fmt!r}")
    with _client(server) as client:
        if fmt == "table":
            page = client.trials(search_id, limit=limit, state=state)
            table = Table("trial", "state", "values", "config id")
            for t in page["items"]:
                values = ", ".join(f"{k}={v:.6g}" for k, v in t["values"].items()) or (t["error"] or "-")
                table.add_row(str(t["number"]), t["state"], values, t["config_id"])
            out.print(table)
            out.print(f"{len(page['items'])} of {page['total']} trials")
            return
        if output is None:
            raise ValueError(f"--format {fmt} writes a file: give it with -o FILE")
        size = client.export_trials(search_id, output, fmt, state=state)
    out.print(f"wrote {output} ({size:,} bytes, {fmt})")


@search_app.command("export")
@friendly_errors
def search_export(
    search_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="model file to write")],
    trial: Annotated[int | None, typer.Option(help="the trial's number")] = None,
    fmt: Annotated[str, typer.Option("--format", help="torchscript, onnx or coreml")] = "onnx",
    front_index: Annotated[
        int | None, typer.Option(help="instead of --trial: the front's member at this index (0 = first)")
    ] = None,
    server: ServerOpt = None,
) -> None:
    """Export the subnet of one trial of a search (or of a front member) as a model file."""
    with _client(server) as client:
        if trial is None:
            if front_index is None:
                raise ValueError("give --trial N or --front-index N")
            front = client.pareto(search_id, offset=front_index, limit=1)
            if not front["trials"]:
                raise ValueError(f"the front of search {search_id} has {front['total']} members")
            chosen = front["trials"][0]
        else:
            chosen = client.trial(search_id, trial)
        spec = client.get(search_id)["spec"]
        size = client.export_subnet(
            spec["space"], chosen["config"], output, fmt, options=spec.get("space_options") or {}
        )
    out.print(f"wrote {output} ({size:,} bytes, {fmt}) of trial {chosen['number']} ({chosen['config_id']})")


# --------------------------------------------------------------------------------------- space
space_app = typer.Typer(no_args_is_help=True, help="Score or export one subnet of a space on a NAS server.")
app.add_typer(space_app, name="space")

ConfigArg = Annotated[
    str,
    typer.Option(
        "--config", "-c", help="a reference name (s0, sd15, ...), a JSON object, or a .json/.yaml file"
    ),
]


def load_config(text: str) -> dict[str, Any] | str:
    """`--config`: a file, inline JSON, or else a reference name for the server to resolve."""
    path = Path(text)
    if text.endswith((".json", ".yaml", ".yml")):
        if not path.is_file():
            raise ValueError(f"config file {text!r} does not exist")
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    elif text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--config is not valid JSON: {exc}") from None
    else:
        return text
    if not isinstance(data, dict):
        raise ValueError("a config must be a mapping of choice names to values")
    return data


@space_app.command("evaluate")
@friendly_errors
def space_evaluate(
    name: str,
    config: ConfigArg,
    option: OptionsOpt = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", "-d", help="price on this device, repeatable")
    ] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A subnet's objectives now: parameters, MACs and latency per device (with the covered share)."""
    with _client(server) as client:
        result = client.evaluate(
            name, load_config(config), options=parse_options(option), devices=device or []
        )
    if as_json:
        out.print_json(data=result)
        return
    table = Table(show_header=False, box=None)
    table.add_row("config id", result["config_id"])
    table.add_row("blocks", str(result["n_blocks"]))
    table.add_row("params", f"{result['params']:,}")
    table.add_row("macs", "-" if result["macs"] is None else f"{result['macs']:,}")
    for dev, lat in result["latency"].items():
        total = "-" if lat["total_ms"] is None else f"{lat['total_ms']:.3f} ms"
        note = " (partly estimated)" if lat["estimated"] else ""
        table.add_row(f"latency:{dev}", f"{total}, {lat['covered_share']:.0%} of blocks measured{note}")
    out.print(table)


@space_app.command("export")
@friendly_errors
def space_export(
    name: str,
    config: ConfigArg,
    output: Annotated[Path, typer.Option("--output", "-O", help="model file to write (-o is --option here)")],
    fmt: Annotated[str, typer.Option("--format", help="torchscript, onnx or coreml")] = "onnx",
    option: OptionsOpt = None,
    server: ServerOpt = None,
) -> None:
    """A subnet as a TorchScript, ONNX or zipped Core ML (.mlpackage) file, built by the server."""
    with _client(server) as client:
        size = client.export_subnet(name, load_config(config), output, fmt, options=parse_options(option))
    out.print(f"wrote {output} ({size:,} bytes, {fmt})")


# --------------------------------------------------------------------------------------- spaces
@app.command()
@friendly_errors
def spaces(
    name: Annotated[str | None, typer.Argument(help="a space to describe")] = None,
    option: OptionsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the registered search spaces, or describe one (its choices, options and references)."""
    from search_spaces import get_space, list_spaces

    if name is None:
        table = Table("space", "cardinality", "description")
        for space_name in list_spaces():
            space = get_space(space_name)
            table.add_row(space_name, f"{space.cardinality:.3g}", space.description)
        out.print(table)
        return
    info = get_space(name, **parse_options(option)).describe()
    if as_json:
        out.print_json(data=info)
        return
    out.print(f"[bold]{info['name']}[/bold]: {info['description']}")
    out.print(f"cardinality {info['cardinality']}; options {info['option_values']}")
    choices = Table("choice", "options")
    for choice in info["choices"]:
        choices.add_row(choice["name"], ", ".join(map(str, choice["options"])))
    out.print(choices)
    out.print(f"reference configs: {', '.join(info['reference_configs'])}")


# --------------------------------------------------------------------------------------- lut
def _local_table() -> Any:
    from latency_lut import SqlLatencyTable
    from services.db import init_db, make_engine

    engine = make_engine(Settings().database_url)
    init_db(engine)
    return SqlLatencyTable(engine)


@lut_app.command("measure")
@friendly_errors
def lut_measure(
    device: Annotated[str, typer.Option(help="device to measure on this host, e.g. host-cpu-torch")],
    space: Annotated[str, typer.Option(help="search space whose blocks to measure")],
    configs: Annotated[
        str | None, typer.Option(help="comma-separated reference configs (default: every block)")
    ] = None,
    option: OptionsOpt = None,
    warmup: Annotated[int | None, typer.Option(help="untimed runs per block [NAS_LUT_WARMUP]")] = None,
    repeats: Annotated[int | None, typer.Option(help="timed runs per block [NAS_LUT_REPEATS]")] = None,
) -> None:
    """Measure the blocks a space needs that the device's table lacks, on this host."""
    from latency_lut import measure_missing
    from search_spaces import get_space

    settings = Settings()
    instance = get_space(space, **parse_options(option))
    names = [c.strip() for c in configs.split(",") if c.strip()] if configs else None
    for config in names or []:
        instance.reference_config(config)
    table = _local_table()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out) as bar:
        task = bar.add_task(f"measuring {device}", total=None)

        def progress(done: int, total: int, key: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{device}: {key.split('|', 1)[0]}")

        report = measure_missing(
            instance,
            device,
            table,
            configs=names,
            warmup=settings.lut_warmup if warmup is None else warmup,
            repeats=settings.lut_repeats if repeats is None else repeats,
            progress=progress,
        )
    out.print(
        f"{report.device}: {report.needed} blocks needed, {report.already_present} already in the table, "
        f"{report.measured} measured in {report.seconds:.1f}s"
    )


@lut_app.command("export")
@friendly_errors
def lut_export(
    file: Annotated[Path, typer.Argument(help="output .csv or .parquet")],
    device: Annotated[str, typer.Option(help="device whose table to write")],
) -> None:
    """Write a device's latency table to a CSV or Parquet file."""
    from latency_lut.io import export_table

    table = _local_table()
    if device not in table.devices():
        raise ValueError(f"no latency table for device {device!r}; devices with tables: {table.devices()}")
    n = export_table(table, device, file)
    out.print(f"wrote {n} entries of {device} to {file}")


@lut_app.command("import")
@friendly_errors
def lut_import(
    file: Annotated[Path, typer.Argument(help="a .csv or .parquet latency table file")],
    device: Annotated[str | None, typer.Option(help="set (or override) the device of every row")] = None,
) -> None:
    """Validate a CSV or Parquet latency table file and upsert its entries."""
    from latency_lut.io import import_table

    if not file.is_file():
        raise ValueError(f"latency table file {str(file)!r} does not exist or is not a file")
    n = import_table(_local_table(), file, device=device)
    out.print(f"imported {n} entries from {file}")


def main() -> None:
    """Entry point of the `nas` console script."""
    app()
