"""The warm evaluator pool on a real local Ray (2 CPUs), EfficientFormerV2 at 32 px: a second search
gets the first one's started actors (the same worker processes, configured again), an idle actor
that died is replaced, and closing the pool ends its processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle
from nas_testing import DEVICE, make_resolved, synthetic_lut

from nas import MemoryTrialStore, TrialState
from nas.evaluate import SubnetEvaluator
from nas.evaluator_pool import EvaluatorPool
from nas.runner import Runner
from search_spaces import SearchSpace

pytestmark = pytest.mark.usefixtures("ray_local")

SPEC = {"strategy": "random", "budget": {"trials": 4, "parallelism": 2}, "seed": 1}


class PidRecorder(SubnetEvaluator):
    """A `SubnetEvaluator` that leaves a file named after its worker's process id in `folder`."""

    def __init__(self, *args: Any, folder: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        Path(folder, str(os.getpid())).touch()


class RecordingFactory:
    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __call__(self, *args: Any) -> SubnetEvaluator:
        return PidRecorder(*args, folder=self.folder)


@pytest.fixture
def by_value():
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)


def run(space: SearchSpace, folder: Path, pool: EvaluatorPool | None) -> tuple[set[int], list]:
    """One small search; the worker processes that evaluated it, and its trials."""
    folder.mkdir()
    store = MemoryTrialStore()
    luts = {DEVICE: synthetic_lut(space)}
    result = Runner(
        make_resolved(space, **SPEC),
        folder.name,
        store,
        luts,
        evaluator_factory=RecordingFactory(folder),
        warm=pool,
    ).run()
    assert result.state == "succeeded", result.error
    trials = store.trials(folder.name)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    return {int(p.name) for p in folder.iterdir()}, trials


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + 60  # a guard against a hang only
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes {pids} still alive"
        time.sleep(0.05)


def test_a_second_search_gets_the_started_actors(effv2_space: SearchSpace, tmp_path: Path, by_value) -> None:
    node = ray.get_runtime_context().get_node_id()
    pool = EvaluatorPool(2)
    try:
        first, trials = run(effv2_space, tmp_path / "first", pool)
        assert len(first) == 2 and pool.idle == 2
        assert {t.metrics["node_id"] for t in trials} == {node}
        second, _ = run(effv2_space, tmp_path / "second", pool)
        assert second == first  # the same worker processes, configured for the new search
        # An idle actor whose process died is replaced by a fresh one; the search does not notice.
        victim = min(second)
        os.kill(victim, signal.SIGKILL)
        wait_gone({victim})
        third, _ = run(effv2_space, tmp_path / "third", pool)
        assert len(third) == 2 and victim not in third and (second - {victim}) <= third
        # Anchor values fixed by the space and objective are kept; latency follows the table.
        cached = {key[2:] for key in pool.anchors}
        assert cached == {("smallest", "params"), ("largest", "params")}
    finally:
        pool.close()
    assert pool.idle == 0
    wait_gone(third)


def test_without_a_pool_every_search_starts_its_own(
    effv2_space: SearchSpace, tmp_path: Path, by_value
) -> None:
    first, _ = run(effv2_space, tmp_path / "first", None)
    wait_gone(first)
    second, _ = run(effv2_space, tmp_path / "second", None)
    assert not first & second
    wait_gone(second)


def test_pool_keeps_at_most_keep_idle_actors() -> None:
    pool = EvaluatorPool(1, idle_s=3600)
    try:
        actors, warm = pool.acquire(2)
        assert warm == 0
        ray.get([actor.ready.remote() for actor in actors])
        pool.release(actors)
        assert pool.idle == 1
        again, warm = pool.acquire(2)
        assert warm == 1 and again[0] is actors[0]
        pool.release(again)
        assert pool.trim() == 0 and pool.idle == 1
    finally:
        pool.close()
    assert pool.idle == 0
    with pytest.raises(RuntimeError, match="closed"):
        pool.acquire(1)
