"""The `nas` CLI: against the live test server (typer's CliRunner), on local databases, and as the
installed console script in a subprocess (`nas serve --demo`, exit codes)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from svc_helpers import SMALL_SPEC, LiveServer, demo_spec, free_port, serve_env
from typer.testing import CliRunner

from search_spaces import get_space, list_spaces
from services.cli import app
from services.client import ClientError, NasClient

NAS = Path(sys.executable).with_name("nas")
runner = CliRunner()


def nas(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.json"
    body = {**SMALL_SPEC, "name": "cli-search", "budget": {"trials": 4, "parallelism": 2}}
    path.write_text(json.dumps(body))
    return path


# ----------------------------------------------------------------------------- against the server
def test_submit_wait_status_pareto(server: LiveServer, finished_search: dict, spec_file: Path) -> None:
    submitted = nas("search", "submit", str(spec_file), "--server", server.url, "--wait")
    assert submitted.exit_code == 0, submitted.output
    first_line = submitted.stdout.splitlines()[0]
    assert first_line.startswith("queued search ")
    sid = first_line.split()[-1]
    assert "succeeded" in submitted.stdout

    status = nas("search", "status", sid, "--server", server.url)
    assert status.exit_code == 0 and sid in status.stdout and "succeeded" in status.stdout
    as_json = json.loads(nas("search", "status", sid, "--server", server.url, "--json").stdout)
    assert as_json["id"] == sid and as_json["trials_done"] == 4

    pareto = nas("search", "pareto", sid, "--server", server.url, "--json")
    assert pareto.exit_code == 0
    front = json.loads(pareto.stdout)
    api_front = httpx.get(f"{server.url}/v1/searches/{sid}/pareto").json()
    assert [t["number"] for t in front["items"]] == [t["number"] for t in api_front["items"]]
    table = nas("search", "pareto", sid, "--server", server.url)
    assert table.exit_code == 0
    assert "latency:host-cpu-torch (ms, min)" in table.stdout and "params (M, min)" in table.stdout
    assert f"{len(front['items'])} on the front" in table.stdout

    listed = nas("search", "list", "--server", server.url, "--json")
    assert sid in [s["id"] for s in json.loads(listed.stdout)["items"]]
    # The table names its units and shows names and ids whole (a pipe has no 80-column limit).
    grid = nas("search", "list", "--server", server.url)
    assert grid.exit_code == 0 and "trials (done/budget)" in grid.stdout and "front (members)" in grid.stdout
    row = next(line for line in grid.stdout.splitlines() if sid in line)
    assert "4/4" in row and "…" not in grid.stdout


def test_cancel_of_finished_search_is_refused(server: LiveServer, finished_search: dict) -> None:
    result = nas("search", "cancel", finished_search["id"], "--server", server.url)
    assert result.exit_code == 2
    assert "409" in result.stderr and "already finished" in result.stderr


def test_server_refusal_is_exit_2_with_the_field(server: LiveServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: resnet\nobjectives: [params]\n")
    result = nas("search", "submit", str(bad), "--server", server.url)
    assert result.exit_code == 2
    assert "422" in result.stderr and "space" in result.stderr and "efficientformerv2" in result.stderr
    missing = nas("search", "status", "nope", "--server", server.url)
    assert missing.exit_code == 2 and "no search with id 'nope'" in missing.stderr


def test_weights_flag_names_a_checkpoint_the_server_checks(server: LiveServer, tmp_path: Path) -> None:
    spec = tmp_path / "bits.yaml"
    spec.write_text(
        "space: unet_bits\nspace_options: {latent_size: 8, width_scale: 0.0625}\n"
        "objectives: [size_mb, proxy:quant_sensitivity]\nbudget: {trials: 2}\n"
    )
    missing = tmp_path / "no-such-unet"
    result = nas("search", "submit", str(spec), "--weights", str(missing), "--server", server.url)
    assert result.exit_code == 2, result.output
    assert "space_options.weights" in result.stderr and str(missing) in result.stderr, result.stderr


def test_client_error_carries_the_server_detail(server: LiveServer) -> None:
    with NasClient(server.url) as client:
        with pytest.raises(ClientError) as refused:
            client.submit({**SMALL_SPEC, "strategy": "annealing"})
        assert client.health()["status"] == "ok"
    assert refused.value.status == 422
    [error] = refused.value.errors
    assert error["field"] == "strategy" and "nsga2" in error["allowed"]
    assert "strategy: unknown strategy 'annealing'" in str(refused.value)


# ----------------------------------------------------------------------------- local errors
@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "absent.yaml", "does not exist"),
        ("space: [unclosed\n", "broken.yaml", "not valid YAML"),
        ('{"space": ', "broken.json", "not valid JSON"),
        ("- just\n- a list\n", "list.yaml", "must hold a mapping"),
    ],
)
def test_bad_spec_file_is_exit_2(tmp_path: Path, content: str | None, name: str, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = nas("search", "submit", str(path), "--server", "http://127.0.0.1:9")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and str(path) in result.stderr


def test_unreachable_server_is_exit_1_naming_url(spec_file: Path) -> None:
    port = free_port()
    result = nas("search", "submit", str(spec_file), "--server", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"http://127.0.0.1:{port}" in result.stderr and "nas serve" in result.stderr


#: The UNet bit-width space at the tests' small options, as CLI flags.
SMALL_BITS = [
    "-o",
    "latent_size=8",
    "-o",
    "width_scale=0.0625",
    "-o",
    "text_tokens=4",
    "-o",
    "cross_attention_dim=32",
]


def test_a_bit_width_space_is_shown_per_stage() -> None:
    small = SMALL_BITS
    shown = nas("spaces", "unet_bits", *small, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "255 choices bits.<stage>.<layer>" in shown.stdout and "│ down0" in shown.stdout
    assert "bits.down0.resnet0.conv1" not in shown.stdout, "the layers are listed only on request"
    every = nas("spaces", "unet_bits", *small, "--layers", env={"COLUMNS": "200"})
    assert "bits.down0.resnet0.conv1" in every.stdout and "bits.up0.transformer2.proj_out" in every.stdout


def test_evaluate_shows_the_widths_per_stage(server: LiveServer) -> None:
    small = SMALL_BITS
    args = ["space", "evaluate", "unet_bits", "-c", "w3", *small, "--server", server.url]
    result = nas(*args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert (
        "281 quantized layers" in result.stdout
        and "layers per width: 3 bits: 255, 8 bits: 26" in result.stdout
    )
    assert (
        "│ mid" in result.stdout
        and "3:" in result.stdout
        and "every layer's width: --layers" in result.stdout
    )
    layers = nas(*args, "--layers", env={"COLUMNS": "200"})
    assert "down0.resnet0.conv1" in layers.stdout and "conv_in.conv (fixed)" in layers.stdout


def test_spaces_command() -> None:
    listed = nas("spaces")
    assert listed.exit_code == 0 and "efficientformerv2" in listed.stdout
    # Whole descriptions, one row each, whatever their length (they were cut at 80 columns).
    assert "subnets (cardinality)" in listed.stdout and "…" not in listed.stdout
    for name in list_spaces():
        row = next(line for line in listed.stdout.splitlines() if f" {name} " in line)
        assert get_space(name).description in row
    detail = nas("spaces", "efficientformerv2", "--option", "resolution=64", "--json")
    assert json.loads(detail.stdout)["option_values"]["resolution"] == 64
    unknown = nas("spaces", "resnet")
    assert unknown.exit_code == 2 and "known spaces" in unknown.stderr
    bad_option = nas("spaces", "efficientformerv2", "--option", "resolution=50")
    assert bad_option.exit_code == 2 and "resolution" in bad_option.stderr
    malformed = nas("spaces", "efficientformerv2", "--option", "resolution")
    assert malformed.exit_code == 2 and "NAME=VALUE" in malformed.stderr


def test_lut_measure_export_import(tmp_path: Path) -> None:
    env = {"NAS_DATABASE_URL": f"sqlite:///{tmp_path / 'lut.db'}"}
    measure = [
        "lut", "measure", "--device", "host-cpu-torch", "--space", "efficientformerv2",
        "--configs", "s0", "--option", "resolution=32", "--option", "num_classes=10",
        "--warmup", "0", "--repeats", "1",
    ]  # fmt: skip
    measured = nas(*measure, env=env)
    assert measured.exit_code == 0, measured.output
    assert "0 already in the table" in measured.stdout
    assert "(100%)" in measured.stdout  # CliRunner's output is no terminal: plain progress lines
    again = nas(*measure, env=env)
    assert again.exit_code == 0 and " 0 measured" in again.stdout

    exported = tmp_path / "host.csv"
    result = nas("lut", "export", "--device", "host-cpu-torch", str(exported), env=env)
    assert result.exit_code == 0, result.output
    rows = exported.read_text().strip().splitlines()
    assert rows[0].startswith("device,key") and len(rows) > 5

    other = {"NAS_DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}"}
    imported = nas("lut", "import", str(exported), "--device", "copy-of-host", env=other)
    assert imported.exit_code == 0 and f"imported {len(rows) - 1} entries" in imported.stdout

    unknown_config = nas(*[a if a != "s0" else "s9" for a in measure], env=env)
    assert unknown_config.exit_code == 2 and "s9" in unknown_config.stderr
    no_table = nas("lut", "export", "--device", "iphone", str(tmp_path / "x.csv"), env=env)
    assert no_table.exit_code == 2 and "no latency table for device 'iphone'" in no_table.stderr
    assert str(tmp_path / "lut.db") in no_table.stderr  # which database it read
    elsewhere = {"NAS_DATABASE_URL": f"sqlite:///{tmp_path / 'absent' / 'nas.db'}"}
    absent = nas("lut", "export", "--device", "host-cpu-torch", str(tmp_path / "y.csv"), env=elsewhere)
    assert absent.exit_code == 2 and "no database file" in absent.stderr
    assert not (tmp_path / "absent" / "nas.db").exists()  # not created by looking
    bad_file = tmp_path / "bad.csv"
    bad_file.write_text("key,median_ms\nx,1\n")
    rejected = nas("lut", "import", str(bad_file), env=other)
    assert rejected.exit_code == 2 and "lacks the columns" in rejected.stderr
    empty = {"NAS_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    assert nas("lut", "import", str(bad_file), env=empty).exit_code == 2  # the database now exists, empty
    from_empty = nas("lut", "export", "--device", "host-cpu-torch", str(tmp_path / "z.csv"), env=empty)
    assert from_empty.exit_code == 2 and "holds no latency table at all" in from_empty.stderr
    assert str(tmp_path / "empty.db") in from_empty.stderr
    remote = nas(*[a if a != "host-cpu-torch" else "iphone14pro-coreml-ane" for a in measure], env=env)
    assert remote.exit_code == 2 and "no measurement backend on this host" in remote.stderr


def test_lut_measure_min_seconds_times_each_block_longer(tmp_path: Path) -> None:
    env = {"NAS_DATABASE_URL": f"sqlite:///{tmp_path / 'lut.db'}"}
    measure = [
        "lut", "measure", "--device", "host-cpu-torch", "--space", "efficientformerv2",
        "--configs", "s0", "--option", "resolution=32", "--option", "num_classes=10",
        "--warmup", "0", "--repeats", "1", "--timing", "isolated",
    ]  # fmt: skip
    bad = nas(*measure, "--min-seconds", "-1", env=env)
    assert bad.exit_code == 2 and "min_seconds must be between 0 and 60" in bad.stderr
    measured = nas(*measure, "--min-seconds", "0.02", env=env)
    assert measured.exit_code == 0, measured.output
    exported = tmp_path / "host.csv"
    assert nas("lut", "export", "--device", "host-cpu-torch", str(exported), env=env).exit_code == 0
    rows = list(csv.DictReader(exported.open()))
    # One timed run asked for, but each block's runs went on for 20 ms: every block has more samples.
    assert rows and all(int(r["count"]) > 1 for r in rows)
    assert all(json.loads(r["provenance"])["min_seconds"] == 0.02 for r in rows)


# ----------------------------------------------------------------------------- console script
def test_console_script_exit_code_2(tmp_path: Path) -> None:
    command = [str(NAS), "search", "submit", str(tmp_path / "absent.yaml")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_serve_with_demo(tmp_path: Path, ray_session) -> None:
    demo = demo_spec(tmp_path / "demo.yaml", "params, macs", trials=3)
    port = free_port()
    env = serve_env(
        tmp_path / "serve.db",
        NAS_SCHEDULER_POLL_S="0.2",
        # The demo with auth on (a printed admin key) is tested in test_auth.py.
        NAS_AUTH_DISABLED="1",
    )
    url = f"http://127.0.0.1:{port}"

    def serve() -> subprocess.Popen:
        return subprocess.Popen(
            [str(NAS), "serve", "--port", str(port), "--demo", str(demo)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(process: subprocess.Popen) -> str:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
        return output

    process = serve()
    try:
        search = _wait_for_demo(url, process)
    finally:
        output = stop(process)
    sid = search["id"]
    assert search["status"] == "succeeded" and search["trials_done"] == 3
    assert f"Submitted demo search {sid}" in output
    assert f"curl {url}/v1/searches/{sid}" in output
    assert f"nas search status {sid}" in output and f"nas search pareto {sid}" in output
    assert f"{url}/docs" in output

    process = serve()
    try:
        _wait_for_health(url, process)
        listed = httpx.get(f"{url}/v1/searches").json()
    finally:
        output = stop(process)
    assert listed["total"] == 1  # the demo is submitted only to an empty database
    assert "already holds searches" in output


def _wait_for_health(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"{url}/v1/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("nas serve did not come up")
        time.sleep(0.2)


def _wait_for_demo(url: str, process: subprocess.Popen) -> dict:
    _wait_for_health(url, process)
    deadline = time.monotonic() + 240
    while True:
        items = httpx.get(f"{url}/v1/searches").json()["items"]
        if items and items[0]["status"] in ("succeeded", "failed", "cancelled"):
            return items[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"the demo search did not finish: {items}")
        time.sleep(0.2)
