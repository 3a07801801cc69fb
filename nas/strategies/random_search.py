"""Random search: uniform samples of the space, never the same subnet twice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nas._trial import Trial
from nas.strategies._base import Strategy
from nas.strategies.params import ParamCheck, int_at_least
from nas.strategies.registry import register_strategy
from search_spaces import Config, config_id


@register_strategy
class RandomStrategy(Strategy):
    """Uniformly random canonical configs, deduplicated by config id over everything asked and told.

    Params: `max_attempts` (default 1000), how many draws in a row may hit known subnets before the
    space counts as exhausted and `ask` returns fewer configs than requested.
    """

    name = "random"

    @classmethod
    def param_checks(cls) -> Mapping[str, ParamCheck]:
        return {"max_attempts": int_at_least(1)}

    def setup(self, params: Mapping[str, Any]) -> None:
        self.max_attempts: int = params.get("max_attempts", 1000)
        self._rng = np.random.default_rng(self.seed)
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
