"""Helpers of the nas tests: a tiny (unregistered) search space, synthetic LUTs, resolved specs, and
strategies driven by real evaluations of the tiny space.

A module of its own (not conftest.py) so that test files import it by a name no other test folder uses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nas import (
    Objective,
    ResolvedSpec,
    SearchSpec,
    Trial,
    TrialState,
    parse_constraint,
    parse_objective,
    resolve,
)
from nas.evaluate import SubnetEvaluator
from nas.strategies import Strategy, make_strategy
from search_spaces import (
    BlockSpec,
    Choice,
    ConfigError,
    OptionSpec,
    SearchSpace,
    Supernet,
    config_id,
    list_spaces,
)

DEVICE = "synthetic-cpu"


class _Mlp(nn.Module):
    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.up = nn.Linear(dim, dim * ratio)
        self.down = nn.Linear(dim * ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class TinySpace(SearchSpace):
    """An MLP of 1-3 residual blocks: 48 raw configs, 28 distinct subnets (ratios beyond the depth
    are irrelevant and canonicalise to 0). Test-only, so not registered."""

    name = "tiny-test"
    max_depth = 3

    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        return [OptionSpec("features", 4, int, allowed=(4, 8))]

    def choices(self) -> list[Choice]:
        return [
            Choice("depth", (1, 2, 3)),
            Choice("width", (8, 16)),
            *(Choice(f"block{i}.ratio", (2, 4)) for i in range(self.max_depth)),
        ]

    @classmethod
    def reference_configs(cls) -> dict[str, dict[str, Any]]:
        return {"mid": {"depth": 2, "width": 8, "block0.ratio": 4, "block1.ratio": 2}}

    def _canonicalize(self, config: dict[str, Any]) -> dict[str, Any]:
        for name in ("depth", "width", *(f"block{i}.ratio" for i in range(config["depth"]))):
            if config[name] == 0:
                options = list(self.choice_map[name].options)
                raise ConfigError(
                    f"choice {name!r} may not be 0 here; options: {options}", field=name, allowed=options
                )
        for i in range(config["depth"], self.max_depth):
            config[f"block{i}.ratio"] = 0
        return config

    def blocks(self, config: Mapping[str, Any]) -> list[BlockSpec]:
        features, width = self.options["features"], config["width"]
        specs = [BlockSpec.make("tiny.stem", params=features * width + width, cin=features, cout=width)]
        for i in range(config["depth"]):
            ratio = config[f"block{i}.ratio"]
            hidden = width * ratio
            specs.append(
                BlockSpec.make("tiny.mlp", params=2 * width * hidden + hidden + width, dim=width, ratio=ratio)
            )
        specs.append(BlockSpec.make("tiny.head", params=width * 2 + 2, dim=width))
        return specs

    def build_module(self, spec: BlockSpec) -> nn.Module:
        args = spec.arg_dict
        if spec.kind == "tiny.stem":
            return nn.Linear(int(args["cin"]), int(args["cout"]))
        if spec.kind == "tiny.mlp":
            return _Mlp(int(args["dim"]), int(args["ratio"]))
        return nn.Linear(int(args["dim"]), 2)

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        return nn.Sequential(*(self.build_module(spec) for spec in self.blocks(self.canonicalize(config))))

    def build_block(self, spec: BlockSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        width = spec["cin"] if spec.kind == "tiny.stem" else spec["dim"]
        return self.build_module(spec), (torch.randn(1, int(width)),)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, self.options["features"]),)

    def supernet(self) -> Supernet:
        raise NotImplementedError("the tiny test space has no supernet")

    def all_blocks(self) -> list[BlockSpec]:
        seen: dict[str, BlockSpec] = {}
        for depth in (1, 2, 3):
            for width in (8, 16):
                for ratio in (2, 4):
                    config = {"depth": depth, "width": width, **{f"block{i}.ratio": ratio for i in range(3)}}
                    for spec in self.blocks(self.canonicalize(config)):
                        seen.setdefault(spec.key, spec)
        return list(seen.values())


def synthetic_latency(spec: BlockSpec) -> float:
    """A made-up median (ms): grows with the log of the block's params, times a key-dependent factor
    in [0.5, 1.5), so that latency and params disagree and fronts have several members."""
    factor = 0.5 + int(spec.key_hash[:4], 16) / 0x10000
    return factor * math.log1p(spec.params) / 10


def synthetic_lut(space: SearchSpace) -> dict[str, float]:
    return {spec.key: synthetic_latency(spec) for spec in space.all_blocks()}


def objectives(names: Iterable[str], devices: Iterable[str] = (DEVICE,)) -> list[Objective]:
    """`names` parsed as a spec's objectives are (latency on `devices`, any registered proxy)."""
    return [parse_objective(name, list(devices)) for name in names]


def make_resolved(space: SearchSpace, **spec_fields: Any) -> ResolvedSpec:
    """A `ResolvedSpec` for `space` (registered or not) with `DEVICE` as the only known device."""
    fields = {
        "space": space.name,
        "space_options": dict(space.options),
        "objectives": [f"latency:{DEVICE}", "params"],
        **spec_fields,
    }
    spec = SearchSpec(**fields)
    if space.name in list_spaces():
        return resolve(spec, [DEVICE])
    return ResolvedSpec(
        spec=spec,
        space=space,
        objectives=[parse_objective(text, [DEVICE]) for text in spec.objectives],
        constraints=[parse_constraint(text, [DEVICE]) for text in spec.constraints],
    )


class ExitOnce(float):
    """A LUT median that ends the process of the first evaluation worker (any process but the
    driver's) that adds it up; `latch` is a file that marks that it happened."""

    latch: str
    driver_pid: int

    def __new__(cls, value: float, latch: str, driver_pid: int) -> ExitOnce:
        obj = super().__new__(cls, value)
        obj.latch = latch
        obj.driver_pid = driver_pid
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (ExitOnce, (float(self), self.latch, self.driver_pid))

    def __radd__(self, other: float) -> float:
        if os.getpid() != self.driver_pid:
            try:
                fd = os.open(self.latch, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        return float(other) + float(self)


# ----------------------------------------------------------------------------- strategies
#: What the strategy tests optimise on the tiny space.
STRATEGY_OBJECTIVES = [f"latency:{DEVICE}", "params"]
#: Strategy params sized for the tiny space (28 distinct subnets; latency 1.1 to 2.3 ms); the stepwise
#: strategies judge quality by `params` here, as the tiny space has no proxy but the counting ones.
#: A new strategy that needs params to run on the tiny space gets them here.
SMALL_STRATEGY_PARAMS: dict[str, dict[str, Any]] = {
    "nsga2": {"population_size": 4},
    "nsga3": {"population_size": 4},
    "tpe": {"n_startup_trials": 4},
    "evolution": {"population_size": 4},
    "tpe-evolution": {"switch_after": 8, "n_startup_trials": 4, "population_size": 4},
    "evolving": {"quality": "params", "target_ms": 1.6},
    "slimming": {"quality": "params"},
    "bitsfusion": {"quality": "params", "cost": f"latency:{DEVICE}", "budget": 1.6},
}
#: Options at which every registered space is small enough for quick tests; a new space gets its own.
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "efficientformerv2": {"resolution": 32, "num_classes": 10},
    "efficientformerv2_bits": {"resolution": 32, "num_classes": 10},
    "unet": {"latent_size": 8, "text_tokens": 4, "cross_attention_dim": 32, "width_scale": 0.0625},
    "unet_bits": {"latent_size": 8, "text_tokens": 4, "cross_attention_dim": 32, "width_scale": 0.0625},
    "temporal": {
        "frames": 2,
        "latent_size": 8,
        "text_tokens": 4,
        "cross_attention_dim": 32,
        "width_scale": 0.0625,
    },
}


def make_tiny_strategy(
    name: str, space: SearchSpace, *, seed: int = 0, constraints: Iterable[str] = (), **params: Any
) -> Strategy:
    """Strategy `name` on `space` (the tiny space, or another at small options) for
    `STRATEGY_OBJECTIVES`, with `SMALL_STRATEGY_PARAMS`."""
    parsed = [parse_constraint(c, [DEVICE]) for c in constraints]
    merged = {**SMALL_STRATEGY_PARAMS.get(name, {}), **params}
    return make_strategy(name, space, objectives(STRATEGY_OBJECTIVES), parsed, seed=seed, **merged)


class Evaluations:
    """Turns configs into trials with real evaluator values, numbered in order, as the runner records
    them: every `fail_every`-th one fails, and one that violates a `constraints` is infeasible."""

    def __init__(
        self,
        space: TinySpace,
        luts: dict[str, dict[str, float]],
        fail_every: int = 0,
        constraints: Iterable[str] = (),
    ):
        self.evaluator = SubnetEvaluator(
            space.name, space.options, objectives(STRATEGY_OBJECTIVES), luts, space=space
        )
        self.fail_every = fail_every
        self.constraints = [parse_constraint(c, [DEVICE]) for c in constraints]
        self.number = 0

    def __call__(self, config: dict[str, Any]) -> Trial:
        outcome = self.evaluator.evaluate(config)
        assert outcome.error is None
        number, self.number = self.number, self.number + 1
        if self.fail_every and number % self.fail_every == self.fail_every - 1:
            return Trial(number, config, config_id(config), state=TrialState.FAILED, error="boom")
        feasible = all(c.satisfied(outcome.values) for c in self.constraints)
        return Trial(number, config, config_id(config), values=outcome.values, feasible=feasible)


def drive(strategy: Strategy, evaluate: Evaluations, rounds: int, batch: int = 3) -> list[dict[str, Any]]:
    """Ask `batch`, tell their trials, `rounds` times; returns every asked config in order."""
    asked: list[dict[str, Any]] = []
    for _ in range(rounds):
        configs = strategy.ask(batch)
        asked.extend(configs)
        strategy.tell([evaluate(c) for c in configs])
    return asked
