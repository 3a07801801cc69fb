"""`nas farm run`, `nas devices ...`, `nas lut validate` and `nas lut accuracy`: device farms and the
accuracy of their tables, all talking to a NAS server over HTTP.

Mounted by `services.cli`. Exit codes: 0 success, 1 the server is unreachable or failed (or some
blocks failed), 2 bad input or a refused request, 130 interrupted (a farm run resumes when started
again with the same arguments).
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from services.cli.common import (
    JsonOpt,
    LineProgress,
    OptionsOpt,
    ServerOpt,
    client,
    err,
    out,
    parse_options,
    print_table,
    progress_bar,
    table,
)
from services.cli.errors import user_errors
from services.settings import get_settings

farm_app = typer.Typer(no_args_is_help=True, help="Fill latency tables from the machine this runs on.")
devices_app = typer.Typer(no_args_is_help=True, help="Latency targets known to a NAS server.")

BackendOpt = Annotated[str, typer.Option(help="runtime that times the blocks: torch, onnxruntime or coreml")]
ThreadsOpt = Annotated[int, typer.Option(help="intra-op threads of the runtime (fixed for every block)")]
MinSecondsOpt = Annotated[
    float,
    typer.Option(
        help="time each block or subnet past --repeats until its timed runs span this many seconds "
        "(sub-millisecond networks on a shared host repeat far better; docs/lut.md)"
    ),
]
ClockOpt = Annotated[
    str | None,
    typer.Option(
        help="thread (this thread's CPU time: the default with one thread, it repeats best on a shared "
        "host) or wall (elapsed time; needed with several threads). Validate with the table's clock."
    ),
]


def _progress() -> AbstractContextManager[Progress | LineProgress]:
    """Bars on a terminal; plain lines under nohup, systemd or a pipe."""
    return progress_bar(err)


# --------------------------------------------------------------------------------------- farm
@farm_app.command("run")
@user_errors(interrupted="interrupted; start the same command again to resume (measured blocks are kept)")
def farm_run(
    device: Annotated[str, typer.Option(help="device whose table to fill (registered when new)")],
    space: Annotated[str, typer.Option(help="search space whose blocks to measure")],
    backend: BackendOpt = "torch",
    server: ServerOpt = None,
    option: OptionsOpt = None,
    configs: Annotated[
        str | None, typer.Option(help="only the blocks of these reference configs (comma-separated)")
    ] = None,
    search: Annotated[str | None, typer.Option(help="the blocks of this search's space and options")] = None,
    warmup: Annotated[int, typer.Option(help="untimed runs per block")] = 10,
    repeats: Annotated[int, typer.Option(help="timed runs per block")] = 30,
    threads: ThreadsOpt = 1,
    clock: ClockOpt = None,
    min_seconds: MinSecondsOpt = 0.0,
    torch_device: Annotated[str, typer.Option(help="cpu, or cuda (timed with CUDA events)")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="blocks per upload")] = 64,
    retries: Annotated[int, typer.Option(help="retries of a failed request (exponential backoff)")] = 6,
    calibrate: Annotated[
        int, typer.Option(help="whole random subnets to measure end to end afterwards (subnet calibration)")
    ] = 0,
    export_dir: Annotated[
        Path | None, typer.Option(help="also export every block in the runtime's format (.onnx, .mlpackage)")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="where runs keep their id and unsent rows [NAS_FARM_STATE_DIR]")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the work; measure and upload nothing")
    ] = False,
) -> None:
    """Measure the blocks the device's table lacks and upload them; resumes after an interruption."""
    from services.farm import FarmAgent, FarmConfig

    config = FarmConfig(
        device=device,
        backend=backend,
        space=space,
        options=parse_options(option),
        configs=[c.strip() for c in configs.split(",") if c.strip()] if configs else None,
        search=search,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
        clock=clock,
        min_seconds=min_seconds,
        torch_device=torch_device,
        batch_size=batch_size,
        retries=retries,
        calibrate=calibrate,
        export_dir=export_dir,
        state_dir=state_dir or get_settings().farm_state_dir,
        dry_run=dry_run,
    )
    with client(server) as api, _progress() as bar:
        tasks: dict[str, Any] = {}

        def on_event(event: Any) -> None:
            if event.phase not in tasks:
                tasks[event.phase] = bar.add_task(event.phase, total=event.total)
            description = f"{event.phase} {event.detail.split('|', 1)[0]}".strip()
            bar.update(tasks[event.phase], completed=event.done, total=event.total, description=description)

        agent = FarmAgent(config, api, progress=on_event, log=lambda m: bar.console.print(m, markup=False))
        report = agent.run()
    _print_farm_report(report, config)
    if report.failed:
        raise typer.Exit(1)


def _print_farm_report(report: Any, config: Any) -> None:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items())) or "nothing"
    if report.dry_run:
        out.print(
            f"dry run: {report.planned} table entries of {config.space} to measure on {report.device} with "
            f"{report.backend} ({kinds}); nothing measured or uploaded",
            markup=False,
        )
        if not report.timing_supported:
            out.print(f"note: {report.backend} cannot time on this machine (Core ML timing needs macOS)")
        return
    resumed = " (resumed)" if report.resumed else ""
    out.print(
        f"run {report.run_id}{resumed} on {report.device} with {report.backend}: "
        f"{report.planned} table entries to measure, {report.measured} measured, {report.uploaded} uploaded, "
        f"{report.duplicates} already on the server, {report.calibrated} calibration subnet(s), "
        f"{report.seconds:.1f}s",
        markup=False,
    )
    if report.registered:
        out.print(f"registered the new device {report.device}", markup=False)
    if report.exported:
        out.print(f"exported {report.exported} block(s) to {config.export_dir}", markup=False)
    if not report.timing_supported:
        out.print(
            "Core ML timing needs macOS: the blocks were exported, not timed. Run the same command on a Mac "
            "(or time the exported files there) to fill the table.",
            markup=False,
        )
    for key, error in list(report.failed.items())[:10]:
        err.print(f"failed: {key}: {error}", markup=False, soft_wrap=True)
    if report.failed:
        err.print(f"{len(report.failed)} entries failed; run the command again to retry them", markup=False)


# --------------------------------------------------------------------------------------- devices
@devices_app.command("list")
@user_errors()
def devices_list(server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """List the devices a server knows: built in, registered, or known by a table."""
    with client(server) as api:
        devices = api.devices()
    if as_json:
        out.print_json(data=devices.raw)
        return
    grid = table("device", "runtime", "hardware", "table entries", "source")
    for d in devices:
        source = "built in" if d.builtin else "registered" if d.registered else "table"
        grid.add_row(d.name, d.runtime, d.hardware, str(d.entries), source)
    print_table(grid)


@devices_app.command("add")
@user_errors()
def devices_add(
    name: Annotated[str, typer.Argument(help="device name, e.g. iphone14pro-coreml-ane")],
    runtime: Annotated[str, typer.Option(help="torch, onnxruntime, coreml, ...")],
    hardware: Annotated[str, typer.Option(help="what it runs on, e.g. 'Apple A16 Neural Engine'")],
    description: Annotated[str, typer.Option(help="free text")] = "",
    meta: Annotated[list[str] | None, typer.Option("--meta", help="metadata NAME=VALUE, repeatable")] = None,
    server: ServerOpt = None,
) -> None:
    """Register a device (again: updates its description and metadata)."""
    with client(server) as api:
        device = api.register_device(
            name, runtime=runtime, hardware=hardware, description=description, metadata=parse_options(meta)
        )
    out.print(f"device {device.name}: {device.runtime} on {device.hardware}", markup=False)


@devices_app.command("show")
@user_errors()
def devices_show(name: str, server: ServerOpt = None) -> None:
    """One device as JSON."""
    with client(server) as api:
        out.print_json(data=api.device(name).raw)


# --------------------------------------------------------------------------------------- lut
@user_errors()
def lut_validate(
    device: Annotated[str, typer.Option(help="device whose table to judge")],
    space: Annotated[str, typer.Option(help="search space to sample subnets from")],
    samples: Annotated[int, typer.Option(help="random subnets to measure end to end")] = 50,
    backend: BackendOpt = "torch",
    server: ServerOpt = None,
    option: OptionsOpt = None,
    seed: Annotated[int, typer.Option(help="seed of the subnet sample")] = 0,
    warmup: Annotated[int, typer.Option(help="untimed runs per subnet")] = 10,
    repeats: Annotated[int, typer.Option(help="timed runs per subnet")] = 30,
    threads: ThreadsOpt = 1,
    clock: ClockOpt = None,
    min_seconds: MinSecondsOpt = 0.0,
    torch_device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Measure random whole subnets end to end (twice each) with the backend that filled the table,
    store them on the server as held-out subnets and print every predictor's accuracy (RMSE, RMSPE,
    +-5/10/15%, Spearman) beside the measurement's own repeatability."""
    from search_spaces import get_space
    from services.farm import FarmConfig, validate_device

    config = FarmConfig(
        device=device,
        backend=backend,
        space=space,
        threads=threads,
        clock=clock,
        min_seconds=min_seconds,
        torch_device=torch_device,
    )
    instance = get_space(space, **parse_options(option))
    timer = config.make_backend()
    if not timer.can_time:
        raise ValueError(f"backend {config.backend_name!r} cannot time on this machine (Core ML needs macOS)")
    with client(server) as api, _progress() as bar:
        task = bar.add_task(f"validating {device}", total=samples)
        report = validate_device(
            api,
            device,
            instance,
            timer,
            samples=samples,
            seed=seed,
            warmup=warmup,
            repeats=repeats,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        out.print_json(data=report)
    else:
        print_accuracy(report)


@user_errors()
def lut_accuracy(
    device: Annotated[str, typer.Option(help="device whose accuracy to show")],
    space: Annotated[str | None, typer.Option(help="only this space")] = None,
    run_id: Annotated[str | None, typer.Option(help="only this validation run")] = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The accuracy of a device's predictions over its held-out validation subnets."""
    with client(server) as api:
        report = api.accuracy(device, space=space, run_id=run_id)
    if as_json:
        out.print(json.dumps(report, indent=1), markup=False)
    else:
        print_accuracy(report)


def print_accuracy(report: dict[str, Any]) -> None:
    """Every predictor's row on the held-out subnets, the measurement's own ceiling under them."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    def number(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    title = f"{report['device']}, {report['space'] or 'all spaces'}: {report['n']} held-out subnets"
    grid = table(
        "predictor", "subnets", "RMSE ms", "RMSPE", "mean err", "±5%", "±10%", "±15%", "rho", title=title
    )
    selected = set((report.get("selected") or "").split(", "))
    rows = [
        (r["name"] + (" (prices searches)" if r["name"] in selected else ""), r) for r in report["predictors"]
    ]
    if report.get("ceiling"):
        rows.append(("ceiling: measured twice", report["ceiling"]))
    for name, r in rows:
        grid.add_row(
            name,
            str(r["n"]),
            number(r["rmse_ms"], 4),
            pct(r["rmspe"]),
            pct(r["mean_error"]),
            pct(r["within_5"]),
            pct(r["within_10"]),
            pct(r["within_15"]),
            number(r["spearman"]),
        )
    print_table(grid)
    notes = [
        f"statistic: {report['statistic']} of each subnet's samples; "
        "error = (predicted - measured) / measured"
    ]
    if report["estimated"]:
        notes.append(f"{report['estimated']} priced partly by the fallback")
    if report["unpriced"]:
        notes.append(f"{report['unpriced']} left out (missing blocks)")
    if report["excluded_calibration"]:
        notes.append(f"{report['excluded_calibration']} left out (calibration subnets)")
    out.print("; ".join(notes), markup=False)
