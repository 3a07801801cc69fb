"""The `Strategy` contract: turn observed trials into the next configs to evaluate.

A strategy sees configs and objective values only: it knows nothing of storage, Ray or HTTP (the
runner owns the loop). It is reproducible from its seed: the same seed and the same sequence of
`tell`s give the same `ask`s.

- `ask(n)` returns up to `n` canonical configs not yet asked or told (deduplicated by config id);
  fewer (possibly none) when the space is exhausted.
- `tell(trials)` reports finished trials, in any order, including those restored from a store when
  a search resumes (trials the strategy never asked for are accepted).

A strategy names the `strategy_params` it accepts and how each is checked (`param_checks`); the base
constructor checks them (unknown names and bad values are a `SpecError` naming the field) and hands
the checked params to `setup`, where the strategy builds its state.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from nas._trial import Trial
from nas.objectives import Constraint, Objective
from nas.strategies.params import ParamCheck, check_strategy_params
from search_spaces import Config, SearchSpace


class Strategy(abc.ABC):
    name: ClassVar[str]

    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        *,
        seed: int = 0,
        **params: Any,
    ):
        self.space = space
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        self.seed = seed
        self.params = check_strategy_params(self.name, params, self.param_checks())
        self.setup(self.params)

    @classmethod
    def param_checks(cls) -> Mapping[str, ParamCheck]:
        """The `strategy_params` this strategy accepts, each with its check (none by default)."""
        return {}

    def setup(self, params: Mapping[str, Any]) -> None:  # noqa: B027 (a hook, empty by default)
        """Build the strategy's state from its checked params (the last step of the constructor)."""

    @abc.abstractmethod
    def ask(self, n: int) -> list[Config]: ...

    @abc.abstractmethod
    def tell(self, trials: Sequence[Trial]) -> None: ...
