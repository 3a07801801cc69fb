"""Regularized (aging) evolution, multi-objective and constraint-aware."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas._trial import Trial, TrialState
from nas.objectives import SpecError
from nas.strategies._base import Strategy
from nas.strategies.params import ParamCheck, int_at_least, probability
from nas.strategies.registry import register_strategy
from search_spaces import Config, config_id


class InfeasibleConstraintError(SpecError):
    """No trial satisfies the constraints and the search has stopped getting closer: the bounds are
    (very likely) out of the space's reach. The runner turns it into a failed search with this text."""


@dataclass
class _Member:
    config: Config
    point: np.ndarray  # objective values in minimisation form
    violation: float  # sum of positive constraint violations; 0 when feasible


@register_strategy
class EvolutionStrategy(Strategy):
    """Regularized evolution (Real et al., 2019) as used by Once-for-All's latency-constrained search.

    The population is the `population_size` most recent complete trials (aging: the oldest leaves
    when a new one arrives, whatever its fitness). Until the population is full, `ask` returns random
    unseen configs. Then each child comes from a tournament of `sample_size` members drawn from the
    population: with probability `crossover_prob` the uniform crossover of two tournament winners,
    else a copy of one winner, then mutated (`space.mutate`, each choice resampled with probability
    `mutation_prob`, at least one always). A tournament prefers the smallest total constraint
    violation and, among equals, the member best under a Chebyshev scalarisation of the objectives
    (normalised over the population) with weights drawn afresh per tournament, so successive
    tournaments pull towards different parts of the front.

    Without unbounded resampling: a child naming a known subnet is retried at most `max_attempts`
    times, then a random unseen config is drawn (at most 1000 tries), then `ask` returns fewer.
    With constraints: once `infeasible_patience` complete trials have been told, none feasible, and the
    smallest violation has not improved for `infeasible_patience` trials, `ask` raises
    `InfeasibleConstraintError` naming the constraints and the closest trial.

    Params (defaults): `population_size` (32), `sample_size` (8), `crossover_prob` (0.5),
    `mutation_prob` (0.1), `max_attempts` (32), `infeasible_patience` (100).
    """

    name = "evolution"

    @classmethod
    def param_checks(cls) -> Mapping[str, ParamCheck]:
        return {
            "population_size": int_at_least(2),
            "sample_size": int_at_least(1),
            "crossover_prob": probability,
            "mutation_prob": probability,
            "max_attempts": int_at_least(1),
            "infeasible_patience": int_at_least(1),
        }

    def setup(self, params: Mapping[str, Any]) -> None:
        self.population_size: int = params.get("population_size", 32)
        self.sample_size: int = min(params.get("sample_size", 8), self.population_size)
        self.crossover_prob: float = params.get("crossover_prob", 0.5)
        self.mutation_prob: float = params.get("mutation_prob", 0.1)
        self.max_attempts: int = params.get("max_attempts", 32)
        self.infeasible_patience: int = params.get("infeasible_patience", 100)
        self._rng = np.random.default_rng(self.seed)
        self.population: deque[_Member] = deque(maxlen=self.population_size)
        self._seen: set[str] = set()
        self._n_complete = 0
        self._n_feasible = 0
        self._closest: tuple[float, dict[str, float]] | None = None
        self._since_closer = 0

    # ------------------------------------------------------------------ ask
    def ask(self, n: int) -> list[Config]:
        self._check_feasibility()
        out: list[Config] = []
        for _ in range(n):
            config = self._child() if len(self.population) >= self.population_size else None
            if config is None:
                config = self._random_unseen()
            if config is None:
                break
            self._seen.add(config_id(config))
            out.append(config)
        return out

    def _child(self) -> Config | None:
        for _ in range(self.max_attempts):
            parent = self._tournament()
            if self._rng.random() < self.crossover_prob:
                parent = self.space.crossover(parent, self._tournament(), self._rng)
            child = self.space.mutate(parent, self._rng, prob=self.mutation_prob)
            if config_id(child) not in self._seen:
                return child
        return None

    def _random_unseen(self) -> Config | None:
        for _ in range(1000):
            config = self.space.sample(self._rng)
            if config_id(config) not in self._seen:
                return config
        return None

    def _tournament(self) -> Config:
        members = list(self.population)
        picks = self._rng.choice(len(members), size=self.sample_size, replace=False)
        contestants = [members[int(i)] for i in picks]
        least = min(m.violation for m in contestants)
        contestants = [m for m in contestants if m.violation == least]
        points = np.array([m.point for m in members])
        lo, hi = points.min(axis=0), points.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        weights = self._rng.dirichlet(np.ones(len(lo)))
        scores = [float(np.max(weights * (m.point - lo) / span)) for m in contestants]
        return contestants[int(np.argmin(scores))].config

    def _check_feasibility(self) -> None:
        if (
            not self.constraints
            or self._n_feasible
            or self._n_complete < self.infeasible_patience
            or self._since_closer < self.infeasible_patience
            or self._closest is None
        ):
            return
        violation, values = self._closest
        shown = {c.objective.name: values.get(c.objective.name) for c in self.constraints}
        raise InfeasibleConstraintError(
            f"no trial satisfied the constraints {[str(c) for c in self.constraints]} in "
            f"{self._n_complete} evaluations, and the smallest total violation ({violation:g}, at "
            f"{shown}) has not improved for {self._since_closer}; the bounds look out of this space's "
            "reach: loosen them",
            field="constraints",
            allowed=f"bounds the space can meet, e.g. near {shown}",
        )

    def exclude(self, config_ids: Iterable[str]) -> None:
        """Never propose these configs (asked by another strategy that shares the search, see
        `tpe_evolution`): they count as seen, without values."""
        self._seen.update(config_ids)

    # ------------------------------------------------------------------ tell
    def tell(self, trials: Sequence[Trial]) -> None:
        for trial in trials:
            self._seen.add(trial.config_id)
            if trial.state == TrialState.FAILED or not all(o.name in trial.values for o in self.objectives):
                continue
            violation = sum(
                max(0.0, c.violation(trial.values))
                for c in self.constraints
                if c.objective.name in trial.values
            )
            point = np.array([o.to_min(float(trial.values[o.name])) for o in self.objectives])
            self.population.append(_Member(dict(trial.config), point, violation))
            self._n_complete += 1
            if violation <= 0:
                self._n_feasible += 1
            if self._closest is None or violation < self._closest[0]:
                self._closest = (violation, dict(trial.values))
                self._since_closer = 0
            else:
                self._since_closer += 1
