"""NSGA-III through Optuna's ask-and-tell interface (see `OptunaStrategy`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from nas.strategies._optuna import OptunaStrategy
from nas.strategies.optuna_nsga2 import NSGA2Strategy, genetic_sampler_args
from nas.strategies.params import ParamCheck, int_at_least
from nas.strategies.registry import register_strategy


@register_strategy
class NSGA3Strategy(OptunaStrategy):
    """NSGA-III (Optuna's `NSGAIIISampler`): NSGA-II's survival with reference-point niching in place
    of crowding distance, which spreads 3-objective fronts more evenly.

    Params: `population_size` (default 20), `crossover_prob` (0.9), `swapping_prob` (0.5),
    `mutation_prob` (default 1 / number of choices), `dividing_parameter` (3: divisions per objective
    of the simplex of reference points), and `max_attempts` (32).
    """

    name = "nsga3"

    @classmethod
    def sampler_param_checks(cls) -> Mapping[str, ParamCheck]:
        return {**NSGA2Strategy.sampler_param_checks(), "dividing_parameter": int_at_least(1)}

    def make_sampler(self, params: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
        self.population_size: int = params.get("population_size", 20)
        with warnings.catch_warnings():
            # Optuna marks NSGA-III experimental; its interface is what we pin in tests.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.NSGAIIISampler(
                **genetic_sampler_args(params),
                dividing_parameter=params.get("dividing_parameter", 3),
                seed=seed,
            )

    @property
    def generation_size(self) -> int:
        return self.population_size
