"""Answers that point the right way, over real HTTP and through the CLI: a registered device without a
table, every error of a spec in one answer (allowed values shown once), and what string options
accept."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from svc_helpers import SMALL_SPEC, LiveServer, throwaway_server
from typer.testing import CliRunner

from search_spaces import get_space
from services.cli import app
from services.cli.common import format_value, objective_unit, progress_bar


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    with throwaway_server(tmp_path_factory.mktemp("answers")) as server:
        yield server


def test_a_registered_device_without_a_table_says_how_to_fill_it(live: LiveServer) -> None:
    name = f"farm-{uuid.uuid4().hex[:8]}"
    registered = httpx.post(
        f"{live.url}/v1/devices", json={"name": name, "runtime": "onnxruntime", "hardware": "x"}
    )
    assert registered.status_code == 201, registered.text
    spec = {**SMALL_SPEC, "objectives": [f"latency:{name}", "params"]}
    refused = httpx.post(f"{live.url}/v1/searches", json=spec)
    assert refused.status_code == 422
    [item] = refused.json()["detail"]
    assert item["field"] == "objectives[0]"
    assert f"device {name!r} is registered but has no latency table yet" in item["message"]
    command = (
        f"nas farm run --device {name} --backend BACKEND --space efficientformerv2 "
        "-o num_classes=10 -o resolution=32"
    )
    assert command in item["message"]
    # A device nobody registered is still unknown, with the known ones listed.
    unknown = httpx.post(
        f"{live.url}/v1/searches", json={**spec, "objectives": ["latency:nowhere", "params"]}
    )
    assert "unknown device 'nowhere'" in unknown.json()["detail"][0]["message"]


BAD_SPEC = {
    **SMALL_SPEC,
    "objectives": ["latency:iphone15", "proxy:synflw"],
    "constraints": ["params <= many"],
    "strategy": "nsga9",
}


def test_every_error_of_a_spec_comes_in_one_answer(live: LiveServer, tmp_path: Path) -> None:
    refused = httpx.post(f"{live.url}/v1/searches", json=BAD_SPEC)
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert [item["field"] for item in detail] == [
        "objectives[0]",
        "objectives[1]",
        "constraints[0]",
        "strategy",
    ]
    assert "iphone15" in detail[0]["message"] and "synflw" in detail[1]["message"]
    assert "nsga9" in detail[3]["message"] and "random" in detail[3]["allowed"]

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(BAD_SPEC))
    result = CliRunner().invoke(app, ["search", "submit", str(path), "--server", live.url])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "the server refused the request (422):" and len(lines) == 5
    for item, line in zip(detail, lines[1:], strict=True):
        assert item["field"] in line and item["message"] in line
        # The allowed values are printed once: in the message, or after it when it does not list them.
        assert line.count(str(item["allowed"])) == 1


def test_string_options_say_what_they_accept(live: LiveServer) -> None:
    base = get_space("temporal").option_specs()[0]
    assert base.name == "base"
    accepts = base.describe_allowed()
    assert "inf" not in accepts and "snapgen" in accepts and "JSON" in accepts
    described = httpx.get(f"{live.url}/v1/spaces/temporal").json()
    options = {option["name"]: option for option in described["options"]}
    assert options["base"]["allowed"] == accepts
    refused = httpx.get(f"{live.url}/v1/spaces/temporal", params={"base": "sd99"})
    assert refused.status_code == 422 and "snapgen" in refused.text


def test_tables_keep_whole_names_when_piped(live: LiveServer) -> None:
    name = "a-search-whose-name-is-longer-than-a-terminal-is-wide-" + "x" * 60
    created = httpx.post(f"{live.url}/v1/searches", json={**SMALL_SPEC, "name": name})
    assert created.status_code == 202
    listed = CliRunner().invoke(app, ["search", "list", "--server", live.url])
    assert listed.exit_code == 0 and name in listed.stdout and created.json()["id"] in listed.stdout
    assert (objective_unit("latency:phone"), objective_unit("params"), objective_unit("macs")) == (
        "ms",
        "M",
        "GMACs",
    )
    assert format_value("params", 3_210_000) == "3.21" and format_value("macs", 4.1e8) == "0.41"


def test_progress_is_plain_lines_when_not_a_terminal() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, soft_wrap=True)
    assert not console.is_terminal
    with progress_bar(console) as bar:
        task = bar.add_task("measure", total=200)
        for done in range(1, 201):
            bar.update(task, completed=done, description="measure: effv2.ffn")
        bar.update(task, description="upload: batch 1")
    lines = buffer.getvalue().splitlines()
    # The start, the phase changes and the end; not one line per update.
    assert lines[0].startswith("measure: 0 / 200 (0%)")
    assert any(line.startswith("measure: effv2.ffn: 200 / 200 (100%)") for line in lines)
    assert lines[-1].startswith("upload: batch 1: 200 / 200 (100%)")
    assert len(lines) <= 5
