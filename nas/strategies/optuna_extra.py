"""NSGA-III and TPE through Optuna's ask-and-tell interface (see `OptunaStrategy`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from nas.strategies._base import ParamCheck, int_at_least, probability
from nas.strategies._optuna import OptunaStrategy
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
        return {
            "population_size": int_at_least(2),
            "crossover_prob": probability,
            "swapping_prob": probability,
            "mutation_prob": probability,
            "dividing_parameter": int_at_least(1),
        }

    def make_sampler(self, params: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
        self.population_size: int = params.get("population_size", 20)
        with warnings.catch_warnings():
            # Optuna marks NSGA-III experimental; its interface is what we pin in tests.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.NSGAIIISampler(
                population_size=self.population_size,
                crossover_prob=params.get("crossover_prob", 0.9),
                swapping_prob=params.get("swapping_prob", 0.5),
                mutation_prob=params.get("mutation_prob"),
                dividing_parameter=params.get("dividing_parameter", 3),
                seed=seed,
            )

    @property
    def generation_size(self) -> int:
        return self.population_size


@register_strategy
class TPEStrategy(OptunaStrategy):
    """TPE (Optuna's `TPESampler`; multi-objective TPE when there are several objectives).

    Params: `n_startup_trials` (default 10 random trials before the model), `n_ei_candidates` (24),
    `multivariate` (default True: one joint model of all choices, which suits coupled choices such as
    a stage's depth and its blocks' ratios), and `max_attempts` (32). Trials in flight are handled
    by Optuna's constant liar, so batches asked for parallelism are not all the same proposal.
    """

    name = "tpe"

    @classmethod
    def sampler_param_checks(cls) -> Mapping[str, ParamCheck]:
        return {
            "n_startup_trials": int_at_least(1),
            "n_ei_candidates": int_at_least(1),
            "multivariate": _boolean,
        }

    def make_sampler(self, params: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            n_startup_trials=params.get("n_startup_trials", 10),
            n_ei_candidates=params.get("n_ei_candidates", 24),
            multivariate=params.get("multivariate", True),
            constant_liar=True,
            seed=seed,
        )


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value
