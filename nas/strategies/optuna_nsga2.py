"""NSGA-II through Optuna's ask-and-tell interface."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from nas.strategies._optuna import OptunaStrategy
from nas.strategies.params import ParamCheck, int_at_least, probability
from nas.strategies.registry import register_strategy


@register_strategy
class NSGA2Strategy(OptunaStrategy):
    """NSGA-II (Optuna's `NSGAIISampler`) over the space's choices, each a categorical distribution.

    Params: `population_size` (default 20), `crossover_prob` (0.9), `swapping_prob` (0.5),
    `mutation_prob` (default 1 / number of choices), and `max_attempts` (32; see `OptunaStrategy`
    for it, for known and pending duplicates, constraints and resumed trials).
    """

    name = "nsga2"

    @classmethod
    def sampler_param_checks(cls) -> Mapping[str, ParamCheck]:
        return {
            "population_size": int_at_least(2),
            "crossover_prob": probability,
            "swapping_prob": probability,
            "mutation_prob": probability,
        }

    def make_sampler(self, params: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
        self.population_size: int = params.get("population_size", 20)
        return optuna.samplers.NSGAIISampler(**genetic_sampler_args(params), seed=seed)

    @property
    def generation_size(self) -> int:
        return self.population_size


def genetic_sampler_args(params: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments Optuna's NSGA-II and NSGA-III samplers share, from checked params (defaults
    where absent)."""
    return {
        "population_size": params.get("population_size", 20),
        "crossover_prob": params.get("crossover_prob", 0.9),
        "swapping_prob": params.get("swapping_prob", 0.5),
        "mutation_prob": params.get("mutation_prob"),
    }
