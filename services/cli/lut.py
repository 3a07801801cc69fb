"""`nas lut measure|import|export`: latency tables on this host's database (`NAS_DATABASE_URL`);
`nas lut validate|accuracy` (from `services.cli.farm`) ask a server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli import farm as cli_farm
from services.cli.common import OptionsOpt, out, parse_options, progress_bar
from services.cli.errors import user_errors
from services.cli.farm import ClockOpt
from services.settings import get_settings

lut_app = typer.Typer(
    no_args_is_help=True,
    help="Latency lookup tables: measure, import and export on this host's database; validate and "
    "accuracy on a server.",
)
lut_app.command("validate")(cli_farm.lut_validate)
lut_app.command("accuracy")(cli_farm.lut_accuracy)


def database_label(url: str) -> str:
    """The database of `url` as a person finds it: a SQLite file's absolute path, else the URL
    without its password."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return str(Path(parsed.database).resolve())
    return parsed.render_as_string(hide_password=True)


def _sqlite_file(url: str) -> Path | None:
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def _local_table() -> Any:
    from latency_lut import SqlLatencyTable
    from services.core.db import make_engine
    from services.core.migrations import init_db

    engine = make_engine(get_settings().database_url)
    init_db(engine)
    return SqlLatencyTable(engine)


@lut_app.command("measure")
@user_errors()
def lut_measure(
    device: Annotated[str, typer.Option(help="device to measure on this host, e.g. host-cpu-torch")],
    space: Annotated[str, typer.Option(help="search space whose blocks to measure")],
    configs: Annotated[
        str | None, typer.Option(help="comma-separated reference configs (default: every block)")
    ] = None,
    option: OptionsOpt = None,
    warmup: Annotated[int | None, typer.Option(help="untimed runs per block [NAS_LUT_WARMUP]")] = None,
    repeats: Annotated[int | None, typer.Option(help="timed runs per block [NAS_LUT_REPEATS]")] = None,
    clock: ClockOpt = None,
    min_seconds: Annotated[
        float | None,
        typer.Option(
            help="time each block past --repeats until its runs span this many seconds [NAS_LUT_MIN_SECONDS]"
        ),
    ] = None,
    timing: Annotated[
        list[str] | None,
        typer.Option(help="isolated, in_context or call_overhead, repeatable (default: all three)"),
    ] = None,
) -> None:
    """Measure the table entries a space needs that the device's table lacks, on this host: each block
    alone, right after its predecessor (in context) and the runtime's per-call overhead."""
    from latency_lut import device_backend, measure_missing
    from latency_lut.measure import DEFAULT_TIMINGS
    from search_spaces import get_space

    settings = get_settings()
    instance = get_space(space, **parse_options(option))
    names = [c.strip() for c in configs.split(",") if c.strip()] if configs else None
    for config in names or []:
        instance.reference_config(config)
    min_seconds = settings.lut_min_seconds if min_seconds is None else min_seconds
    backend_options = {
        **({"clock": clock} if clock else {}),
        **({"min_seconds": min_seconds} if min_seconds else {}),
    }
    table = _local_table()
    with progress_bar(out) as bar:
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
            timings=timing or DEFAULT_TIMINGS,
            backend=device_backend(device, **backend_options) if backend_options else None,
            progress=progress,
        )
    out.print(
        f"{report.device}: {report.needed} entries needed, {report.already_present} already in the table, "
        f"{report.measured} measured in {report.seconds:.1f}s"
        + (f" (clock: {report.clock})" if report.clock else "")
    )


@lut_app.command("export")
@user_errors()
def lut_export(
    file: Annotated[Path, typer.Argument(help="output .csv or .parquet")],
    device: Annotated[str, typer.Option(help="device whose table to write")],
) -> None:
    """Write a device's latency table to a CSV or Parquet file."""
    from latency_lut.io import export_table

    url = get_settings().database_url
    where = database_label(url)
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.is_file():
        # Opening it would create an empty database: say where it looked instead.
        raise ValueError(
            f"no database file {str(sqlite_file)!r} (NAS_DATABASE_URL={url!r}, read from the current folder "
            f"{str(Path.cwd())!r}): run this where the server runs, or set NAS_DATABASE_URL to its database"
        )
    table = _local_table()
    devices = table.devices()
    if not devices:
        raise ValueError(
            f"no latency table for device {device!r}: the database {where} (NAS_DATABASE_URL) holds no "
            "latency table at all (a new or empty database, not the server's?); set NAS_DATABASE_URL to "
            "the database the server uses"
        )
    if device not in devices:
        raise ValueError(
            f"no latency table for device {device!r} in the database {where} (NAS_DATABASE_URL); devices "
            f"with tables there: {devices}"
        )
    n = export_table(table, device, file)
    out.print(f"wrote {n} entries of {device} from {where} to {file}", markup=False, highlight=False)


@lut_app.command("import")
@user_errors()
def lut_import(
    file: Annotated[Path, typer.Argument(help="a .csv or .parquet latency table file")],
    device: Annotated[str | None, typer.Option(help="set (or override) the device of every row")] = None,
) -> None:
    """Validate a CSV or Parquet latency table file and upsert its entries."""
    from latency_lut.io import import_table

    if not file.is_file():
        raise ValueError(f"latency table file {str(file)!r} does not exist or is not a file")
    n = import_table(_local_table(), file, device=device)
    where = database_label(get_settings().database_url)
    out.print(f"imported {n} entries from {file} into {where}", markup=False, highlight=False)
