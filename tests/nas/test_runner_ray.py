"""The runner on a real local Ray (2 CPUs) with the EfficientFormerV2 space at 32x32 pixels."""

from __future__ import annotations

import os
from pathlib import Path

import nas_testing
import numpy as np
import pytest
import ray.cloudpickle
from nas_testing import DEVICE, make_resolved, synthetic_lut

from nas import MemoryTrialStore, TrialState
from nas.pareto import non_dominated
from nas.runner import Runner, RunResult
from search_spaces import SearchSpace, config_id

pytestmark = pytest.mark.usefixtures("ray_local")

NSGA2 = {"strategy": "nsga2", "strategy_params": {"population_size": 4}, "seed": 11}


@pytest.fixture(scope="module")
def effv2_luts(effv2_space: SearchSpace) -> dict[str, dict[str, float]]:
    return {DEVICE: synthetic_lut(effv2_space)}


def check_consistent(store: MemoryTrialStore, search_id: str, space: SearchSpace, result: RunResult) -> list:
    trials = store.trials(search_id)
    assert result.n_trials == len(trials)
    assert [t.number for t in trials] == list(range(len(trials)))
    assert len({t.config_id for t in trials}) == len(trials)
    assert all(t.config_id == config_id(space.canonicalize(t.config)) for t in trials)
    ok = [t for t in trials if t.state == TrialState.COMPLETE and t.feasible]
    points = np.array([[t.values[f"latency:{DEVICE}"], t.values["params"]] for t in ok]).reshape(-1, 2)
    expected = sorted(ok[i].number for i in non_dominated(points))
    assert result.front == expected
    assert [t.number for t in store.pareto(search_id)] == expected
    return trials


def test_search_on_ray(effv2_space: SearchSpace, effv2_luts) -> None:
    store = MemoryTrialStore()
    resolved = make_resolved(effv2_space, budget={"trials": 12, "parallelism": 2}, **NSGA2)
    result = Runner(resolved, "ray-search", store, effv2_luts).run()
    assert (result.state, result.n_trials, result.error) == ("succeeded", 12, None)
    trials = check_consistent(store, "ray-search", effv2_space, result)
    assert result.front and result.hypervolume is not None and result.hypervolume > 0
    assert all(t.state == TrialState.COMPLETE and t.duration_s > 0 for t in trials)
    assert all(t.metrics[f"latency_coverage:{DEVICE}"] == 1.0 for t in trials)


def test_cancel_on_ray(effv2_space: SearchSpace, effv2_luts) -> None:
    store = MemoryTrialStore()
    resolved = make_resolved(effv2_space, budget={"trials": 12, "parallelism": 2}, **NSGA2)
    result = Runner(
        resolved, "ray-cancel", store, effv2_luts, should_stop=lambda: store.count("ray-cancel") >= 3
    ).run()
    assert result.state == "cancelled"
    # The evaluation still in flight when the cancel was seen is awaited and recorded.
    assert 3 <= result.n_trials <= 4
    check_consistent(store, "ray-cancel", effv2_space, result)


def test_resume_on_ray(effv2_space: SearchSpace, effv2_luts) -> None:
    store = MemoryTrialStore()
    first = make_resolved(effv2_space, budget={"trials": 6, "parallelism": 2}, **NSGA2)
    assert Runner(first, "ray-resume", store, effv2_luts).run().n_trials == 6
    before = store.trials("ray-resume")
    second = make_resolved(effv2_space, budget={"trials": 12, "parallelism": 2}, **NSGA2)
    result = Runner(second, "ray-resume", store, effv2_luts).run()
    assert (result.state, result.n_trials) == ("succeeded", 12)
    assert store.trials("ray-resume")[:6] == before
    check_consistent(store, "ray-resume", effv2_space, result)


def test_infeasible_trials_are_stored_and_kept_off_the_front(effv2_space: SearchSpace, effv2_luts) -> None:
    rng = np.random.default_rng(0)
    sampled = [sum(b.params for b in effv2_space.blocks(effv2_space.sample(rng))) for _ in range(50)]
    bound = float(np.percentile(sampled, 30))
    store = MemoryTrialStore()
    resolved = make_resolved(
        effv2_space, budget={"trials": 12, "parallelism": 2}, constraints=[f"params <= {bound}"], **NSGA2
    )
    result = Runner(resolved, "ray-constrained", store, effv2_luts).run()
    assert result.state == "succeeded"
    trials = check_consistent(store, "ray-constrained", effv2_space, result)
    infeasible = {t.number for t in trials if not t.feasible}
    assert infeasible and len(infeasible) < len(trials)
    assert all(t.feasible == (t.values["params"] <= bound) for t in trials)
    assert not infeasible & set(result.front)


def test_missing_lut_key_fails_every_trial_and_the_search(effv2_space: SearchSpace, effv2_luts) -> None:
    # Every subnet starts with a stem; without their entries no latency can be predicted.
    luts = {DEVICE: {k: v for k, v in effv2_luts[DEVICE].items() if not k.startswith("effv2.stem|")}}
    store = MemoryTrialStore()
    resolved = make_resolved(effv2_space, budget={"trials": 4, "parallelism": 2}, **NSGA2)
    result = Runner(resolved, "ray-missing", store, luts).run()
    # Every trial failed: the search failed too, with the most common reason (issue 14, item 12).
    assert (result.state, result.n_trials, result.front, result.hypervolume) == ("failed", 4, [], None)
    assert result.error is not None and result.error.startswith("all 4 trials failed; the most common reason")
    for trial in store.trials("ray-missing"):
        assert trial.state == TrialState.FAILED
        assert "lacks 1 " in trial.error and "'effv2.stem|" in trial.error
        assert (
            f"nas farm run --device {DEVICE} --backend BACKEND --space efficientformerv2 -o " in trial.error
        )


def test_dead_actor_fails_its_trial_and_is_replaced(
    effv2_space: SearchSpace, effv2_luts, tmp_path: Path
) -> None:
    # The first worker to price a stem block (every subnet has one) exits its process: a real actor
    # death. The poisoned values travel by value since workers cannot import the tests.
    latch = str(tmp_path / "latch")
    luts = {
        DEVICE: {
            k: nas_testing.ExitOnce(v, latch, os.getpid()) if k.startswith("effv2.stem|") else v
            for k, v in effv2_luts[DEVICE].items()
        }
    }
    store = MemoryTrialStore()
    resolved = make_resolved(effv2_space, budget={"trials": 6, "parallelism": 2}, **NSGA2)
    ray.cloudpickle.register_pickle_by_value(nas_testing)
    try:
        # No retries here (tests/nas/test_runner_failures.py covers them): the death fails its trial.
        result = Runner(resolved, "ray-death", store, luts, evaluation_retries=0).run()
    finally:
        ray.cloudpickle.unregister_pickle_by_value(nas_testing)
    assert (result.state, result.n_trials) == ("succeeded", 6)
    trials = check_consistent(store, "ray-death", effv2_space, result)
    failed = [t for t in trials if t.state == TrialState.FAILED]
    assert len(failed) == 1 and "the evaluation worker died" in failed[0].error
    assert (tmp_path / "latch").exists()
