"""Evaluation workers that die mid-trial, on a real local Ray (2 CPUs), EfficientFormerV2 at 32 px.

A dead Ray actor is replaced and its config evaluated again on the fresh one, at most
`evaluation_retries` times; then the trial is recorded failed with the reason and the search goes on.
Deaths are real: the worker process calls `os._exit` (a crash), or the test `ray.kill`s the actor
while it is evaluating. Which configs die is decided in the workers through files in a temp folder
(the first to claim a role by hard-linking its file wins), so the tests know without timing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle
from nas_testing import DEVICE, make_resolved, synthetic_lut

from nas import MemoryTrialStore, TrialState
from nas.evaluate import EvalOutcome, SubnetEvaluator
from nas.evaluator_pool import _RayPool
from nas.runner import Runner
from search_spaces import Config, SearchSpace, config_id

pytestmark = pytest.mark.usefixtures("ray_local")

NSGA2 = {"strategy": "nsga2", "strategy_params": {"population_size": 4}, "seed": 5}


def claim(folder: str, role: str, cid: str) -> str:
    """The config id holding `role`: `cid` if this call took it (atomically), else the earlier one."""
    path = os.path.join(folder, role)
    tmp = os.path.join(folder, f".{role}.{uuid.uuid4().hex}")
    with open(tmp, "w") as fh:
        fh.write(cid)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path) as fh:
        return fh.read()


class CrashingEvaluator(SubnetEvaluator):
    """The first config evaluated anywhere (`victim`) kills its worker every time; the next other one
    (`once`) kills its worker on its first attempt only. Every death is logged to `deaths`."""

    def __init__(self, *args: Any, folder: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.folder = folder

    def evaluate(self, config: Config) -> EvalOutcome:
        cid = config_id(config)
        victim = claim(self.folder, "victim", cid)
        dies = cid == victim
        if not dies and not os.path.exists(os.path.join(self.folder, "once")):
            dies = claim(self.folder, "once", cid) == cid
        if dies:
            with open(os.path.join(self.folder, "deaths"), "a") as fh:
                fh.write(cid + "\n")
            os._exit(3)
        return super().evaluate(config)


class StallingEvaluator(SubnetEvaluator):
    """The first config evaluated marks `started` and then waits (for the test to kill its actor);
    its re-run, and every other config, evaluates normally."""

    def __init__(self, *args: Any, folder: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.folder = folder

    def evaluate(self, config: Config) -> EvalOutcome:
        cid = config_id(config)
        if claim(self.folder, "started", cid) == cid and not os.path.exists(
            os.path.join(self.folder, "killed")
        ):
            deadline = time.monotonic() + 120  # only a guard against a hang: the test kills us first
            while time.monotonic() < deadline and not os.path.exists(os.path.join(self.folder, "killed")):
                time.sleep(0.02)
        return super().evaluate(config)


class EvaluatorWith:
    """A picklable factory: `cls(space, options, objectives, luts, folder=folder)`."""

    def __init__(self, cls: type[SubnetEvaluator], folder: Path):
        self.cls, self.folder = cls, str(folder)

    def __call__(self, *args: Any) -> SubnetEvaluator:
        return self.cls(*args, folder=self.folder)


@pytest.fixture
def by_value():
    """Workers cannot import the test modules: ship this one's classes by value."""
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def luts(effv2_space: SearchSpace) -> dict[str, dict[str, float]]:
    return {DEVICE: synthetic_lut(effv2_space)}


def check_numbering(store: MemoryTrialStore, search_id: str, n: int) -> list:
    trials = store.trials(search_id)
    assert [t.number for t in trials] == list(range(n))
    assert len({t.config_id for t in trials}) == n
    return trials


def test_dead_worker_is_retried_then_failed(effv2_space: SearchSpace, luts, tmp_path: Path, by_value) -> None:
    store = MemoryTrialStore()
    resolved = make_resolved(effv2_space, budget={"trials": 6, "parallelism": 2}, **NSGA2)
    factory = EvaluatorWith(CrashingEvaluator, tmp_path)
    result = Runner(resolved, "crash", store, luts, evaluator_factory=factory, evaluation_retries=2).run()

    assert (result.state, result.n_trials, result.error) == ("succeeded", 6, None)
    trials = check_numbering(store, "crash", 6)
    victim = (tmp_path / "victim").read_text()
    once = (tmp_path / "once").read_text()
    deaths = (tmp_path / "deaths").read_text().split()
    # The victim ran on 1 + 2 fresh workers, all died; the other died once and then succeeded.
    assert sorted(deaths) == sorted([victim] * 3 + [once])
    by_id = {t.config_id: t for t in trials}
    failed = by_id[victim]
    assert failed.state == TrialState.FAILED and failed.values == {}
    assert "the evaluation worker died on all 3 attempt(s) at this config" in failed.error
    assert "ActorDiedError" in failed.error or "RayActorError" in failed.error
    assert failed.metrics["attempts"] == 3
    retried = by_id[once]
    assert retried.state == TrialState.COMPLETE and retried.metrics["attempts"] == 2
    assert set(retried.values) == {f"latency:{DEVICE}", "params"}
    others = [t for t in trials if t.config_id not in (victim, once)]
    assert all(t.state == TrialState.COMPLETE and "attempts" not in t.metrics for t in others)
    assert failed.number not in result.front


def test_no_retries_fails_at_first_death(effv2_space: SearchSpace, luts, tmp_path: Path, by_value) -> None:
    store = MemoryTrialStore()
    resolved = make_resolved(effv2_space, budget={"trials": 4, "parallelism": 2}, **NSGA2)
    factory = EvaluatorWith(CrashingEvaluator, tmp_path)
    result = Runner(resolved, "crash0", store, luts, evaluator_factory=factory, evaluation_retries=0).run()

    assert (result.state, result.n_trials) == ("succeeded", 4)
    trials = check_numbering(store, "crash0", 4)
    failed = [t for t in trials if t.state == TrialState.FAILED]
    assert sorted(t.config_id for t in failed) == sorted(
        [(tmp_path / "victim").read_text(), (tmp_path / "once").read_text()]
    )
    assert all("died on all 1 attempt(s)" in t.error for t in failed)


def test_actor_killed_mid_evaluation_is_retried(
    effv2_space: SearchSpace, luts, tmp_path: Path, by_value, monkeypatch
) -> None:
    # Record which actor evaluates which config, from the driver's side of the pool.
    actors: dict[str, Any] = {}
    submit = _RayPool.submit

    def recording_submit(self: _RayPool, config: Config) -> None:
        submit(self, config)
        for actor, submitted, _attempt in self._running.values():
            actors.setdefault(config_id(submitted), actor)

    monkeypatch.setattr(_RayPool, "submit", recording_submit)
    errors: list[BaseException] = []

    def killer() -> None:
        try:
            deadline = time.monotonic() + 120
            while not (tmp_path / "started").exists():
                if time.monotonic() > deadline:
                    raise AssertionError("no evaluation started")
                time.sleep(0.02)
            ray.kill(actors[(tmp_path / "started").read_text()])
            (tmp_path / "killed").touch()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=killer)
    thread.start()
    store = MemoryTrialStore()
    resolved = make_resolved(effv2_space, budget={"trials": 4, "parallelism": 2}, **NSGA2)
    factory = EvaluatorWith(StallingEvaluator, tmp_path)
    try:
        result = Runner(resolved, "killed", store, luts, evaluator_factory=factory).run()
    finally:
        (tmp_path / "killed").touch()
        thread.join()
    assert errors == []
    assert (result.state, result.n_trials) == ("succeeded", 4)
    trials = check_numbering(store, "killed", 4)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    stalled = next(t for t in trials if t.config_id == (tmp_path / "started").read_text())
    assert stalled.metrics["attempts"] == 2
    assert sum("attempts" in t.metrics for t in trials) == 1
