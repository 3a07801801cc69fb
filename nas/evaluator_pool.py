"""Evaluator actors on Ray, and a pool that keeps them warm between searches.

Starting an evaluator actor costs a Ray worker process and the import of torch and the search code
(seconds; tens of seconds on a loaded machine); configuring a started one for a search (its space,
objectives and latency predictors) costs milliseconds. `EvaluatorPool` therefore keeps up to `keep`
started actors after a search ends and hands them to the next search, which only configures them.

Ownership: an actor belongs either to the pool (idle) or to the one search that acquired it until
that search releases it. A search kills the actors that died or that it leaves busy (a cancel, a
failure) instead of releasing them, so the pool only ever holds actors that finished their last call.
An idle actor that died since (its node went away) is found when the next search configures it, and
replaced by a fresh one. Idle actors hold their Ray CPU: a pool keeps at most `keep` of them, for at
most `idle_s` seconds each (`trim()` ends older ones), and `close()` ends them all.

The pool also keeps `anchors`: the objective values of a space's smallest and largest subnets that
depend only on the space, its options and the objective (parameters, MACs, seeded zero-cost
proxies), which the runner needs for its hypervolume bounds before the first trial; evaluating them
again (a proxy on the largest subnet) is the other large start-up cost of a search.

Thread-safety: every method may be called from any thread (the service runs searches in threads).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from nas.evaluate import EvalOutcome, LatencySource, SubnetEvaluator
from nas.objectives import Objective
from search_spaces import Config

logger = logging.getLogger(__name__)

#: Default re-runs of a config whose evaluation worker died, before its trial is recorded failed.
EVALUATION_RETRIES = 2

#: Builds the evaluator of an actor from (space name, space options, parsed objectives, LUT snapshots);
#: by default `SubnetEvaluator` with the runner's `supernet_dir`. It is pickled to the workers (tests
#: pass evaluators that crash).
EvaluatorFactory = Callable[[str, dict[str, Any], list[Objective], Mapping[str, LatencySource]], Any]


@ray.remote(num_cpus=1, max_restarts=0)
class EvaluatorActor:
    """A Ray actor holding one evaluator (by default a `SubnetEvaluator`): configured at construction
    when given a space, or later by `configure` (a warm actor taken from an `EvaluatorPool`).

    Every outcome carries the metric `node_id`: the Ray node that evaluated it.
    """

    def __init__(
        self,
        space_name: str | None = None,
        space_options: dict[str, Any] | None = None,
        objectives: list[Objective] | None = None,
        luts: Mapping[str, LatencySource] | None = None,
        factory: Any = None,
    ):
        import torch

        # One actor per CPU: more threads per actor would only fight over the same cores.
        torch.set_num_threads(1)
        self._node_id = ray.get_runtime_context().get_node_id()
        self._evaluator: Any = None
        if space_name is not None:
            self.configure(space_name, space_options or {}, objectives or [], luts or {}, factory)

    def configure(
        self,
        space_name: str,
        space_options: dict[str, Any],
        objectives: list[Objective],
        luts: Mapping[str, LatencySource],
        factory: Any = None,
    ) -> str:
        """Load the evaluator of one search (replacing the previous one); returns this actor's node."""
        self._evaluator = None
        self._evaluator = (factory or SubnetEvaluator)(space_name, space_options, objectives, luts)
        return self._node_id

    def reset(self) -> None:
        """Drop the evaluator (its space, predictors, supernet weights) while the actor waits idle."""
        self._evaluator = None

    def ready(self) -> str:
        return self._node_id

    def evaluate(self, config: Config) -> EvalOutcome:
        if self._evaluator is None:
            raise RuntimeError("this evaluator actor has not been configured for a search")
        outcome = self._evaluator.evaluate(config)
        outcome.metrics["node_id"] = self._node_id
        return outcome


class EvaluatorPool:
    """Started `EvaluatorActor`s kept between searches (see the module docstring).

    `keep`: the most idle actors kept (0: none; every search starts and ends its own). `idle_s`: how
    long an idle actor is kept before `trim()` ends it (None: until `close()`).
    """

    def __init__(self, keep: int, *, idle_s: float | None = None):
        if keep < 0:
            raise ValueError(f"keep must be >= 0, not {keep}")
        self.keep = keep
        self.idle_s = idle_s
        self._lock = threading.Lock()
        # Idle actors with the time each became idle, oldest first.
        self._idle: list[tuple[Any, float]] = []
        self._closed = False
        #: (space, options as JSON, "smallest" | "largest", objective) -> value; see the module.
        self.anchors: dict[tuple[str, str, str, str], float] = {}

    @property
    def idle(self) -> int:
        """How many started actors wait for a search now."""
        with self._lock:
            return len(self._idle)

    def acquire(self, n: int) -> tuple[list[Any], int]:
        """`n` actors for one search: warm ones first (most recently used first), then new ones (not
        configured; their start-up runs in the background). Returns (actors, how many were warm)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the evaluator pool is closed")
            warm = [actor for actor, _ in reversed(self._idle[-n:])] if n > 0 else []
            del self._idle[len(self._idle) - len(warm) :]
        return warm + [EvaluatorActor.remote() for _ in range(n - len(warm))], len(warm)

    def release(self, actors: list[Any]) -> None:
        """Take back actors that finished their last call; those beyond `keep` are ended."""
        now = time.monotonic()
        with self._lock:
            room = 0 if self._closed else max(0, self.keep - len(self._idle))
            kept, extra = actors[:room], actors[room:]
            self._idle.extend((actor, now) for actor in kept)
        for actor in kept:
            actor.reset.remote()
        kill_actors(extra)

    def trim(self) -> int:
        """End the actors idle for longer than `idle_s`; returns how many."""
        if self.idle_s is None:
            return 0
        deadline = time.monotonic() - self.idle_s
        with self._lock:
            old = [actor for actor, since in self._idle if since < deadline]
            self._idle = [(actor, since) for actor, since in self._idle if since >= deadline]
        kill_actors(old)
        return len(old)

    def close(self) -> None:
        """End every idle actor; actors released later are ended too."""
        with self._lock:
            self._closed = True
            idle, self._idle = [actor for actor, _ in self._idle], []
        kill_actors(idle)


def kill_actors(actors: list[Any]) -> None:
    """End these actors now (whatever they are doing)."""
    for actor in actors:
        # After a Ray shutdown the actors are gone already: nothing left to end.
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)


class _LocalPool:
    """Evaluations in this process, one at a time, in submission order (debugging, fast tests)."""

    def __init__(self, evaluator: SubnetEvaluator, capacity: int):
        self.capacity = capacity
        self._evaluator = evaluator
        self._queue: deque[Config] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Nothing to start: evaluations run in this process."""

    def submit(self, config: Config) -> None:
        self._queue.append(config)

    def next_done(self) -> tuple[Config, EvalOutcome]:
        config = self._queue.popleft()
        return config, self._evaluator.evaluate(config)

    def close(self) -> None:
        self._queue.clear()


class _RayPool:
    """`capacity` evaluator actors; each runs one evaluation at a time. With `warm` (an
    `EvaluatorPool`) the actors are taken from it and given back at `close`, else started for this
    run and ended at `close`. An actor that dies is replaced, and its config is evaluated again on
    whichever actor is free first (the replacement, or a surviving one), at most `retries` times; then
    the trial fails with the reason. A replacement may never start (its node died and the cluster has
    no CPU left for it): the surviving actors then take every evaluation, so the run still finishes."""

    def __init__(
        self,
        space_name: str,
        space_options: dict[str, Any],
        objectives: list[Objective],
        luts: Any,
        size: int,
        *,
        retries: int = EVALUATION_RETRIES,
        factory: EvaluatorFactory | None = None,
        warm: EvaluatorPool | None = None,
    ):
        self.capacity = size
        self.retries = retries
        self._warm = warm
        luts_ref = ray.put(dict(luts))
        self._args = (space_name, space_options, objectives, luts_ref, factory)
        self._idle: list[Any] = []
        # Per evaluation in flight: its actor, its config and which attempt it is (1, 2, ...).
        self._running: dict[ray.ObjectRef, tuple[Any, Config, int]] = {}
        # Actors being started or configured (see `start`), by the reference of that call.
        self._starting: dict[ray.ObjectRef, Any] = {}
        # Evaluations waiting for a free actor (retries after an actor died), with their attempt.
        self._waiting: list[tuple[Config, int]] = []
        self._lost_reason = "every worker died"
        if warm is None:
            self.warm_actors = 0
            for actor in (self._spawn() for _ in range(size)):
                self._starting[actor.ready.remote()] = actor
        else:
            actors, self.warm_actors = warm.acquire(size)
            for actor in actors:
                self._starting[actor.configure.remote(*self._args)] = actor

    def start(self) -> None:
        """Wait until every actor is ready for this run. A warm actor that died while idle is replaced
        by a fresh one; an actor that cannot start or load the evaluator fails the run now, with the
        worker's error."""
        try:
            while self._starting:
                ref, actor = next(iter(self._starting.items()))
                try:
                    ray.get(ref)
                except RayActorError:
                    if self._warm is None:
                        raise
                    del self._starting[ref]
                    kill_actors([actor])
                    actor = self._spawn()
                    self._starting[actor.ready.remote()] = actor
                    continue
                del self._starting[ref]
                self._idle.append(actor)
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> Any:
        return EvaluatorActor.remote(*self._args)

    @property
    def in_flight(self) -> int:
        return len(self._running) + len(self._waiting)

    def submit(self, config: Config) -> None:
        self._waiting.append((config, 1))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiting and self._idle:
            config, attempt = self._waiting.pop(0)
            actor = self._idle.pop()
            self._running[actor.evaluate.remote(config)] = (actor, config, attempt)

    def next_done(self) -> tuple[Config, EvalOutcome]:
        while True:
            if not self._running and not self._starting:
                # Every actor died and no replacement could start: what waits cannot be evaluated.
                config, attempt = self._waiting.pop(0)
                outcome = EvalOutcome(values={}, error=f"no evaluation worker left: {self._lost_reason}")
                self._attach(outcome, attempt)
                return config, outcome
            ready, _ = ray.wait([*self._running, *self._starting], num_returns=1)
            if ready[0] in self._starting:
                self._started(ready[0])
                continue
            actor, config, attempt = self._running.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except RayActorError as exc:
                kill_actors([actor])
                replacement = self._spawn()
                self._starting[replacement.ready.remote()] = replacement
                reason = _first_line(exc)
                if attempt <= self.retries:
                    logger.warning(
                        "evaluation worker died (attempt %d of %d); retrying on the next free one: %s",
                        attempt,
                        self.retries + 1,
                        reason,
                    )
                    self._waiting.append((config, attempt + 1))
                    self._dispatch()
                    continue
                logger.warning(
                    "evaluation worker died %d times on one config; trial failed: %s", attempt, reason
                )
                outcome = EvalOutcome(
                    values={},
                    error=f"the evaluation worker died on all {attempt} attempt(s) at this config: {reason}",
                )
                self._attach(outcome, attempt)
                return config, outcome
            except RayError as exc:
                outcome = EvalOutcome(
                    values={}, error=f"Ray could not run the evaluation: {_first_line(exc)}"
                )
            self._attach(outcome, attempt)
            self._idle.append(actor)
            self._dispatch()
            return config, outcome

    @staticmethod
    def _attach(outcome: EvalOutcome, attempt: int) -> None:
        if attempt > 1:
            outcome.metrics["attempts"] = attempt

    def _started(self, ref: ray.ObjectRef) -> None:
        """A replacement actor started (it joins the free ones), or died starting (another is spawned)."""
        actor = self._starting.pop(ref)
        try:
            ray.get(ref)
        except RayActorError as exc:
            # Not spawned again: a worker that cannot start would be replaced forever.
            self._lost_reason = f"a replacement worker died while starting: {_first_line(exc)}"
            logger.warning("%s", self._lost_reason)
            kill_actors([actor])
            return
        self._idle.append(actor)
        self._dispatch()

    def close(self) -> None:
        """Give the idle actors back to the warm pool (or end them); end those still busy."""
        busy = [*(actor for actor, _, _ in self._running.values()), *self._starting.values()]
        if self._warm is not None:
            self._warm.release(self._idle)
        else:
            kill_actors(self._idle)
        kill_actors(busy)
        self._idle.clear()
        self._running.clear()
        self._starting.clear()
        self._waiting.clear()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
