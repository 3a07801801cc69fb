"""`nas search ...`: submit, follow, list and read searches on a NAS server (HTTP only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from services.cli.common import (
    JsonOpt,
    ServerOpt,
    client,
    err,
    format_value,
    objective_unit,
    out,
    print_table,
    progress_bar,
    table,
)
from services.cli.errors import user_errors
from services.client import NasClient, Search
from services.wording import duration_text

search_app = typer.Typer(no_args_is_help=True, help="Submit and follow searches on a NAS server.")


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


@search_app.command("submit")
@user_errors()
def search_submit(
    file: Annotated[Path, typer.Argument(help="search spec, YAML or JSON")],
    server: ServerOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the search with a progress bar")] = False,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            help="checkpoint of the float weights on the server's disk (space option 'weights'): a state "
            "dict file, or for unet_bits a diffusers UNet folder; made absolute here",
        ),
    ] = None,
) -> None:
    """Submit a search spec; prints its id (and with --wait follows it to the end)."""
    spec = load_spec_file(file)
    if weights is not None:
        spec["space_options"] = {**(spec.get("space_options") or {}), "weights": str(weights.resolve())}
    with client(server) as api:
        created = api.submit(spec)
        out.print(f"queued search {created.id}")
        for warning in created.warnings:
            err.print(f"warning: {warning}", markup=False)
        for table in created.measure_first:
            out.print(
                f"before its first trial the server measures {table['entries']:,} latency-table entries of "
                f"{table['device']} ({table['blocks']:,} blocks)",
                markup=False,
                highlight=False,
            )
        if wait:
            final = _follow(api, created.id)
            _print_search(final)
            if final.status != "succeeded":
                raise typer.Exit(1)


def _follow(api: NasClient, search_id: str, *, poll_s: float = 1.0) -> Search:
    """Follow the search's server-sent events with a progress bar (trials, failures, time left)."""
    with progress_bar(out) as bar:
        task = bar.add_task("queued", total=None)

        def on_progress(search: Search) -> None:
            progress = search.progress
            table = progress.get("latency_table")
            if progress.get("phase") == "measuring latency table" and table:
                # The bar counts table entries until the first trial.
                bar.update(task, total=table["total"], completed=table["done"])
                bar.update(task, description=f"[{search.status}] {_table_text(table)}")
                return
            description = f"[{search.status}] {search.status_message}"
            if progress.get("failed"):
                description += f", {progress['failed']} failed"
            if progress.get("eta_s") and search.status == "running":
                description += f", ~{progress['eta_s']:.0f}s left"
            bar.update(task, total=search.budget_trials, completed=search.trials_done)
            bar.update(task, description=description)

        return api.watch(search_id, on_progress, poll_s=poll_s)


@search_app.command("status")
@user_errors()
def search_status(search_id: str, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """Show a search's status and progress."""
    with client(server) as api:
        search = api.get(search_id)
    if as_json:
        out.print_json(data=search.raw)
    else:
        _print_search(search)


def _print_search(search: Search) -> None:
    grid = Table(show_header=False, box=None)
    hv = search.hypervolume
    rows = [
        ("id", search.id),
        ("name", search.name),
        ("status", search.status),
        ("message", search.status_message),
        ("trials", f"{search.trials_done} of {search.budget_trials}"),
        ("failed trials", str(search.trials_failed)),
        ("front size", str(search.front_size)),
        ("hypervolume", "-" if hv is None else f"{hv:.4f}"),
        ("elapsed", f"{search.elapsed_s:.1f}s"),
        ("time left", _eta_text(search)),
        ("owner", search.owner or "-"),
        ("error", search.error or "-"),
    ]
    progress = search.progress
    table = progress.get("latency_table")
    if progress.get("phase"):
        rows.insert(3, ("phase", progress["phase"]))
    if table:
        rows.insert(4 if progress.get("phase") else 3, ("latency table", _table_text(table)))
    rows += [("warning", text) for text in search.warnings]
    for key, value in rows:
        grid.add_row(key, str(value))
    print_table(grid)


def _table_text(table: dict[str, Any]) -> str:
    """`measuring latency table: 340 / 1,212 entries of host-cpu-torch, ETA 3m 12s` while measuring,
    `1,212 entries of host-cpu-torch measured in 4m 31s` once done."""
    counts = f"{table['done']:,} / {table['total']:,} entries of {table['device']}"
    if table["done"] < table["total"]:
        return f"measuring latency table: {counts}, ETA {duration_text(table.get('eta_s'))}"
    return f"{table['total']:,} entries of {table['device']} measured in {duration_text(table['elapsed_s'])}"


def _eta_text(search: Search) -> str:
    eta = search.progress.get("eta_s")
    return "-" if eta is None else f"~{eta:.0f}s"


@search_app.command("list")
@user_errors()
def search_list(
    server: ServerOpt = None,
    status: Annotated[str | None, typer.Option(help="only searches in this status")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List searches, newest first."""
    with client(server) as api:
        page = api.list(status=status, limit=limit)
    if as_json:
        out.print_json(data=page.raw)
        return
    grid = table("name", "status", "trials (done/budget)", "front (members)", "created (UTC)")
    # Ids are what users copy into other commands: never truncated.
    grid.add_column("id", no_wrap=True, min_width=32)
    for s in page:
        trials = f"{s.trials_done}/{s.budget_trials}"
        created = "-" if s.created_at is None else s.created_at.strftime("%Y-%m-%d %H:%M")
        status = s.status
        if s.warnings:
            status += f" ({len(s.warnings)} warning{'s' if len(s.warnings) > 1 else ''})"
        grid.add_row(s.name, status, trials, str(s.front_size), created, s.id)
    print_table(grid)
    out.print(f"{len(page)} of {page.total} searches")


@search_app.command("pareto")
@user_errors()
def search_pareto(search_id: str, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """The Pareto front of a search, one row per member."""
    with client(server) as api:
        front = api.pareto(search_id)
    if as_json:
        out.print_json(data=front.raw)
        return
    names = [o.name for o in front.objectives]
    grid = table("trial", *(_objective_header(o.name, o.direction) for o in front.objectives), "config id")
    for trial in front:
        values = [format_value(n, trial.values[n]) if n in trial.values else "-" for n in names]
        grid.add_row(str(trial.number), *values, trial.config_id)
    print_table(grid)
    hv = front.hypervolume
    out.print(
        f"search {search_id} ({front.status}): {len(front)} on the front"
        + ("" if hv is None else f", hypervolume {hv:.4f}")
    )


def _objective_header(name: str, direction: str) -> str:
    unit = objective_unit(name)
    return f"{name} ({unit}, {direction[:3]})" if unit else f"{name} ({direction[:3]})"


def _value_text(name: str, value: float) -> str:
    unit = objective_unit(name)
    return f"{name}={format_value(name, value)}" + (f" {unit}" if unit else "")


@search_app.command("cancel")
@user_errors()
def search_cancel(search_id: str, server: ServerOpt = None) -> None:
    """Cancel a queued search at once, or a running one after its trials in flight."""
    with client(server) as api:
        search = api.cancel(search_id)
    out.print(f"search {search_id}: {search.status} ({search.status_message})")


@search_app.command("watch")
@user_errors()
def search_watch(
    search_id: str,
    server: ServerOpt = None,
    poll_s: Annotated[float, typer.Option(help="seconds between the server's reads of the search")] = 1.0,
) -> None:
    """Follow a search's event stream with a progress bar until it ends (exit 1 unless it succeeded)."""
    with client(server) as api:
        final = _follow(api, search_id, poll_s=poll_s)
    _print_search(final)
    if final.status != "succeeded":
        raise typer.Exit(1)


@search_app.command("steps")
@user_errors()
def search_steps(search_id: str, server: ServerOpt = None, as_json: JsonOpt = False) -> None:
    """The step log of a stepwise search (`evolving`, `slimming`): per step the action taken, its
    quality and latency change, its score under the strategy's rule and the runner-up."""
    with client(server) as api:
        page = api.steps(search_id)
    if as_json:
        out.print_json(data=page.raw)
        return
    grid = table(
        "step", "kind", "taken", "quality change", "latency change (ms)", "score", "runner-up (score)"
    )
    for step in page:
        runner_up = "-"
        if step.runner_up:
            runner_up = f"{_actions_text(step.runner_up['actions'])} ({step.runner_up['score']:.4g})"
        grid.add_row(
            str(step.step),
            step.kind,
            _actions_text(step.taken) or (step.reason or "-"),
            "-" if step.d_quality is None else f"{step.d_quality:+.4g}",
            "-" if step.d_latency_ms is None else f"{step.d_latency_ms:+.4g}",
            ", ".join(f"{x:.4g}" for x in step.score) or "-",
            runner_up,
        )
    print_table(grid)
    ranked_by = next((s.ranked_by for s in page if s.ranked_by), None)
    out.print(f"{page.total} steps" + (f"; score: {ranked_by}, smaller is better" if ranked_by else ""))


def _actions_text(actions: list[dict[str, Any]]) -> str:
    return ", ".join(f"{a['choice']} {a['from']}->{a['to']}" for a in actions)


@search_app.command("trials")
@user_errors()
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
    with client(server) as api:
        if fmt == "table":
            page = api.trials(search_id, limit=limit, state=state)
            grid = table("trial", "state", "values", "config id")
            for t in page:
                values = ", ".join(_value_text(k, v) for k, v in t.values.items()) or (t.error or "-")
                grid.add_row(str(t.number), t.state, values, t.config_id)
            print_table(grid)
            out.print(f"{len(page)} of {page.total} trials")
            return
        if output is None:
            raise ValueError(f"--format {fmt} writes a file: give it with -o FILE")
        size = api.export_trials(search_id, output, fmt, state=state)
    out.print(f"wrote {output} ({size:,} bytes, {fmt})")


@search_app.command("export")
@user_errors()
def search_export(
    search_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="model file to write")],
    trial: Annotated[int | None, typer.Option(help="the trial's number")] = None,
    fmt: Annotated[str, typer.Option("--format", help="torchscript, onnx, coreml or quantized")] = "onnx",
    front_index: Annotated[
        int | None, typer.Option(help="instead of --trial: the front's member at this index (0 = first)")
    ] = None,
    server: ServerOpt = None,
) -> None:
    """Export the subnet of one trial of a search (or of a front member) as a model file."""
    with client(server) as api:
        if trial is None:
            if front_index is None:
                raise ValueError("give --trial N or --front-index N")
            front = api.pareto(search_id, offset=front_index, limit=1)
            if not front.items:
                raise ValueError(f"the front of search {search_id} has {front.total} members")
            chosen = front[0]
        else:
            chosen = api.trial(search_id, trial)
        spec = api.get(search_id).spec
        size = api.export_subnet(
            spec["space"], chosen.config, output, fmt, options=spec.get("space_options") or {}
        )
    out.print(f"wrote {output} ({size:,} bytes, {fmt}) of trial {chosen.number} ({chosen.config_id})")
