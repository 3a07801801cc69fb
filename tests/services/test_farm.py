"""The farm agent against a real server on loopback (uvicorn on a free port, a SQLite file): `nas farm
run` processes with the torch and ONNX Runtime backends fill EfficientFormerV2's table at 32 px and
`nas lut validate` judges it; runs resume after an interruption without double counting, retry an
unreachable server with backoff, and `--dry-run` writes nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from svc_helpers import LiveServer, throwaway_server
from typer.testing import CliRunner

from search_spaces import get_space
from services.cli import app as cli_app
from services.client import ClientError, NasClient, ServerUnreachableError
from services.farm import FarmAgent, FarmConfig, FarmEvent, with_retries

NAS = Path(sys.executable).with_name("nas")
SPACE = "efficientformerv2"
OPTIONS = {"resolution": 32, "num_classes": 10}
OPTION_ARGS = ["--space", SPACE, "-o", "resolution=32", "-o", "num_classes=10"]
FAST = ["--warmup", "1", "--repeats", "3", "--clock", "thread"]
#: Wide tables: rich shortens cells to the terminal's width, and a pipe has none.
ENV = {**os.environ, "COLUMNS": "200"}


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Any:
    with throwaway_server(tmp_path_factory.mktemp("farm")) as server:
        yield server


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Any:
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


def nas(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The installed `nas` console script in its own process."""
    return subprocess.run([str(NAS), *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def all_keys() -> list[str]:
    return [spec.key for spec in get_space(SPACE, **OPTIONS).all_blocks()]


# ----------------------------------------------------------------------------- real agent processes
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs the onnx extra")
def test_agent_processes_fill_the_table_and_validate_it(
    live: LiveServer, api: httpx.Client, tmp_path: Path
) -> None:
    devices = {backend: f"farm-{backend}-{uuid.uuid4().hex[:6]}" for backend in ("torch", "onnxruntime")}

    def farm(backend: str) -> subprocess.Popen[str]:
        args = ["farm", "run", "--server", live.url, "--device", devices[backend], "--backend", backend]
        args += [*OPTION_ARGS, *FAST, "--calibrate", "3", "--batch-size", "50", "--state-dir", str(tmp_path)]
        return subprocess.Popen(
            [str(NAS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
        )

    # Both agents at once: two farms uploading to one server.
    agents = {backend: farm(backend) for backend in devices}
    outputs = {backend: agent.communicate(timeout=600) for backend, agent in agents.items()}
    n = 3 * len(all_keys())  # every block alone, in context and its call overhead
    for backend, (stdout, stderr) in outputs.items():
        assert agents[backend].returncode == 0, stderr
        assert f"{n} table entries to measure, {n} measured, {n} uploaded" in stdout, stdout
        assert (
            "3 calibration subnet(s)" in stdout and f"registered the new device {devices[backend]}" in stdout
        )
        # Output to a pipe (as under nohup or systemd): plain progress lines as it goes, no live bars.
        lines = stderr.splitlines()
        assert "\r" not in stderr and "\x1b[" not in stderr, stderr[:500]
        assert any(line.startswith("measure") and f"{n:,} / {n:,} (100%)" in line for line in lines), stderr
        assert any(line.startswith("measure") and " / " in line and "(100%)" not in line for line in lines)
        assert any(line.startswith("upload") for line in lines), stderr

    for backend, device in devices.items():
        shown = api.get(f"/v1/devices/{device}").json()
        assert shown["entries"] == n and shown["registered"] and shown["runtime"] == backend
        work = api.get(f"/v1/devices/{device}/work", params={"space": SPACE, "options": json.dumps(OPTIONS)})
        assert work.json()["total"] == 0
        (sample,) = api.get(f"/v1/devices/{device}/samples", params={"key": all_keys()[0]}).json()["items"]
        assert len(sample["samples_ms"]) == 3 and all(v > 0 for v in sample["samples_ms"])
        provenance = sample["provenance"]
        assert provenance["runtime"] == backend and provenance["torch"] and provenance["python"]
        assert provenance["repeats"] == 3 and provenance["clock"] == "thread" and provenance["threads"] == 1
        if backend == "onnxruntime":
            assert provenance["onnxruntime"] and provenance["onnx"] and provenance["opset"]
        assert set(sample["features"]) == {"macs", "params", "bytes_moved"}
        assert provenance["timing"] == "isolated"
        (context,) = api.get(f"/v1/devices/{device}/samples", params={"key": f"ctx@{all_keys()[1]}"}).json()[
            "items"
        ]
        assert context["provenance"]["timing"] == "in_context" and "after" in context["provenance"]

        validated = nas("lut", "validate", "--server", live.url, "--device", device, "--backend", backend,
                        *OPTION_ARGS, *FAST, "--samples", "4", "--seed", "7", "--json")  # fmt: skip
        assert validated.returncode == 0, validated.stderr
        report = json.loads(validated.stdout)
        assert report["n"] + report["excluded_calibration"] == 4 and report["unpriced"] == 0
        assert report["n"] >= 1 and report["rmspe"] > 0 and report["rmse_ms"] > 0
        assert 0 <= report["within_5"] <= report["within_10"] <= report["within_15"] <= 1
        # Three calibration subnets fit no learned model: the table predictor best on them prices.
        assert report["selected"] in {"block_sum", "in_context", "overhead_corrected"}
        assert {r["name"] for r in report["predictors"]} == {"block_sum", "in_context", "overhead_corrected"}
        assert report["ceiling"]["n"] == report["n"]  # every validation subnet measured twice
        predicted = api.post(
            f"/v1/devices/{device}/predict",
            json={"space": SPACE, "space_options": OPTIONS, "configs": ["s0"]},
        )
        item = predicted.json()["items"][0]
        assert item["complete"] and not item["estimated"] and item["covered_share"] == 1.0
        candidates = {c["name"]: c for c in predicted.json()["predictor"]["candidates"]}
        assert all(c["n"] == 3 for c in candidates.values())  # scored on the 3 calibration subnets
        best = min(candidates.values(), key=lambda c: c["rmspe"])
        assert item["predictor"] == report["selected"] == best["name"]
        assert item["expected_error"] == pytest.approx(best["rmspe"])

        shown_table = nas("lut", "accuracy", "--server", live.url, "--device", device)
        assert shown_table.returncode == 0 and device in shown_table.stdout

    # Nothing left: a second run measures nothing and leaves no state behind.
    again = nas("farm", "run", "--server", live.url, "--device", devices["torch"], "--backend", "torch",
                *OPTION_ARGS, *FAST, "--state-dir", str(tmp_path))  # fmt: skip
    assert again.returncode == 0 and "0 table entries to measure, 0 measured" in again.stdout
    assert list(tmp_path.iterdir()) == []

    listed = nas("devices", "list", "--server", live.url)
    assert (
        listed.returncode == 0 and devices["onnxruntime"] in listed.stdout and "registered" in listed.stdout
    )


def test_dry_run_lists_the_work_and_writes_nothing(
    live: LiveServer, api: httpx.Client, tmp_path: Path
) -> None:
    device = f"dry-{uuid.uuid4().hex[:6]}"
    result = nas("farm", "run", "--server", live.url, "--device", device, *OPTION_ARGS, "--configs", "s0",
                 "--dry-run", "--state-dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    n = 3 * len({spec.key for spec in get_space(SPACE, **OPTIONS).blocks("s0")})
    assert (
        f"dry run: {n} table entries of {SPACE}" in result.stdout
        and "nothing measured or uploaded" in result.stdout
    )
    assert "effv2.ffn" in result.stdout
    assert api.get(f"/v1/devices/{device}").status_code == 404
    assert not any(tmp_path.iterdir())


def test_min_seconds_reaches_the_agents_backend(
    live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for backend in ("torch", "onnxruntime"):
        config = FarmConfig(device="x", backend=backend, space=SPACE, min_seconds=0.5, state_dir=tmp_path)
        assert config.make_backend().min_seconds == 0.5
    # torch-cuda and coreml cannot be built on this machine: what the agent asks for is checked.
    asked: dict[str, dict[str, Any]] = {}

    def record(name: str, **kwargs: Any) -> None:
        asked[name] = kwargs

    monkeypatch.setattr("services.farm.agent.get_backend", record)
    for backend, device in (("torch", "cuda"), ("coreml", "cpu")):
        FarmConfig(
            device="x", backend=backend, torch_device=device, space=SPACE, min_seconds=0.5, state_dir=tmp_path
        ).make_backend()
    assert asked == {"torch-cuda": {"min_seconds": 0.5}, "coreml": {"min_seconds": 0.5}}
    with pytest.raises(ValueError, match=r"min_seconds must be between 0 and 60, got -1"):
        FarmConfig(device="x", backend="torch", space=SPACE, min_seconds=-1, state_dir=tmp_path)
    refused = nas("farm", "run", "--server", live.url, "--device", "x", *OPTION_ARGS, "--configs", "s0",
                  "--min-seconds", "90", "--state-dir", str(tmp_path))  # fmt: skip
    assert refused.returncode == 2 and "min_seconds must be between 0 and 60, got 90" in refused.stderr


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="needs the coreml extra")
@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML times blocks on macOS")
def test_coreml_agent_on_linux_says_timing_needs_macos(live: LiveServer, tmp_path: Path) -> None:
    coreml = ["farm", "run", "--server", live.url, "--device", "phone-x", "--backend", "coreml", *OPTION_ARGS]
    result = nas(*coreml, "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert "Core ML timing needs macOS" in result.stderr and "--export-dir" in result.stderr
    planned = nas(*coreml, "--configs", "s0", "--dry-run", "--state-dir", str(tmp_path))
    assert planned.returncode == 0 and "cannot time on this machine" in planned.stdout


# ----------------------------------------------------------------------------- resume and retries
class Interrupt(KeyboardInterrupt):
    pass


def test_an_interrupted_run_resumes_under_its_run_id_without_double_counting(
    live: LiveServer, api: httpx.Client, tmp_path: Path
) -> None:
    device = f"resume-{uuid.uuid4().hex[:6]}"
    config = FarmConfig(device=device, backend="torch", space=SPACE, options=OPTIONS, configs=["s0"],
                        warmup=0, repeats=2, clock="thread", batch_size=5, state_dir=tmp_path)  # fmt: skip

    def stop_after_eight(event: FarmEvent) -> None:
        if event.phase == "measure" and event.done == 8:
            raise Interrupt

    with NasClient(live.url) as client, pytest.raises(Interrupt):
        FarmAgent(config, client, progress=stop_after_eight).run()
    (state,) = tmp_path.glob("*.json")
    run_id = json.loads(state.read_text())["run_id"]
    spool = state.with_suffix(".spool.jsonl")
    spooled = [json.loads(line) for line in spool.read_text().splitlines()]
    assert len(spooled) == 3  # 8 measured, one batch of 5 uploaded
    assert api.get(f"/v1/devices/{device}").json()["entries"] == 5
    # A crash between the server's answer and the spool's truncation: uploaded rows are still spooled.
    uploaded = api.get(f"/v1/devices/{device}/table").text.splitlines()[1:]
    uploaded_keys = [line.split(",")[1] for line in uploaded]
    rows = [json.loads(line) for line in spool.read_text().splitlines()]
    extra = []
    for key in uploaded_keys:
        samples = api.get(f"/v1/devices/{device}/samples", params={"key": key}).json()["items"][0]
        extra.append({"key": key, "space": SPACE, "options": samples["provenance"]["space_options"],
                      "samples_ms": samples["samples_ms"], "features": samples["features"]})  # fmt: skip
    spool.write_text("".join(json.dumps(row) + "\n" for row in [*rows, *extra]))

    with NasClient(live.url) as client:
        report = FarmAgent(config, client).run()
    assert report.resumed and report.run_id == run_id
    assert report.respooled == 8 and report.duplicates == 5
    n = 3 * len({spec.key for spec in get_space(SPACE, **OPTIONS).blocks("s0")})
    assert report.planned == n - 8 and report.uploaded == 3 + (n - 8)
    assert api.get(f"/v1/devices/{device}").json()["entries"] == n
    for key in uploaded_keys:
        (only,) = api.get(f"/v1/devices/{device}/samples", params={"key": key}).json()["items"]
        assert only["run_id"] == run_id
    assert not state.exists() and not spool.exists()


def test_requests_are_retried_with_growing_backoff_and_refusals_are_not(live: LiveServer) -> None:
    sleeps: list[float] = []
    with NasClient("http://127.0.0.1:9") as down, pytest.raises(ServerUnreachableError):
        with_retries(down.devices, retries=3, backoff_s=0.5, max_backoff_s=1.5, sleep=sleeps.append)
    assert len(sleeps) == 3
    for slept, base in zip(sleeps, [0.5, 1.0, 1.5], strict=True):
        assert base <= slept <= base * 1.25

    sleeps.clear()
    with NasClient(live.url) as client, pytest.raises(ClientError) as refused:
        with_retries(
            lambda: client.device("no-such-device"),
            retries=3,
            backoff_s=0.5,
            max_backoff_s=1,
            sleep=sleeps.append,
        )
    assert refused.value.status == 404 and sleeps == []


def test_the_agent_waits_for_a_server_that_starts_late(tmp_path: Path) -> None:
    late = throwaway_server(tmp_path)
    waited: list[float] = []

    def start_server_while_waiting(seconds: float) -> None:
        waited.append(seconds)
        if len(waited) == 2:
            late.__enter__()

    config = FarmConfig(device="late-farm", backend="torch", space=SPACE, options=OPTIONS, configs=["s0"],
                        warmup=0, repeats=1, batch_size=100, state_dir=tmp_path / "state")  # fmt: skip
    try:
        with NasClient(late.url) as client:
            report = FarmAgent(config, client, sleep=start_server_while_waiting).run()
        assert len(waited) == 2 and report.registered
        assert report.uploaded == report.planned > 0
    finally:
        if late.server.started:
            late.__exit__()


# ----------------------------------------------------------------------------- device commands
def test_device_commands(live: LiveServer) -> None:
    runner = CliRunner()
    name = f"lab-{uuid.uuid4().hex[:6]}"
    added = runner.invoke(cli_app, ["devices", "add", name, "--runtime", "tflite", "--hardware", "Pixel 8",
                                    "--meta", "android=14", "--server", live.url])  # fmt: skip
    assert added.exit_code == 0, added.output
    shown = runner.invoke(cli_app, ["devices", "show", name, "--server", live.url])
    assert json.loads(shown.stdout)["metadata"] == {"android": 14}
    listed = runner.invoke(cli_app, ["devices", "list", "--server", live.url, "--json"])
    assert name in {d["name"] for d in json.loads(listed.stdout)["items"]}
    clash = runner.invoke(cli_app, ["devices", "add", name, "--runtime", "onnx", "--hardware", "Pixel 8",
                                    "--server", live.url])  # fmt: skip
    assert clash.exit_code == 2 and "never change" in clash.stderr
    bad = runner.invoke(cli_app, ["farm", "run", "--server", live.url, "--device", name, "--backend", "tvm",
                                  "--space", SPACE])  # fmt: skip
    assert bad.exit_code == 2 and "backend must be one of ['torch', 'onnxruntime', 'coreml']" in bad.stderr
    down = runner.invoke(cli_app, ["devices", "list", "--server", "http://127.0.0.1:9"])
    assert down.exit_code == 1 and "no NAS server answers" in down.stderr
