"""Fixtures of the latency_lut tests: a tiny search space and one `LatencyTable` per backend.

The tiny space is not registered, so these tests depend on no real space being finished or fast.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from torch import nn

from latency_lut import LatencyTable, MemoryLatencyTable, SqlLatencyTable
from latency_lut.sql_table import lut_entries
from search_spaces import BlockSpec, Choice, Config, OptionSpec, SearchSpace, Supernet

POSTGRES_URL = os.environ.get("NAS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class TinyConvSpace(SearchSpace):
    """stem conv -> 1..2 conv blocks (kernel 1 or 3) -> pooled linear head, at width 4 or 8."""

    name = "tiny-lut-test"
    description = "Tiny conv net for the latency_lut tests (not registered)."

    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        return [OptionSpec("resolution", 8, int, allowed=(8, 16))]

    def choices(self) -> list[Choice]:
        return [
            Choice("width", (4, 8)),
            Choice("depth", (1, 2)),
            Choice("block1.kernel", (1, 3)),
            Choice("block2.kernel", (1, 3)),
        ]

    @classmethod
    def reference_configs(cls) -> dict[str, Config]:
        return {"small": {"width": 4, "depth": 1, "block1.kernel": 1}, "big": {}}

    def _canonicalize(self, config: Config) -> Config:
        if config["depth"] < 2:
            config["block2.kernel"] = 0
        return config

    def _spec(self, kind: str, params: int, **args: int | str) -> BlockSpec:
        hw = self.options["resolution"]
        return BlockSpec.make(f"tiny.{kind}", params, batch=1, dtype="fp32", hw=f"{hw}x{hw}", **args)

    def blocks(self, config: Mapping[str, Any]) -> list[BlockSpec]:
        width = config["width"]
        specs = [self._spec("stem", 27 * width + width, cout=width)]
        for i in range(1, config["depth"] + 1):
            k = config[f"block{i}.kernel"]
            specs.append(self._spec("conv", width * width * k * k + width, dim=width, k=k))
        specs.append(self._spec("head", width * 10 + 10, dim=width))
        return specs

    def all_blocks(self) -> list[BlockSpec]:
        specs = []
        for width in (4, 8):
            specs.append(self._spec("stem", 27 * width + width, cout=width))
            specs += [self._spec("conv", width * width * k * k + width, dim=width, k=k) for k in (1, 3)]
            specs.append(self._spec("head", width * 10 + 10, dim=width))
        return specs

    def build_block(self, spec: BlockSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        hw = int(str(spec["hw"]).split("x")[0])
        if spec.kind == "tiny.stem":
            return nn.Conv2d(3, int(spec["cout"]), 3, padding=1), (torch.randn(1, 3, hw, hw),)
        dim = int(spec["dim"])
        if spec.kind == "tiny.conv":
            k = int(spec["k"])
            module: nn.Module = nn.Sequential(nn.Conv2d(dim, dim, k, padding=k // 2), nn.ReLU())
        else:
            module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, 10))
        return module, (torch.randn(1, dim, hw, hw),)

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        canonical = self.canonicalize(config)
        return nn.Sequential(*(self.build_block(spec)[0] for spec in self.blocks(canonical)))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        hw = self.options["resolution"]
        return (torch.randn(batch, 3, hw, hw),)

    def supernet(self) -> Supernet:
        raise NotImplementedError("the latency_lut tests need no supernet")


@pytest.fixture
def space() -> TinyConvSpace:
    return TinyConvSpace(resolution=8)


@pytest.fixture
def device_name() -> Callable[[str], str]:
    """Device names unique to this test, so runs sharing the PostgreSQL database never collide."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return lambda name: f"{prefix}-{name}"


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        engine.dispose()
        reason = str(error.orig or error).splitlines()[0]
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} (NAS_TEST_POSTGRES_URL) is not reachable: {reason}")
    yield engine
    engine.dispose()


def _sqlite_table(tmp_path: Any) -> SqlLatencyTable:
    return SqlLatencyTable(sa.create_engine(f"sqlite:///{tmp_path / 'lut.db'}"))


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def table(
    request: pytest.FixtureRequest, tmp_path: Any, device_name: Callable[[str], str]
) -> Iterator[LatencyTable]:
    """Every `LatencyTable` implementation; tests name their devices with `device_name`."""
    if request.param == "memory":
        yield MemoryLatencyTable()
    elif request.param == "sqlite":
        sql_table = _sqlite_table(tmp_path)
        yield sql_table
        sql_table.engine.dispose()
    else:
        engine = request.getfixturevalue("postgres_engine")
        yield SqlLatencyTable(engine)
        prefix = device_name("")
        with engine.begin() as conn:
            conn.execute(lut_entries.delete().where(lut_entries.c.device.startswith(prefix)))
