"""Search strategies, registered by name (see `_base.Strategy` for the contract)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nas.objectives import Constraint, Objective, SpecError
from nas.strategies._base import Strategy
from search_spaces import SearchSpace

_STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    _STRATEGIES[cls.name] = cls
    return cls


#: The strategy each space's searches should use, chosen from the numbers of
#: `benchmarks/search_quality.py` (docs/benchmarks.md): the highest final hypervolume after 300
#: evaluations over 5 seeds, and the fewest evaluations to reach plain Optuna NSGA-II's final value.
DEFAULT_STRATEGY: dict[str, str] = {"efficientformerv2": "tpe", "unet": "tpe", "temporal": "tpe"}


def default_strategy(space_name: str) -> str:
    """The measured best strategy for `space_name`; `tpe` (best on every measured space) otherwise."""
    return DEFAULT_STRATEGY.get(space_name, "tpe")


def list_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def make_strategy(
    name: str,
    space: SearchSpace,
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint] = (),
    *,
    seed: int = 0,
    **params: Any,
) -> Strategy:
    if name not in _STRATEGIES:
        raise SpecError(
            f"unknown strategy {name!r}; allowed: {list_strategies()}",
            field="strategy",
            allowed=list_strategies(),
        )
    return _STRATEGIES[name](space, objectives, constraints, seed=seed, **params)


# Built-in strategies register themselves on import.
from nas.strategies import optuna_nsga2, random_search  # noqa: E402,F401  isort: skip
from nas.strategies import evolution, evolving, optuna_extra, slimming  # noqa: E402,F401  isort: skip

__all__ = [
    "DEFAULT_STRATEGY",
    "Strategy",
    "default_strategy",
    "list_strategies",
    "make_strategy",
    "register_strategy",
]
