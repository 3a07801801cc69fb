"""Every search spec under examples/ is valid as shipped: a user can submit it as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from latency_lut import MemoryLatencyTable
from nas import SearchSpec
from services.cli.search import load_spec_file
from services.core.search_queue import check_spec

FOLDER = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = sorted(p for p in FOLDER.iterdir() if p.suffix in {".yaml", ".json"})


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"efficientformerv2_host_cpu.yaml", "efficientformerv2_small.json"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_resolves_on_the_builtin_devices(path: Path) -> None:
    resolved = check_spec(SearchSpec.model_validate(load_spec_file(path)), MemoryLatencyTable())
    # `proxy:default` is stored as the proxy it stands for.
    assert all(o.name != "proxy:default" for o in resolved.objectives)
    assert resolved.spec.budget.trials >= 1


def test_demo_searches_latency_against_a_quality_proxy() -> None:
    demo = SearchSpec.model_validate(load_spec_file(FOLDER / "efficientformerv2_host_cpu.yaml"))
    resolved = check_spec(demo, MemoryLatencyTable())
    assert [o.name for o in resolved.objectives] == ["latency:host-cpu-torch", "proxy:synflow"]
    assert [o.direction for o in resolved.objectives] == ["minimize", "maximize"]
