"""TPE through Optuna's ask-and-tell interface (see `OptunaStrategy`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from nas.strategies._optuna import OptunaStrategy
from nas.strategies.params import ParamCheck, boolean, int_at_least
from nas.strategies.registry import register_strategy


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
            "multivariate": boolean,
        }

    def make_sampler(self, params: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            n_startup_trials=params.get("n_startup_trials", 10),
            n_ei_candidates=params.get("n_ei_candidates", 24),
            multivariate=params.get("multivariate", True),
            constant_liar=True,
            seed=seed,
        )
