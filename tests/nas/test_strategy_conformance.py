"""The `Strategy` contract, checked for every registered strategy: the registry is the test matrix,
so a strategy is tested here as soon as it is registered (give it small params in
`nas_testing.SMALL_STRATEGY_PARAMS` if it needs any). What only one strategy does is tested in
test_strategies*.py.

Two kinds of strategy keep the contract differently where it leaves room: samplers (random, Optuna,
evolution) hand out `n` new configs per `ask` until the space is exhausted and follow their seed;
stepwise walks (`StepwiseStrategy`: evolving, slimming) ask only what their next step needs and stop
on their own, the same whatever the seed.
"""

from __future__ import annotations

import numpy as np
import pytest
from nas_testing import (
    DEVICE,
    SMALL_OPTIONS,
    Evaluations,
    TinySpace,
    drive,
    make_tiny_strategy,
    synthetic_latency,
)

from nas import SpecError, Trial, TrialState
from nas.strategies import Strategy, list_strategies, strategy_class
from nas.strategies._stepwise import StepwiseStrategy
from search_spaces import Config, SearchSpace, config_id, get_space, list_spaces

DISTINCT_TINY_SUBNETS = 28
#: Satisfied by some subnets of the tiny space and violated by others.
CONSTRAINT = "params <= 2000"


@pytest.fixture(params=list_strategies())
def name(request: pytest.FixtureRequest) -> str:
    """Every registered strategy."""
    return request.param


def walks(strategy: Strategy) -> bool:
    return isinstance(strategy, StepwiseStrategy)


def assert_valid(space: SearchSpace, configs: list[Config]) -> None:
    for config in configs:
        assert space.canonicalize(config) == config
        assert set(config) == set(space.choice_map)


def drive_until_done(strategy: Strategy, evaluate: Evaluations, batch: int, limit: int = 200) -> list[Config]:
    """Ask and tell until `ask` returns nothing (or `limit` configs); every asked config in order."""
    asked: list[Config] = []
    while len(asked) < limit:
        configs = strategy.ask(batch)
        if not configs:
            break
        asked += configs
        strategy.tell([evaluate(c) for c in configs])
    return asked


def test_asks_are_at_most_n_new_canonical_configs(name: str, tiny_space: TinySpace, tiny_luts) -> None:
    strategy = make_tiny_strategy(name, tiny_space, seed=3)
    evaluate = Evaluations(tiny_space, tiny_luts, fail_every=5)
    asked: list[Config] = []
    for n in (3, 1, 4, 2, 3):
        configs = strategy.ask(n)
        assert len(configs) <= n
        if not walks(strategy):
            assert len(configs) == n
        assert_valid(tiny_space, configs)
        asked += configs
        strategy.tell([evaluate(c) for c in configs])
    ids = [config_id(c) for c in asked]
    assert ids and len(set(ids)) == len(ids)


def test_exhausted_it_keeps_asking_nothing(name: str, tiny_space: TinySpace, tiny_luts) -> None:
    strategy = make_tiny_strategy(name, tiny_space, seed=1)
    asked = drive_until_done(strategy, Evaluations(tiny_space, tiny_luts), batch=4)
    assert len({config_id(c) for c in asked}) == len(asked)
    if walks(strategy):
        assert 1 < len(asked) < DISTINCT_TINY_SUBNETS
    else:
        assert len(asked) == DISTINCT_TINY_SUBNETS
    assert strategy.ask(3) == []
    assert strategy.ask(1) == []


def test_same_seed_same_asks(name: str, tiny_space: TinySpace, tiny_luts) -> None:
    runs = [
        drive(make_tiny_strategy(name, tiny_space, seed=seed), Evaluations(tiny_space, tiny_luts), 5)
        for seed in (7, 7, 8)
    ]
    assert runs[0] and runs[0] == runs[1]
    if not walks(make_tiny_strategy(name, tiny_space)):
        assert runs[0] != runs[2]


def test_tell_takes_unasked_failed_and_infeasible_trials_and_never_asks_them(
    name: str, tiny_space: TinySpace, tiny_luts
) -> None:
    """What a resumed search does: tell the stored trials first, then ask."""
    evaluate = Evaluations(tiny_space, tiny_luts, fail_every=4, constraints=[CONSTRAINT])
    rng = np.random.default_rng(0)
    previous = {config_id(c): c for c in (tiny_space.sample(rng) for _ in range(30))}
    assert any(0 in c.values() for c in previous.values())  # zeroed entries are not among the options
    stored = [evaluate(c) for c in previous.values()]
    complete = [t for t in stored if t.state == TrialState.COMPLETE]
    assert len(complete) < len(stored)
    assert any(t.feasible for t in complete) and not all(t.feasible for t in complete)
    strategy = make_tiny_strategy(name, tiny_space, seed=5, constraints=[CONSTRAINT])
    assert [str(c) for c in strategy.constraints] == [CONSTRAINT]
    strategy.tell(stored)
    asked = drive(strategy, evaluate, rounds=10, batch=2)
    assert_valid(tiny_space, asked)
    asked_ids = {config_id(c) for c in asked}
    assert not asked_ids & set(previous)
    assert len(asked_ids) == len(asked)
    if not walks(strategy):
        assert len(asked) == DISTINCT_TINY_SUBNETS - len(previous)


def test_tell_one_trial_at_a_time_in_completion_order(name: str, tiny_space: TinySpace, tiny_luts) -> None:
    """As the runner tells: one trial per call, in the order evaluations finish (not the order asked),
    some failed."""
    strategy = make_tiny_strategy(name, tiny_space, seed=2)
    evaluate = Evaluations(tiny_space, tiny_luts, fail_every=2)
    asked: list[Config] = []
    for _ in range(4):
        configs = strategy.ask(3)
        asked += configs
        for config in reversed(configs):
            strategy.tell([evaluate(config)])
    assert len({config_id(c) for c in asked}) == len(asked)


def test_never_asks_again_a_config_asked_and_still_in_flight(
    name: str, tiny_space: TinySpace, tiny_luts
) -> None:
    """Evaluations still running when the next ask comes (the runner's parallelism): nothing asked
    before, told or not yet, comes back; trials are told late and out of order."""
    strategy = make_tiny_strategy(name, tiny_space, seed=4)
    evaluate = Evaluations(tiny_space, tiny_luts, fail_every=3)
    in_flight: list[Config] = []
    asked: list[Config] = []
    for _ in range(12):
        configs = strategy.ask(2)
        asked += configs
        in_flight += configs
        # Tell the oldest half and keep the rest running (all of them when a walk waits for them).
        keep = len(in_flight) // 2 if configs else 0
        done, in_flight = in_flight[: len(in_flight) - keep], in_flight[len(in_flight) - keep :]
        strategy.tell([evaluate(c) for c in reversed(done)])
    ids = [config_id(c) for c in asked]
    assert len(ids) > (1 if walks(strategy) else 20) and len(set(ids)) == len(ids)


def test_unknown_and_bad_params_are_spec_errors_naming_the_field(name: str, tiny_space: TinySpace) -> None:
    allowed = sorted(strategy_class(name).param_checks())
    with pytest.raises(SpecError, match="allowed: ") as info:
        make_tiny_strategy(name, tiny_space, generations=3)
    assert info.value.field == "strategy_params.generations"
    assert info.value.allowed == allowed
    if "max_attempts" in allowed:
        with pytest.raises(SpecError, match=r"must be an int in \[1, ") as info:
            make_tiny_strategy(name, tiny_space, max_attempts=0)
        assert info.value.field == "strategy_params.max_attempts"


def synthetic_values(space: SearchSpace, config: Config) -> dict[str, float]:
    blocks = space.blocks(config)
    return {
        f"latency:{DEVICE}": sum(synthetic_latency(b) for b in blocks),
        "params": float(sum(b.params for b in blocks)),
    }


@pytest.mark.parametrize("space_name", list_spaces())
def test_asks_valid_configs_of_every_registered_space(name: str, space_name: str) -> None:
    if space_name not in SMALL_OPTIONS:
        pytest.skip(f"no small options for space {space_name!r} in SMALL_OPTIONS of nas_testing.py")
    space = get_space(space_name, **SMALL_OPTIONS[space_name])
    try:
        strategy = make_tiny_strategy(name, space, seed=0)
    except SpecError as exc:
        if exc.field != "space":
            raise
        pytest.skip(f"strategy {name!r} does not apply to space {space_name!r}: {exc}")
    told: list[Trial] = []
    for _ in range(3):
        configs = strategy.ask(4)
        assert 0 < len(configs) <= 4
        assert_valid(space, configs)
        trials = [
            Trial(len(told) + i, c, config_id(c), values=synthetic_values(space, c))
            for i, c in enumerate(configs)
        ]
        strategy.tell(trials)
        told += trials
    assert len({t.config_id for t in told}) == len(told)


def test_builtin_strategies_keep_their_registered_names() -> None:
    """Specs name strategies by these names: renaming one breaks stored and submitted searches."""
    builtin = {"random", "nsga2", "nsga3", "tpe", "evolution", "tpe-evolution", "evolving", "slimming"}
    assert builtin <= set(list_strategies())
    assert all(strategy_class(name).name == name for name in list_strategies())
