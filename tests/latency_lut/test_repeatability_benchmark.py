"""benchmarks/lut_repeatability.py at toy size: both parts run and report what they measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "lut_repeatability.py"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lut_repeatability", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_reports_spans_and_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "repeat.json"
    args = ["--device", "host-cpu-torch", "--subnets", "2", "--busy", "1", "--min-seconds", "0", "0.05",
            "--trace-seconds", "1", "--repeats", "2", "--json", str(out)]  # fmt: skip
    assert _benchmark().main(args) == 0
    printed = capsys.readouterr().out
    assert "| CV of the windows' p10 |" in printed and "| min_seconds |" in printed
    data = json.loads(out.read_text())
    # 1 s of runs: windows of 0.05 and 0.2 s (each with at least 2 windows of 5 runs), never 1 or 5 s.
    assert data["spans"] and {row["window_s"] for row in data["spans"]} <= {0.05, 0.2}
    assert all(row["windows"] >= 2 and row["p5_ms"] <= row["p95_ms"] for row in data["spans"])
    assert [row["min_seconds"] for row in data["passes"]] == [0.0, 0.05]
    for row in data["passes"]:
        assert len(row["first"]) == len(row["second"]) == 2 and all(v > 0 for v in row["first"])
        assert 0 <= row["within_5"] <= row["within_10"] <= 1
    # A pass of 2 subnets spanning at least 0.05 s each lasts at least 0.1 s.
    assert data["passes"][1]["pass_seconds"] >= 0.1


def test_the_benchmark_refuses_a_single_subnet() -> None:
    with pytest.raises(SystemExit) as exit_info:
        _benchmark().main(["--subnets", "1"])
    assert exit_info.value.code == 2
