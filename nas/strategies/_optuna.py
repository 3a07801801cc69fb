"""Shared machinery of the strategies that drive an Optuna sampler through ask-and-tell."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState as OptunaTrialState

from nas._trial import Trial, TrialState
from nas.strategies._base import Strategy
from nas.strategies.params import ParamCheck, int_at_least
from search_spaces import Config, ConfigError, config_id

_Known = tuple[list[float] | None, dict[str, float]]


class OptunaStrategy(Strategy):
    """An Optuna sampler over the space's choices, each a categorical distribution.

    Subclasses name their sampler's params (`sampler_param_checks`) and build the sampler
    (`make_sampler`). Every subclass accepts `max_attempts` (default 32): how many Optuna proposals
    in a row may name known subnets before `ask` falls back to a uniformly random unseen config. A
    proposal naming a subnet already told is told at once with the known values, so the sampler sees
    it as evaluated; one naming a subnet still in flight is told as failed.

    Constraint violations go to Optuna as trial constraints (`Trial.set_constraint`, stored in
    system attrs under `constraints:<constraint>`), which Optuna's NSGA-II, NSGA-III and TPE read for
    constrained selection. Trials told without being asked (a resumed search) are added with
    `study.add_trial`; for the genetic samplers they are assigned to generations in the order told, so
    the evolution continues from them instead of starting over.
    """

    @classmethod
    def param_checks(cls) -> Mapping[str, ParamCheck]:
        return {**cls.sampler_param_checks(), "max_attempts": int_at_least(1)}

    def setup(self, params: Mapping[str, Any]) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.max_attempts: int = params.get("max_attempts", 32)
        self._sampler = self.make_sampler(params, self.seed)
        self.study = optuna.create_study(
            directions=[o.direction for o in self.objectives], sampler=self._sampler
        )
        choices = self.space.choice_map.values()
        self._distributions = {c.name: CategoricalDistribution(c.options) for c in choices}
        self._rng = np.random.default_rng(self.seed)
        self._pending: dict[str, optuna.Trial] = {}
        self._known: dict[str, _Known] = {}
        self._n_resumed_complete = 0

    @classmethod
    @abc.abstractmethod
    def sampler_param_checks(cls) -> Mapping[str, ParamCheck]:
        """The strategy's own params (besides `max_attempts`) and their checks."""

    @abc.abstractmethod
    def make_sampler(self, params: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
        """The sampler, from checked params."""

    @property
    def generation_size(self) -> int | None:
        """Trials per generation of a genetic sampler (resumed trials fill generations), else None."""
        return None

    # ------------------------------------------------------------------ ask
    def ask(self, n: int) -> list[Config]:
        out: list[Config] = []
        for _ in range(n):
            config = self._ask_one()
            if config is None:
                break
            out.append(config)
        return out

    def _ask_one(self) -> Config | None:
        for _ in range(self.max_attempts):
            trial = self.study.ask(self._distributions)
            try:
                config = self.space.canonicalize(trial.params)
            except ConfigError:
                self.study.tell(trial, state=OptunaTrialState.FAIL)
                continue
            cid = config_id(config)
            if cid in self._known:
                self._tell_optuna(trial, *self._known[cid])
            elif cid in self._pending:
                # The twin's values are not known yet; a failed trial keeps it out of the population.
                self.study.tell(trial, state=OptunaTrialState.FAIL)
            else:
                self._pending[cid] = trial
                return config
        return self._ask_random_unseen()

    def _ask_random_unseen(self) -> Config | None:
        for _ in range(1000):
            config = self.space.sample(self._rng)
            cid = config_id(config)
            if cid in self._known or cid in self._pending:
                continue
            self.study.enqueue_trial(self._to_params(config))
            trial = self.study.ask(self._distributions)
            # Enqueued params skip relative sampling, which is where NSGA-II/III assign a trial its
            # generation; reading `relative_params` assigns it, so the trial joins a population.
            _ = trial.relative_params
            self._pending[cid] = trial
            return config
        return None

    # ------------------------------------------------------------------ tell
    def tell(self, trials: Sequence[Trial]) -> None:
        for trial in trials:
            cid = trial.config_id
            known = self._outcome(trial)
            pending = self._pending.pop(cid, None)
            if pending is not None:
                self._tell_optuna(pending, *known)
            elif cid not in self._known:
                self._add_unasked(trial, *known)
            self._known.setdefault(cid, known)

    def _outcome(self, trial: Trial) -> _Known:
        if trial.state == TrialState.FAILED or not all(o.name in trial.values for o in self.objectives):
            return None, {}
        values = [float(trial.values[o.name]) for o in self.objectives]
        violations = {
            str(c): c.violation(trial.values) for c in self.constraints if c.objective.name in trial.values
        }
        return values, violations

    def _tell_optuna(
        self, trial: optuna.Trial, values: list[float] | None, violations: dict[str, float]
    ) -> None:
        if values is None:
            self.study.tell(trial, state=OptunaTrialState.FAIL)
            return
        for key, violation in violations.items():
            trial.set_constraint(key, violation)
        self.study.tell(trial, values)

    def _add_unasked(self, trial: Trial, values: list[float] | None, violations: dict[str, float]) -> None:
        params = self._to_params(trial.config)
        if values is None:
            frozen = optuna.trial.create_trial(
                state=OptunaTrialState.FAIL, params=params, distributions=self._distributions
            )
        else:
            system_attrs: dict[str, Any] = {}
            size = self.generation_size
            if size is not None and isinstance(self._sampler, optuna.samplers.BaseGASampler):
                # The sampler's own key (private in Optuna), so that `get_population` counts the trial.
                system_attrs[self._sampler._get_generation_key()] = self._n_resumed_complete // size
            self._n_resumed_complete += 1
            frozen = optuna.trial.create_trial(
                values=values,
                params=params,
                distributions=self._distributions,
                system_attrs=system_attrs,
                constraints=violations,
            )
        self.study.add_trial(frozen)

    def _to_params(self, config: Config) -> dict[str, Any]:
        """Optuna params of a canonical config: a zeroed (irrelevant) entry, which is no option of its
        choice, becomes the choice's largest option; that canonicalises to the same subnet."""
        params = {}
        for name, choice in self.space.choice_map.items():
            value = config.get(name, choice.options[-1])
            params[name] = value if value in choice.options else choice.options[-1]
        return params
