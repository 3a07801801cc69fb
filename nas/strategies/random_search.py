"""Random search: uniform samples of the space, never the same subnet twice."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nas._trial import Trial
from nas.objectives import Constraint, Objective, SpecError
from nas.strategies import register_strategy
from nas.strategies._base import Strategy
from search_spaces import Config, SearchSpace, config_id

#: A strategy parameter's check: returns the (possibly converted) value or raises ValueError with a
#: description of what is allowed.
ParamCheck = Callable[[Any], Any]


def int_at_least(minimum: int) -> ParamCheck:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an int >= {minimum}")
        return value

    return check


def probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError("a number in [0, 1]")
    return float(value)


def check_strategy_params(
    strategy: str, params: Mapping[str, Any], allowed: Mapping[str, ParamCheck]
) -> dict[str, Any]:
    """Validate `strategy_params`: unknown names and bad values raise `SpecError` naming the field."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise SpecError(
            f"unknown parameter {unknown[0]!r} for strategy {strategy!r}; allowed: {sorted(allowed)}",
            field=f"strategy_params.{unknown[0]}",
            allowed=sorted(allowed),
        )
    checked = {}
    for name, value in params.items():
        try:
            checked[name] = allowed[name](value)
        except ValueError as exc:
            raise SpecError(
                f"strategy parameter {name!r} of {strategy!r} must be {exc}, got {value!r}",
                field=f"strategy_params.{name}",
                allowed=str(exc),
            ) from None
    return checked


@register_strategy
class RandomStrategy(Strategy):
    """Uniformly random canonical configs, deduplicated by config id over everything asked and told.

    Params: `max_attempts` (default 1000), how many draws in a row may hit known subnets before the
    space counts as exhausted and `ask` returns fewer configs than requested.
    """

    name = "random"

    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        *,
        seed: int = 0,
        **params: Any,
    ):
        checked = check_strategy_params(self.name, params, {"max_attempts": int_at_least(1)})
        super().__init__(space, objectives, constraints, seed=seed, **checked)
        self.max_attempts: int = checked.get("max_attempts", 1000)
        self._rng = np.random.default_rng(seed)
        self._seen: set[str] = set()

    def ask(self, n: int) -> list[Config]:
        out: list[Config] = []
        misses = 0
        while len(out) < n and misses < self.max_attempts:
            config = self.space.sample(self._rng)
            cid = config_id(config)
            if cid in self._seen:
                misses += 1
                continue
            misses = 0
            self._seen.add(cid)
            out.append(config)
        return out

    def tell(self, trials: Sequence[Trial]) -> None:
        self._seen.update(trial.config_id for trial in trials)
