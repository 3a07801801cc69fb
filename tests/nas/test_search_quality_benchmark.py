"""`benchmarks/search_quality.py` end to end at a toy size (so the benchmark cannot rot): every family
kind (3 objectives, 2 with a constraint), our strategies and the peers, the goal table, the curves and
the ms-per-ask timing, on EfficientFormerV2 with the frozen tables committed under
`benchmarks/results/search_quality/luts`."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("search_quality")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_toy_run_reports_every_strategy_within_the_hypervolume_bounds(
    benchmark: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strategies = ["tpe-evolution:switch_after=8", "evolution", "optuna-tpe", "optuna-nsga2", "pymoo-nsga2"]
    argv = ["--quick", "--spaces", "efficientformerv2", "--families", "synthetic", "torch-macs-constrained"]
    argv += ["--strategies", *strategies, "--default", strategies[0], "--evals", "16", "--every", "4"]
    assert benchmark.main([*argv, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary__efficientformerv2.json").read_text())
    problems = summary["problems"]
    assert set(problems) == {"efficientformerv2/synthetic", "efficientformerv2/torch-macs-constrained"}
    for key, rows in problems.items():
        assert [r["strategy"] for r in rows] == strategies
        most = 1.1 ** (3 if key.endswith("synthetic") else 2)
        for row in rows:
            assert all(0 <= hv <= most for hv in row["finals"]), (key, row)
        assert any(r["hv_mean"] > 0 for r in rows), key
        curves = (tmp_path / f"{key.replace('/', '__')}_curves.csv").read_text().splitlines()
        assert curves[0].split(",") == ["evaluations", *strategies] and len(curves) == 1 + 16 // 4
    out = capsys.readouterr().out
    assert "### goal: `tpe-evolution:switch_after=8` against the best peer" in out
    assert "### goal: `evolution` against the best peer" in out
    assert "| efficientformerv2/synthetic |" in out


def test_ms_per_ask_is_timed_near_100_trials_and_at_the_end(benchmark: ModuleType) -> None:
    from search_spaces import get_space

    space = get_space("efficientformerv2", **benchmark.BENCH_SPACES["efficientformerv2"])
    problem = benchmark.Problem(benchmark.SpaceValues(space), benchmark.FAMILIES["torch-macs"])
    rows = benchmark.time_asks(problem, ["random", "evolution"], trials=120, batch=4)
    assert [r["strategy"] for r in rows] == ["random", "evolution"]
    for row in rows:
        assert row["trials"] == 120
        assert 0 < row["ms_at_100"] < math.inf and 0 < row["ms_at_end"] < math.inf
        assert row["loadavg"] >= 0
