"""NSGA-III, TPE and regularized evolution on the tiny space: constraints reaching Optuna, TPE's
batches, evolution's population and its end on a constraint no subnet can meet (the contract every
strategy keeps is tested in test_strategy_conformance.py)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from nas_testing import (
    Evaluations,
    TinySpace,
    drive,
    make_resolved,
)
from nas_testing import (
    make_tiny_strategy as make,
)

from nas import MemoryTrialStore, SpecError, Trial
from nas.runner import Runner
from nas.strategies import list_strategies
from nas.strategies.optuna_nsga3 import NSGA3Strategy
from nas.strategies.regularized_evolution import EvolutionStrategy, InfeasibleConstraintError
from search_spaces import config_id


def test_nsga3_resumed_trials_join_generations(tiny_space: TinySpace, tiny_luts) -> None:
    evaluate = Evaluations(tiny_space, tiny_luts)
    rng = np.random.default_rng(1)
    configs = list({config_id(c): c for c in (tiny_space.sample(rng) for _ in range(40))}.values())[:9]
    strategy = make("nsga3", tiny_space)
    assert isinstance(strategy, NSGA3Strategy)
    strategy.tell([evaluate(c) for c in configs])
    key = "NSGAIIISampler:generation"
    assert [t.system_attrs[key] for t in strategy.study.get_trials(deepcopy=False)] == [
        0,
        0,
        0,
        0,
        1,
        1,
        1,
        1,
        2,
    ]


@pytest.mark.parametrize("name", ["nsga3", "tpe"])
def test_constraints_reach_optuna(name: str, tiny_space: TinySpace, tiny_luts) -> None:
    bound = 2000.0
    strategy = make(name, tiny_space, constraints=[f"params <= {bound}"])
    evaluate = Evaluations(tiny_space, tiny_luts)
    told = [evaluate(tiny_space.largest())]
    strategy.tell(told)
    for _ in range(3):
        batch = [evaluate(c) for c in strategy.ask(3)]
        strategy.tell(batch)
        told += batch
    by_id = {t.config_id: t for t in told}
    complete = strategy.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) >= len(told)
    for frozen in complete:
        trial = by_id[tiny_space.config_id(frozen.params)]
        assert frozen.constraints == {f"params <= {bound:g}": trial.values["params"] - bound}
    assert any(t.values["params"] > bound for t in told) and any(t.values["params"] <= bound for t in told)


def test_tpe_batch_is_diverse_with_constant_liar(tiny_space: TinySpace, tiny_luts) -> None:
    strategy = make("tpe", tiny_space, seed=0)
    drive(strategy, Evaluations(tiny_space, tiny_luts), rounds=2, batch=4)  # past the random start-up
    batch = strategy.ask(4)
    assert len({config_id(c) for c in batch}) == 4
    running = strategy.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
    assert len(running) == 4


def test_evolution_ages_population_and_breeds_from_it(tiny_space: TinySpace, tiny_luts) -> None:
    strategy = make("evolution", tiny_space, seed=2)
    assert isinstance(strategy, EvolutionStrategy)
    evaluate = Evaluations(tiny_space, tiny_luts)
    told: list[Trial] = []
    for _ in range(4):
        trials = [evaluate(c) for c in strategy.ask(2)]
        strategy.tell(trials)
        told += trials
    # Population 4: the four most recent complete trials, oldest first.
    assert [m.config for m in strategy.population] == [t.config for t in told[-4:]]


def test_evolution_prefers_feasible_parents(tiny_space: TinySpace, tiny_luts) -> None:
    bound = 1500.0
    strategy = make("evolution", tiny_space, seed=0, constraints=[f"params <= {bound}"], sample_size=4)
    evaluate = Evaluations(tiny_space, tiny_luts)
    drive(strategy, evaluate, rounds=2, batch=2)
    feasible = [m.config for m in strategy.population if m.violation == 0]
    assert feasible and len(feasible) < len(strategy.population)
    # A tournament over the whole population only ever picks a feasible member.
    assert all(strategy._tournament() in feasible for _ in range(20))


def test_evolution_impossible_constraint_is_a_clear_error(tiny_space: TinySpace, tiny_luts) -> None:
    strategy = make("evolution", tiny_space, seed=0, constraints=["params <= 10"], infeasible_patience=6)
    evaluate = Evaluations(tiny_space, tiny_luts)
    with pytest.raises(
        InfeasibleConstraintError, match=r"no trial satisfied the constraints \['params <= 10'\]"
    ) as info:
        drive(strategy, evaluate, rounds=20, batch=2)
    assert info.value.field == "constraints"
    assert evaluate.number < 40  # it stopped well before the space ran out


def test_runner_turns_an_impossible_constraint_into_a_failed_search(tiny_space: TinySpace, tiny_luts) -> None:
    resolved = make_resolved(
        tiny_space,
        strategy="evolution",
        strategy_params={"population_size": 4, "infeasible_patience": 5},
        constraints=["params <= 10"],
        budget={"trials": 25, "parallelism": 2},
    )
    store = MemoryTrialStore()
    result = Runner(resolved, "impossible", store, tiny_luts, use_ray=False).run()
    assert result.state == "failed"
    assert "InfeasibleConstraintError" in result.error and "loosen" in result.error
    assert 5 <= result.n_trials < 25


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("evolution", {"population_size": 1}, "strategy_params.population_size"),
        ("evolution", {"crossover_prob": 2}, "strategy_params.crossover_prob"),
        ("nsga3", {"dividing_parameter": 0}, "strategy_params.dividing_parameter"),
        ("tpe", {"multivariate": "yes"}, "strategy_params.multivariate"),
        ("tpe", {"population_size": 4}, "strategy_params.population_size"),
    ],
)
def test_bad_params_raise_spec_errors(name: str, params: dict, field: str, tiny_space: TinySpace) -> None:
    with pytest.raises(SpecError) as info:
        make(name, tiny_space, **params)
    assert info.value.field == field


def test_default_strategy_per_space_is_registered() -> None:
    from nas.strategies import DEFAULT_STRATEGY, default_strategy
    from search_spaces import list_spaces

    for space in list_spaces():
        assert default_strategy(space) in list_strategies()
    assert set(DEFAULT_STRATEGY) <= set(list_spaces())


def test_a_spec_without_a_strategy_gets_its_spaces_default() -> None:
    from nas import SearchSpec
    from nas.strategies import default_strategy
    from search_spaces import list_spaces

    for space in list_spaces():
        assert SearchSpec(space=space, objectives=["params"]).strategy == default_strategy(space)
    assert SearchSpec(space="unet", objectives=["params"], strategy="random").strategy == "random"


def test_tpe_evolution_hands_over_after_switch_after_configs(tiny_space: TinySpace, tiny_luts) -> None:
    from nas.strategies import make_strategy
    from nas.strategies.tpe_evolution import TPEEvolutionStrategy

    default = make_strategy("tpe-evolution", tiny_space, make("tpe", tiny_space).objectives)
    assert isinstance(default, TPEEvolutionStrategy) and default.switch_after == 100
    strategy = make("tpe-evolution", tiny_space, switch_after=6)
    assert isinstance(strategy, TPEEvolutionStrategy)
    evaluate = Evaluations(tiny_space, tiny_luts)
    first = strategy.ask(4)
    assert strategy.stage == "tpe"
    second = strategy.ask(4)  # 2 more from TPE, then evolution takes over
    assert strategy.stage == "evolution"
    asked_of_tpe = len(strategy.tpe.study.trials)
    strategy.tell([evaluate(c) for c in first + second])
    third = strategy.ask(4)
    assert len(strategy.tpe.study.trials) == asked_of_tpe  # TPE is asked nothing after the switch
    ids = [config_id(c) for c in first + second + third]
    assert len(ids) == 12 and len(set(ids)) == 12
