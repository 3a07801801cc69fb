"""NSGA-II on the tiny space, told real evaluations: how it drives Optuna (the contract every
strategy keeps is tested in test_strategy_conformance.py)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from nas_testing import STRATEGY_OBJECTIVES, Evaluations, TinySpace
from nas_testing import make_tiny_strategy as make

from nas import SpecError, Trial, TrialState
from nas.strategies.optuna_nsga2 import NSGA2Strategy
from search_spaces import config_id

DISTINCT_TINY_SUBNETS = 28


def test_nsga2_resumed_trials_join_generations(tiny_space: TinySpace, tiny_luts) -> None:
    evaluate = Evaluations(tiny_space, tiny_luts)
    rng = np.random.default_rng(1)
    configs = list({config_id(c): c for c in (tiny_space.sample(rng) for _ in range(40))}.values())[:9]
    strategy = make("nsga2", tiny_space, seed=0)
    assert isinstance(strategy, NSGA2Strategy)
    strategy.tell([evaluate(c) for c in configs])
    key = "NSGAIISampler:generation"  # where Optuna's NSGA-II keeps a trial's generation
    trials = strategy.study.get_trials(deepcopy=False)
    assert [t.system_attrs[key] for t in trials] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    for trial, config in zip(trials, configs, strict=True):
        assert trial.state == optuna.trial.TrialState.COMPLETE
        # Optuna holds options only: a zeroed entry became the largest option, the same subnet.
        assert all(value in tiny_space.choice_map[name].options for name, value in trial.params.items())
        assert tiny_space.canonicalize(trial.params) == config
    strategy.ask(1)
    assert strategy.study.get_trials(deepcopy=False)[-1].system_attrs[key] == 2


def test_nsga2_tells_optuna_values_failures_and_known_duplicates(tiny_space: TinySpace, tiny_luts) -> None:
    strategy = make("nsga2", tiny_space, seed=2)
    evaluate = Evaluations(tiny_space, tiny_luts, fail_every=3)
    told: dict[str, Trial] = {}
    for _ in range(8):
        trials = [evaluate(c) for c in strategy.ask(3)]
        told.update((t.config_id, t) for t in trials)
        strategy.tell(trials)
    study_trials = strategy.study.get_trials(deepcopy=False)
    # In a 28-subnet space NSGA-II proposes known subnets; each is told at once with known values.
    assert len(study_trials) > len(told)
    for frozen in study_trials:
        trial = told.get(tiny_space.config_id(frozen.params))
        if trial is None or trial.state == TrialState.FAILED:
            assert frozen.state == optuna.trial.TrialState.FAIL
        elif frozen.state == optuna.trial.TrialState.COMPLETE:
            assert frozen.values == [trial.values[o] for o in STRATEGY_OBJECTIVES]
    failed = [t for t in told.values() if t.state == TrialState.FAILED]
    assert failed and all(
        f.state == optuna.trial.TrialState.FAIL
        for f in study_trials
        if tiny_space.config_id(f.params) in {t.config_id for t in failed}
    )


def test_nsga2_twin_of_a_pending_config_is_failed_in_optuna(tiny_space: TinySpace) -> None:
    # Population 2 with everything pending: Optuna keeps proposing random subnets, and twins of the
    # pending ones must not be handed out again.
    strategy = make("nsga2", tiny_space, seed=4, population_size=2)
    asked = strategy.ask(DISTINCT_TINY_SUBNETS)
    assert len({config_id(c) for c in asked}) == len(asked) == DISTINCT_TINY_SUBNETS
    states = [t.state for t in strategy.study.get_trials(deepcopy=False)]
    assert states.count(optuna.trial.TrialState.RUNNING) == DISTINCT_TINY_SUBNETS
    assert set(states) <= {optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL}


def test_nsga2_constraints_reach_optuna(tiny_space: TinySpace, tiny_luts) -> None:
    bound = 2000.0
    strategy = make("nsga2", tiny_space, seed=0, constraints=[f"params <= {bound}"])
    evaluate = Evaluations(tiny_space, tiny_luts)
    resumed = evaluate(tiny_space.largest())
    strategy.tell([resumed])
    asked = [evaluate(c) for c in strategy.ask(5)]
    strategy.tell(asked)
    by_id = {t.config_id: t for t in [resumed, *asked]}
    key = f"params <= {bound:g}"
    checked = 0
    for frozen in strategy.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
        trial = by_id[tiny_space.config_id(frozen.params)]
        assert frozen.constraints == {key: trial.values["params"] - bound}
        assert frozen.system_attrs[f"constraints:{key}"] == trial.values["params"] - bound
        checked += 1
    assert checked == 6
    assert by_id[resumed.config_id].values["params"] > bound  # the resumed one is infeasible


def test_nsga2_param_checks(tiny_space: TinySpace) -> None:
    with pytest.raises(SpecError, match="population_size") as info:
        make("nsga2", tiny_space, population_size=1)
    assert info.value.field == "strategy_params.population_size"
    with pytest.raises(SpecError, match=r"number in \[0, 1\]"):
        make("nsga2", tiny_space, crossover_prob=1.5)
    strategy = make("nsga2", tiny_space, population_size=6, mutation_prob=0.2)
    assert strategy.population_size == 6
    assert optuna.logging.get_verbosity() == optuna.logging.WARNING
