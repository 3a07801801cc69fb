"""`benchmarks/proxy_correlation.py` end to end at a toy size: truth cached and reused, table printed."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "proxy_correlation.py"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a small shared machine, torch's thread pool mostly waits on itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proxy_correlation", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def test_toy_run_caches_the_truth_and_reports_every_proxy(
    benchmark: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--spaces", "unet", "--subnets", "4", "--steps", "1", "--supernet-steps", "0"]
    argv += ["--proxies", "params", "synflow", "naswot", "--cache-dir", str(tmp_path), "--json"]
    benchmark.main([*argv, str(tmp_path / "first.json")])
    out = capsys.readouterr().out
    assert "| proxy | needs | rho (loss) | tau (loss) |" in out
    assert all(f"| `{name}` |" in out for name in ("params", "synflow", "naswot"))
    (truth_file,) = tmp_path.glob("proxy_truth-unet-*.json")
    first = json.loads((tmp_path / "first.json").read_text())[0]
    assert len(first["truth"]) == 4 and len(json.loads(truth_file.read_text())["subnets"]) == 4
    params = next(p for p in first["proxies"] if p["name"] == "params")
    quality = [-t["loss"] for t in first["truth"]]
    assert params["spearman"]["loss"] == pytest.approx(benchmark.spearman(params["values"], quality))

    # Cached: a second run trains nothing (the truth file is untouched) and gives the same truth.
    written = truth_file.stat().st_mtime_ns
    benchmark.main([*argv, str(tmp_path / "second.json")])
    second = json.loads((tmp_path / "second.json").read_text())[0]
    assert truth_file.stat().st_mtime_ns == written
    assert second["truth"] == first["truth"] and second["configs"] == first["configs"]
