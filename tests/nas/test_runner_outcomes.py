"""How a run ends must not lie: a run whose every trial failed is `failed` with the most common
reason; a run with no feasible trial, or whose budget ended before a stepwise strategy took a step,
is `succeeded` with warnings that say so (issue 14, item 12)."""

from __future__ import annotations

import pytest
from nas_testing import DEVICE, TinySpace, make_resolved

from nas import MemoryTrialStore, TrialState
from nas.runner import Runner

LATENCY = f"latency:{DEVICE}"
QUALITY = "proxy:params"


def test_a_run_whose_every_trial_failed_is_failed_with_the_most_common_reason(
    tiny_space: TinySpace, store: MemoryTrialStore
) -> None:
    resolved = make_resolved(tiny_space, strategy="random", budget={"trials": 12, "parallelism": 2}, seed=3)
    result = Runner(resolved, "s", store, {DEVICE: {}}, use_ray=False).run()
    trials = store.trials("s")
    assert len(trials) == 12 and all(t.state == TrialState.FAILED for t in trials)
    assert result.state == "failed"
    assert result.error is not None
    assert result.error.startswith("all 12 trials failed; the most common reason (12 of 12): ")
    assert f"the latency table of device {DEVICE!r} lacks" in result.error
    assert result.warnings == []


def test_a_run_with_some_failed_trials_still_succeeds(
    tiny_space: TinySpace, tiny_luts, store: MemoryTrialStore
) -> None:
    dropped = "tiny.mlp|dim=16|ratio=4"
    luts = {DEVICE: {k: v for k, v in tiny_luts[DEVICE].items() if k != dropped}}
    resolved = make_resolved(tiny_space, strategy="random", budget={"trials": 16, "parallelism": 2}, seed=2)
    result = Runner(resolved, "s", store, luts, use_ray=False).run()
    assert 0 < store.count("s", state=TrialState.FAILED) < 16
    assert (result.state, result.error, result.warnings) == ("succeeded", None, [])


def test_a_cancelled_run_stays_cancelled_even_if_its_trials_failed(
    tiny_space: TinySpace, store: MemoryTrialStore
) -> None:
    resolved = make_resolved(tiny_space, strategy="random", budget={"trials": 20, "parallelism": 1})
    runner = Runner(
        resolved, "s", store, {DEVICE: {}}, should_stop=lambda: store.count("s") >= 2, use_ray=False
    )
    result = runner.run()
    assert (result.state, result.error) == ("cancelled", None)


def test_no_feasible_trial_succeeds_with_a_warning(
    tiny_space: TinySpace, tiny_luts, store: MemoryTrialStore
) -> None:
    resolved = make_resolved(
        tiny_space,
        objectives=["params"],
        constraints=[f"{LATENCY} <= 0.000001"],
        strategy="random",
        budget={"trials": 10, "parallelism": 2},
    )
    result = Runner(resolved, "s", store, tiny_luts, use_ray=False).run()
    assert result.state == "succeeded" and result.front == []
    assert not any(t.feasible for t in store.trials("s"))
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith(
        "no feasible trial: none of the 10 evaluated trials met the constraints"
    )
    assert f"{LATENCY} <= 1e-06" in result.warnings[0]


def test_a_feasible_trial_means_no_warning(tiny_space: TinySpace, tiny_luts, store: MemoryTrialStore) -> None:
    resolved = make_resolved(
        tiny_space,
        objectives=["params"],
        constraints=[f"{LATENCY} <= 1000000"],
        strategy="random",
        budget={"trials": 6, "parallelism": 2},
    )
    result = Runner(resolved, "s", store, tiny_luts, use_ray=False).run()
    assert (result.state, result.warnings) == ("succeeded", [])


@pytest.mark.parametrize(("trials", "warned"), [(2, True), (200, False)])
def test_a_budget_too_small_for_a_step_of_evolving_warns(
    tiny_space: TinySpace, tiny_luts, store: MemoryTrialStore, trials: int, warned: bool
) -> None:
    resolved = make_resolved(
        tiny_space,
        objectives=[LATENCY, QUALITY],
        constraints=[f"{LATENCY} <= 0.9"],
        strategy="evolving",
        strategy_params={"base": {"depth": 3, "width": 16}},
        budget={"trials": trials, "parallelism": 1},
    )
    runner = Runner(resolved, "s", store, tiny_luts, use_ray=False)
    result = runner.run()
    assert result.state == "succeeded"
    step_warnings = [w for w in result.warnings if "took a single step" in w]
    assert bool(step_warnings) == warned
    assert bool(runner.strategy.steps) != warned
    if warned:
        assert "give budget.trials at least" in step_warnings[0]


def test_no_trial_at_all_warns(tiny_space: TinySpace, tiny_luts, store: MemoryTrialStore) -> None:
    resolved = make_resolved(tiny_space, strategy="random", budget={"trials": 10, "seconds": 60})
    result = Runner(resolved, "s", store, tiny_luts, use_ray=False, elapsed_before_s=61.0).run()
    assert result.state == "succeeded" and result.n_trials == 0
    assert [w for w in result.warnings if w.startswith("no trial was evaluated")]
