"""`nas space evaluate|export` (a subnet scored or exported by a server) and `nas spaces` (the
registered spaces, listed on this machine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from services.cli.common import JsonOpt, OptionsOpt, ServerOpt, client, out, parse_options, print_table
from services.cli.common import table as grid_table
from services.cli.errors import user_errors

space_app = typer.Typer(no_args_is_help=True, help="Score or export one subnet of a space on a NAS server.")

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
@user_errors()
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
    with client(server) as api:
        result = api.evaluate(name, load_config(config), options=parse_options(option), devices=device or [])
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
@user_errors()
def space_export(
    name: str,
    config: ConfigArg,
    output: Annotated[Path, typer.Option("--output", "-O", help="model file to write (-o is --option here)")],
    fmt: Annotated[str, typer.Option("--format", help="torchscript, onnx, coreml or quantized")] = "onnx",
    option: OptionsOpt = None,
    server: ServerOpt = None,
) -> None:
    """A subnet as a TorchScript, ONNX or zipped Core ML (.mlpackage) file, built by the server."""
    with client(server) as api:
        size = api.export_subnet(name, load_config(config), output, fmt, options=parse_options(option))
    out.print(f"wrote {output} ({size:,} bytes, {fmt})")


@user_errors()
def spaces(
    name: Annotated[str | None, typer.Argument(help="a space to describe")] = None,
    option: OptionsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the registered search spaces, or describe one (its choices, options and references)."""
    from search_spaces import get_space, list_spaces

    if name is None:
        spaces = grid_table("space", "subnets (cardinality)", "description")
        for space_name in list_spaces():
            space = get_space(space_name)
            spaces.add_row(space_name, f"{space.cardinality:.3g}", space.description)
        print_table(spaces)
        return
    info = get_space(name, **parse_options(option)).describe()
    if as_json:
        out.print_json(data=info)
        return
    out.print(f"[bold]{info['name']}[/bold]: {info['description']}")
    out.print(f"cardinality {info['cardinality']}; options {info['option_values']}")
    choices = grid_table("choice", "options")
    for choice in info["choices"]:
        choices.add_row(choice["name"], ", ".join(map(str, choice["options"])))
    print_table(choices)
    out.print(f"reference configs: {', '.join(info['reference_configs'])}")
