"""The `nas` commands that only talk HTTP import no torch, ONNX, Ray, sqlalchemy or search code: a
fresh interpreter imports the CLI, runs them against a live server and lists what it loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
from svc_helpers import SMALL_SPEC, throwaway_server

from services.cli.keys import SCOPE_NAMES
from services.core.auth import ALL_SCOPES

#: Packages an HTTP-only command must not load (each costs from a tenth of a second to seconds).
HEAVY = ("torch", "onnx", "onnxruntime", "ray", "sqlalchemy", "search_spaces", "latency_lut", "nas", "pandas")

_PROBE = """
import json, sys
from typer.testing import CliRunner
from services.cli import app

url, search_id = sys.argv[1], sys.argv[2]
runner = CliRunner()
codes = {}
for args in (["--help"], ["search", "--help"], ["search", "list", "--server", url],
             ["search", "status", search_id, "--server", url],
             ["search", "pareto", search_id, "--server", url], ["devices", "list", "--server", url]):
    result = runner.invoke(app, args)
    codes[" ".join(args[:2])] = [result.exit_code, result.output[-300:]]
roots = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"codes": codes, "roots": roots}))
"""


def test_http_commands_import_no_heavy_package(tmp_path: Path) -> None:
    with throwaway_server(tmp_path) as live:
        created = httpx.post(f"{live.url}/v1/searches", json=SMALL_SPEC, timeout=60)
        assert created.status_code == 202, created.text
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, live.url, created.json()["id"]],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    for command, (code, output) in report["codes"].items():
        assert code == 0, f"nas {command}: {output}"
    assert not set(HEAVY) & set(report["roots"]), sorted(set(HEAVY) & set(report["roots"]))


def test_help_lists_the_scopes_the_server_knows() -> None:
    assert list(SCOPE_NAMES) == ALL_SCOPES
