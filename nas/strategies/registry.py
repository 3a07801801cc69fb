"""Strategies by name: `register_strategy` (what each implementation module does), `make_strategy`
(what the runner does), and the measured default strategy per space."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nas.objectives import Constraint, Objective, SpecError
from nas.strategies._base import Strategy
from search_spaces import Registry, SearchSpace


class UnknownStrategyError(SpecError):
    """No strategy is registered under that name."""


STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy", field="strategy", error=UnknownStrategyError, known="known strategies"
)

#: The strategy each space's searches use when a spec names none, chosen by
#: `benchmarks/search_quality.py` over four problem families per space (docs/benchmarks.md, "Search
#: quality"): against plain Optuna TPE, Optuna NSGA-II and pymoo NSGA-II.
DEFAULT_STRATEGY: dict[str, str] = {
    "efficientformerv2": "tpe-evolution",
    "unet": "tpe-evolution",
    "temporal": "tpe-evolution",
}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its `name` (to specs, the API and the tests)."""
    return STRATEGIES.register(cls)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def strategy_class(name: str) -> type[Strategy]:
    """The class of strategy `name`; `UnknownStrategyError` naming the known strategies if none."""
    return STRATEGIES.get(name)


def default_strategy(space_name: str) -> str:
    """The measured default strategy of `space_name`; `tpe-evolution` for a space not measured."""
    return DEFAULT_STRATEGY.get(space_name, "tpe-evolution")


def make_strategy(
    name: str,
    space: SearchSpace,
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint] = (),
    *,
    seed: int = 0,
    **params: Any,
) -> Strategy:
    """A fresh strategy `name` for a search of `space` (its params checked: `SpecError` naming the field)."""
    return strategy_class(name)(space, objectives, constraints, seed=seed, **params)
