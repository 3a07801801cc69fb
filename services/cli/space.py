"""`nas space evaluate|export` (a subnet scored or exported by a server) and `nas spaces` (the
registered spaces, listed on this machine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from services.cli.common import JsonOpt, OptionsOpt, ServerOpt, client, out, parse_options, table
from services.cli.errors import user_errors

space_app = typer.Typer(no_args_is_help=True, help="Score or export one subnet of a space on a NAS server.")

LayersOpt = Annotated[
    bool, typer.Option("--layers", help="bit-width spaces: list every layer, not only the stages")
]
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
    layers: LayersOpt = False,
) -> None:
    """A subnet's objectives now: parameters, MACs and latency per device (with the covered share);
    for a bit-width space also its widths per stage and as a histogram (--layers: every layer)."""
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
    if result.get("precision"):
        print_precision(result["precision"], layers)


def print_precision(view: dict[str, Any], layers: bool) -> None:
    """A bit-width config: size, mean bits, a histogram of widths, a line per stage; with `layers`
    every layer."""
    counts = ", ".join(f"{h['bits']} bits: {h['layers']}" for h in view["histogram"])
    out.print(
        f"{view['layers_total']} quantized layers, {view['size_mb']:.3f} MB, {view['mean_bits']:.3f} bits "
        f"per weight; layers per width: {counts}"
    )
    stages = table("stage", "layers", "weights", "mean bits", "layers per width")
    for stage in view["stages"]:
        histogram = " ".join(f"{bits}:{n}" for bits, n in stage["histogram"].items())
        stages.add_row(
            stage["stage"],
            str(stage["layers"]),
            f"{stage['weights']:,}",
            f"{stage['mean_bits']:.2f}",
            histogram,
        )
    out.print(stages)
    if not layers:
        out.print("every layer's width: --layers (or --json)")
        return
    grid = table("layer", "bits", "weights")
    for layer in view["layers"]:
        grid.add_row(
            layer["name"] + (" (fixed)" if layer["fixed"] else ""),
            str(layer["bits"]),
            f"{layer['weights']:,}",
        )
    out.print(grid)


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
    layers: LayersOpt = False,
) -> None:
    """List the registered search spaces, or describe one (its choices, options and references); a
    bit-width space's hundreds of layer choices are summarised per stage (--layers: every one)."""
    from search_spaces import get_space, list_spaces

    if name is None:
        listing = Table("space", "cardinality", "description")
        for space_name in list_spaces():
            space = get_space(space_name)
            listing.add_row(space_name, f"{space.cardinality:.3g}", space.description)
        out.print(listing)
        return
    info = get_space(name, **parse_options(option)).describe()
    if as_json:
        out.print_json(data=info)
        return
    out.print(f"[bold]{info['name']}[/bold]: {info['description']}")
    cardinality = info["cardinality"]
    shown = (
        cardinality
        if len(cardinality) <= 20
        else f"{cardinality[0]}.{cardinality[1:3]}e{len(cardinality) - 1}"
    )
    out.print(f"cardinality {shown}; options {info['option_values']}")
    if info.get("layer_stages") and not layers:
        stages = table("stage", "layers", "searched", "weights")
        for stage in info["layer_stages"]:
            stages.add_row(
                stage["stage"], str(stage["layers"]), str(stage["searched"]), f"{stage['weights']:,}"
            )
        out.print(stages)
        widths = sorted({str(o) for c in info["choices"] for o in c["options"]}, key=int)
        out.print(
            f"{len(info['choices'])} choices bits.<stage>.<layer>, each of {', '.join(widths)} bits; fixed: "
            f"{', '.join(f'{k}={v}' for k, v in info['fixed_layers'].items())}; every choice: --layers"
        )
    else:
        choices = Table("choice", "options")
        for choice in info["choices"]:
            choices.add_row(choice["name"], ", ".join(map(str, choice["options"])))
        out.print(choices)
    out.print(f"reference configs: {', '.join(info['reference_configs'])}")
