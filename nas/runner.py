"""The search loop: ask the strategy, evaluate on a pool of Ray actors, record, tell, keep the front.

`Runner.run` keeps `budget.parallelism` evaluations in flight, records every finished trial in the
`TrialStore` at once (numbers 0, 1, 2, ... without gaps, also across restarts), tells the strategy,
updates the Pareto front incrementally and reports progress. A restarted runner resumes from the
stored trials and never evaluates a stored config id again.

Failure of an evaluation worker: a Ray actor that dies while evaluating (killed, out of memory, a crash
in native code, its node lost) is replaced by a fresh one and the same config is evaluated again on
the next free actor, at most `evaluation_retries` times; after that the trial is recorded `failed`
with the reason, and the search goes on. A store or callback that raises `RunAbandoned` (the
service's scheduler lost its lease on the search) ends the run at once without recording anything more.

Infeasible trials (a constraint violated) are stored with `feasible=False` and never join the front.

How a run ends says what happened (`RunResult`): a run whose every trial failed is `failed`, with the
most common reason as its error; a run that ends without an error but with no feasible trial, no trial
at all, or (for a stepwise strategy) before the strategy took one step is `succeeded` with `warnings`
that say so.
The reported hypervolume is `nas.pareto.normalized_hypervolume` of the front: normalised per
objective by the space's smallest and largest subnets (evaluated once in-process, not stored), values
below those bounds clipped, reference point 1.1, so it lies in [0, 1.1 ** d] and searches of one space
and objectives compare. Each trial is stored with the hypervolume after it (`metrics["hypervolume"]`),
which the dashboard plots, so its curve ends at the search's figure. If either anchor cannot be
evaluated, the bounds are the per-objective minimum and maximum over the complete trials seen so far
(nothing to clip; they move as trials arrive, so no per-trial figure is stored then).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray

from nas._trial import Trial, TrialState
from nas.evaluate import EvalOutcome, LatencySource, SubnetEvaluator
from nas.evaluator_pool import (
    EVALUATION_RETRIES,
    EvaluatorFactory,
    EvaluatorPool,
    _LocalPool,
    _RayPool,
)
from nas.pareto import HV_REFERENCE, Normalizer, ParetoFront, normalized_hypervolume
from nas.proxies import DEFAULT_SUPERNET_DIR
from nas.spec import ResolvedSpec
from nas.strategies import make_strategy
from nas.trial_store import TrialStore
from search_spaces import Config, config_id

logger = logging.getLogger(__name__)

#: Consecutive asks that bring only configs already seen before the strategy counts as exhausted (a
#: seeded strategy resumed from stored trials may first propose again what it proposed before).
MAX_EMPTY_ASKS = 20


class RunAbandoned(Exception):
    """Raised by a `TrialStore` or a callback to end a run at once, recording nothing more (e.g. the
    process no longer owns the search); the run ends with state `abandoned`."""


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Idempotent: connect to `address` (an existing cluster, e.g. "ray://host:10001" or "auto") or
    start a local Ray (include_dashboard=False, log_to_driver=False) if none is initialised.

    `num_cpus` sizes a local Ray only; an existing cluster brings its own resources.
    Call it from a thread that lives as long as Ray is needed (the main thread, a service's scheduler
    loop): the processes of a local Ray are killed when the thread that started them ends.
    """
    if ray.is_initialized():
        return
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False)
    else:
        logger.info("starting a local Ray (num_cpus=%s)", num_cpus)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


@dataclass
class RunProgress:
    """Where a running search stands, after each recorded trial."""

    n_trials: int
    n_failed: int
    budget_trials: int
    front_size: int
    hypervolume: float | None
    elapsed_s: float


@dataclass
class RunResult:
    """How a run ended. `front` lists trial numbers; `error` is set when `state` is `failed` (and says
    why for `abandoned`); `warnings` are what a `succeeded` run did not achieve (see the module
    docstring)."""

    state: Literal["succeeded", "cancelled", "failed", "abandoned"]
    n_trials: int
    front: list[int]
    hypervolume: float | None
    error: str | None
    elapsed_s: float
    warnings: list[str] = field(default_factory=list)
    #: The strategy's decisions (`Strategy.step_log`): stepwise strategies only.
    steps: list[dict[str, Any]] = field(default_factory=list)


#: Numbers and quoted names in a trial's error: masked to group errors that differ only in those.
_ERROR_DETAILS = re.compile(r"'[^']*'|\"[^\"]*\"|\d+(?:\.\d+)?")


def failure_reason(errors: Counter[str], examples: Mapping[str, str], n_trials: int) -> str:
    """The error of a run whose `n_trials` trials all failed: the most common reason (errors grouped
    up to their numbers and quoted names, `errors` counted by `error_group`) with one example."""
    group, count = errors.most_common(1)[0]
    return f"all {n_trials} trials failed; the most common reason ({count} of {n_trials}): {examples[group]}"


def error_group(error: str) -> str:
    """The group `failure_reason` counts an error in."""
    return _ERROR_DETAILS.sub("#", error)


class Runner:
    """Runs (or resumes) one search; see the module docstring and `run`.

    `luts` maps each device of the spec to its latency predictor (`latency_lut.LatencyPredictor`, as
    the service selects it per device and space) or to a plain table snapshot (block key -> ms, summed
    as `block_sum`). Construction
    validates the strategy and its params (`SpecError`); `run` itself never raises.
    `evaluator_factory` builds the evaluators of the Ray actors (default `SubnetEvaluator` with
    `supernet_dir`, where the `supernet_*` proxies look for the space's trained supernet);
    `evaluation_retries` bounds the re-runs of a config whose actor died. `warm` (an
    `EvaluatorPool`, e.g. the service's, kept across searches) lends the run started actors and the
    anchor values it has seen, and takes the actors back at the end.
    """

    def __init__(
        self,
        resolved: ResolvedSpec,
        search_id: str,
        store: TrialStore,
        luts: Mapping[str, LatencySource],
        *,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[RunProgress], None] | None = None,
        use_ray: bool = True,
        elapsed_before_s: float = 0.0,
        evaluation_retries: int = EVALUATION_RETRIES,
        evaluator_factory: EvaluatorFactory | None = None,
        supernet_dir: str | Path = DEFAULT_SUPERNET_DIR,
        warm: EvaluatorPool | None = None,
    ):
        self.resolved = resolved
        self.warm = warm
        self.search_id = search_id
        self.store = store
        self.luts = dict(luts)
        self.should_stop = should_stop
        self.on_progress = on_progress
        self.use_ray = use_ray
        self.elapsed_before_s = elapsed_before_s
        self.evaluation_retries = evaluation_retries
        self.supernet_dir = Path(supernet_dir)
        self.evaluator_factory = evaluator_factory or functools.partial(
            SubnetEvaluator, supernet_dir=self.supernet_dir
        )
        spec = resolved.spec
        self.budget = spec.budget
        self.objectives = resolved.objectives
        # Constraints may bound objectives that are not searched; evaluation computes those too.
        evaluated = [*resolved.objectives, *(c.objective for c in resolved.constraints)]
        self.eval_objectives = list(dict.fromkeys(evaluated))
        self.strategy = make_strategy(
            spec.strategy,
            resolved.space,
            resolved.objectives,
            resolved.constraints,
            seed=spec.seed,
            **spec.strategy_params,
        )
        self._start = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        """Forget what a previous `run` learned: every run starts from the store."""
        self.front = ParetoFront(len(self.objectives))
        self._normalizer: Normalizer | None = None
        # Per-objective min and max over complete trials: the bounds when an anchor failed.
        self._seen_lo: np.ndarray | None = None
        self._seen_hi: np.ndarray | None = None
        self._seen: set[str] = set()
        self._n_trials = 0
        self._n_failed = 0
        self._n_feasible = 0
        self._failures: Counter[str] = Counter()
        self._failure_examples: dict[str, str] = {}
        self._next_number = 0
        self._hypervolume: float | None = None

    # ------------------------------------------------------------------ public
    def run(self) -> RunResult:
        """Run until the budget, the deadline, exhaustion of the strategy or a cancel; never raises."""
        self._start = time.monotonic()
        self._reset()
        pool: _LocalPool | _RayPool | None = None
        try:
            local = SubnetEvaluator(
                self.resolved.space.name,
                self.resolved.space.options,
                self.eval_objectives,
                self.luts,
                space=self.resolved.space,
                supernet_dir=self.supernet_dir,
            )
            self._restore()
            # The actors start (or load this search) while the anchors are evaluated here.
            pool = self._make_pool(local)
            self._set_bounds()
            pool.start()
            state = self._loop(pool)
            result = self._outcome(state)
        except RunAbandoned as exc:
            logger.warning("search %s abandoned: %s", self.search_id, exc)
            result = self._result("abandoned", str(exc) or "abandoned")
        except Exception as exc:
            logger.exception("search %s failed", self.search_id)
            result = self._result("failed", f"{type(exc).__name__}: {exc}")
        finally:
            if pool is not None:
                pool.close()
        logger.info(
            "search %s %s: %d trials, front %d, hypervolume %s, %.1fs",
            self.search_id,
            result.state,
            result.n_trials,
            len(result.front),
            result.hypervolume,
            result.elapsed_s,
        )
        return result

    # ------------------------------------------------------------------ set-up
    def _restore(self) -> None:
        stored = self.store.trials(self.search_id)
        if not stored:
            return
        logger.info("search %s: resuming from %d stored trials", self.search_id, len(stored))
        for trial in stored:
            self._observe(trial)
        self._next_number = max(t.number for t in stored) + 1
        self.strategy.tell(stored)
        self.store.set_pareto(self.search_id, self.front.members)
        self._hypervolume = self._compute_hypervolume()

    def _set_bounds(self) -> None:
        space = self.resolved.space
        options = json.dumps(dict(space.options), sort_keys=True, default=str)
        known = self.warm.anchors if self.warm is not None else {}
        anchors = []
        for name, config in (("smallest", space.smallest()), ("largest", space.largest())):
            keys = {o.name: (space.name, options, name, o.name) for o in self.objectives}
            values = {o.name: known[keys[o.name]] for o in self.objectives if keys[o.name] in known}
            missing = [o for o in self.objectives if o.name not in values]
            if missing:
                evaluator = SubnetEvaluator(
                    space.name, space.options, missing, self.luts, space=space, supernet_dir=self.supernet_dir
                )
                outcome = evaluator.evaluate(config)
                if outcome.error is not None:
                    logger.warning(
                        "search %s: the %s subnet could not be evaluated (%s); hypervolume bounds will "
                        "come from the trials seen so far",
                        self.search_id,
                        name,
                        outcome.error,
                    )
                    return
                values.update(outcome.values)
                if self.warm is not None:
                    # Latency follows the device's table, which changes; supernet proxies follow the
                    # checkpoint on disk: only the rest is fixed by the space, options and objective.
                    for objective in missing:
                        if objective.device is None and not objective.name.startswith("proxy:supernet_"):
                            known[keys[objective.name]] = float(outcome.values[objective.name])
            anchors.append(self._min_point(values))
        self._normalizer = Normalizer.from_points(anchors)
        self._hypervolume = self._compute_hypervolume()

    def _make_pool(self, local: SubnetEvaluator) -> _LocalPool | _RayPool:
        parallelism = self.budget.parallelism
        if not self.use_ray:
            return _LocalPool(local, parallelism)
        init_ray()
        cpus = int(ray.cluster_resources().get("CPU", 0))
        size = min(parallelism, max(1, cpus))
        if size < parallelism:
            # Actors hold their CPU for life: more than the cluster has would wait forever.
            logger.warning(
                "search %s: parallelism %d exceeds the %d CPUs of the Ray cluster; using %d actors",
                self.search_id,
                parallelism,
                cpus,
                size,
            )
        space = self.resolved.space
        pool = _RayPool(
            space.name,
            dict(space.options),
            self.eval_objectives,
            self.luts,
            size,
            retries=self.evaluation_retries,
            factory=self.evaluator_factory,
            warm=self.warm,
        )
        logger.info("search %s: %d evaluator actors, %d of them warm", self.search_id, size, pool.warm_actors)
        return pool

    # ------------------------------------------------------------------ loop
    def _loop(self, pool: _LocalPool | _RayPool) -> Literal["succeeded", "cancelled"]:
        cancelled = False
        empty_asks = 0
        while True:
            if not cancelled and self.should_stop is not None and self.should_stop():
                logger.info(
                    "search %s: cancel requested; awaiting %d evaluations", self.search_id, pool.in_flight
                )
                cancelled = True
            if not cancelled and not self._deadline_passed():
                free = min(pool.capacity, self.budget.trials - self._n_trials) - pool.in_flight
                if free > 0:
                    submitted = pool.in_flight
                    for config in self.strategy.ask(free):
                        canonical = self.resolved.space.canonicalize(config)
                        cid = config_id(canonical)
                        if cid in self._seen:
                            logger.warning(
                                "search %s: strategy repeated config %s; skipped", self.search_id, cid
                            )
                            continue
                        self._seen.add(cid)
                        pool.submit(canonical)
                    if pool.in_flight > submitted:
                        empty_asks = 0
                    elif pool.in_flight == 0 and empty_asks < MAX_EMPTY_ASKS:
                        # Only repeats and nothing in flight: ask again before calling it exhausted.
                        empty_asks += 1
                        continue
            if pool.in_flight == 0:
                return "cancelled" if cancelled else "succeeded"
            config, outcome = pool.next_done()
            self._record(config, outcome)

    def _deadline_passed(self) -> bool:
        return self.budget.seconds is not None and self._elapsed() >= self.budget.seconds

    def _record(self, config: Config, outcome: EvalOutcome) -> None:
        number = self._next_number
        if outcome.error is not None:
            trial = Trial(
                number=number,
                config=config,
                config_id=config_id(config),
                state=TrialState.FAILED,
                metrics=outcome.metrics,
                error=outcome.error,
                duration_s=outcome.duration_s,
            )
        else:
            trial = Trial(
                number=number,
                config=config,
                config_id=config_id(config),
                values=outcome.values,
                feasible=all(c.satisfied(outcome.values) for c in self.resolved.constraints),
                metrics=outcome.metrics,
                duration_s=outcome.duration_s,
            )
        joined = self._observe(trial)
        self._hypervolume = self._compute_hypervolume()
        if self._normalizer is not None and len(self.objectives) <= 3:
            # The curve the dashboard plots (0 while no trial is on the front).
            trial.metrics["hypervolume"] = self._hypervolume or 0.0
        self.store.add(self.search_id, trial)
        self._next_number += 1
        self.strategy.tell([trial])
        if joined:
            self.store.set_pareto(self.search_id, self.front.members)
        if trial.state == TrialState.FAILED:
            logger.debug("search %s: trial %d failed: %s", self.search_id, number, trial.error)
        every = max(1, self.budget.trials // 20)
        if self._n_trials % every == 0 or self._n_trials == self.budget.trials:
            logger.info(
                "search %s: %d/%d trials (%d failed), front %d, hypervolume %s",
                self.search_id,
                self._n_trials,
                self.budget.trials,
                self._n_failed,
                len(self.front),
                self._hypervolume,
            )
        if self.on_progress is not None:
            self.on_progress(
                RunProgress(
                    n_trials=self._n_trials,
                    n_failed=self._n_failed,
                    budget_trials=self.budget.trials,
                    front_size=len(self.front),
                    hypervolume=self._hypervolume,
                    elapsed_s=self._elapsed(),
                )
            )

    def _observe(self, trial: Trial) -> bool:
        """Count a recorded trial; returns True if it joined the front."""
        self._n_trials += 1
        self._seen.add(trial.config_id)
        if trial.state == TrialState.FAILED:
            self._n_failed += 1
            group = error_group(trial.error or "no error message")
            self._failures[group] += 1
            self._failure_examples.setdefault(group, trial.error or "no error message")
            return False
        self._n_feasible += trial.feasible
        if not all(o.name in trial.values for o in self.objectives):
            return False
        point = self._min_point(trial.values)
        if self._seen_lo is None or self._seen_hi is None:
            self._seen_lo, self._seen_hi = np.array(point), np.array(point)
        else:
            self._seen_lo, self._seen_hi = np.minimum(self._seen_lo, point), np.maximum(self._seen_hi, point)
        return trial.feasible and self.front.add(trial.number, point)

    # ------------------------------------------------------------------ helpers
    def _min_point(self, values: Mapping[str, float]) -> list[float]:
        return [o.to_min(float(values[o.name])) for o in self.objectives]

    def _compute_hypervolume(self) -> float | None:
        if len(self.front) == 0 or len(self.objectives) > 3:
            return None
        normalizer = self._normalizer or Normalizer(self._seen_lo, self._seen_hi)
        return normalized_hypervolume(self.front.points, normalizer, HV_REFERENCE)

    def _elapsed(self) -> float:
        return self.elapsed_before_s + (time.monotonic() - self._start)

    def _outcome(self, state: Literal["succeeded", "cancelled"]) -> RunResult:
        """The result of a loop that ended: a cancel stays `cancelled`; otherwise `failed` when every
        trial failed, else `succeeded` with its warnings."""
        if state != "succeeded":
            return self._result(state, None)
        if self._n_trials and self._n_failed == self._n_trials:
            reason = failure_reason(self._failures, self._failure_examples, self._n_trials)
            return self._result("failed", reason)
        warnings = []
        if self._n_trials == 0:
            warnings.append(
                "no trial was evaluated: the strategy proposed nothing new, or the deadline passed first"
            )
        elif self.resolved.constraints and self._n_feasible == 0:
            bounds = ", ".join(str(c) for c in self.resolved.constraints)
            complete = self._n_trials - self._n_failed
            warnings.append(
                f"no feasible trial: none of the {complete} evaluated trials met the constraints ({bounds}); "
                "the front is empty: loosen the constraints or search more"
            )
        warnings.extend(self.strategy.warnings())
        return self._result(state, None, warnings)

    def _result(
        self,
        state: Literal["succeeded", "cancelled", "failed", "abandoned"],
        error: str | None,
        warnings: list[str] | None = None,
    ) -> RunResult:
        return RunResult(
            state=state,
            n_trials=self._n_trials,
            front=self.front.members,
            hypervolume=self._hypervolume,
            error=error,
            elapsed_s=self._elapsed(),
            warnings=warnings or [],
            steps=self.strategy.step_log(),
        )
