"""TPE first, then regularized evolution: sample-efficient early, cheap and steady later."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nas._trial import Trial
from nas.strategies._base import Strategy
from nas.strategies.optuna_tpe import TPEStrategy
from nas.strategies.params import ParamCheck, int_at_least, probability
from nas.strategies.registry import register_strategy
from nas.strategies.regularized_evolution import EvolutionStrategy
from search_spaces import Config, config_id


@register_strategy
class TPEEvolutionStrategy(Strategy):
    """Multi-objective TPE (`tpe`) for the first `switch_after` configs, then regularized evolution
    (`evolution`) bred from every trial told so far.

    Why: on `benchmarks/search_quality.py` TPE gains the most in the first hundred evaluations, and
    evolution gains more after that on the larger spaces (UNet, temporal), while TPE's cost per ask
    grows with the study (tens of milliseconds by a few hundred trials) and evolution's stays flat
    (docs/benchmarks.md). Evolution is told every trial from the start, so at the switch its
    population is the most recent TPE results, and it never proposes a config TPE asked, even one
    still in flight; TPE is not told what arrives after the switch (it is never asked again). A
    resumed search with `switch_after` or more stored trials goes straight to evolution.

    Params (defaults): `switch_after` (100), `n_startup_trials` (10, TPE's random start),
    `population_size` (32) and `mutation_prob` (0.1) of the evolution stage.
    """

    name = "tpe-evolution"

    @classmethod
    def param_checks(cls) -> Mapping[str, ParamCheck]:
        return {
            "switch_after": int_at_least(1),
            "n_startup_trials": int_at_least(1),
            "population_size": int_at_least(2),
            "mutation_prob": probability,
        }

    def setup(self, params: Mapping[str, Any]) -> None:
        self.switch_after: int = params.get("switch_after", 100)
        common = (self.space, self.objectives, self.constraints)
        self.tpe = TPEStrategy(*common, seed=self.seed, n_startup_trials=params.get("n_startup_trials", 10))
        evolution_params = {k: params[k] for k in ("population_size", "mutation_prob") if k in params}
        self.evolution = EvolutionStrategy(*common, seed=self.seed, **evolution_params)
        self._seen: set[str] = set()

    @property
    def stage(self) -> str:
        """`tpe` until `switch_after` configs were asked or told, then `evolution`."""
        return "tpe" if len(self._seen) < self.switch_after else "evolution"

    def ask(self, n: int) -> list[Config]:
        configs: list[Config] = []
        if self.stage == "tpe":
            configs = self.tpe.ask(min(n, self.switch_after - len(self._seen)))
            ids = [config_id(c) for c in configs]
            self.evolution.exclude(ids)
            self._seen.update(ids)
        if len(configs) < n:
            more = self.evolution.ask(n - len(configs))
            self._seen.update(config_id(c) for c in more)
            configs += more
        return configs

    def tell(self, trials: Sequence[Trial]) -> None:
        if self.stage == "tpe":
            self.tpe.tell(trials)
        self.evolution.tell(trials)
        self._seen.update(t.config_id for t in trials)
