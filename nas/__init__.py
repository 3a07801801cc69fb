"""How to search: objectives, strategies, Pareto fronts, the runner. Depends on `search_spaces`
and `latency_lut`; never on `services` (it defines `TrialStore`, which `services` implements)."""

from nas._trial import Trial, TrialState, utcnow
from nas.evaluate import EvalOutcome, SubnetEvaluator
from nas.objectives import Constraint, Objective, SpecError, parse_constraint, parse_objective
from nas.pareto import Normalizer, ParetoFront, hypervolume, non_dominated
from nas.spec import Budget, ResolvedSpec, SearchSpec, resolve
from nas.trial_store import DuplicateTrialError, MemoryTrialStore, TrialStore

__all__ = [
    "Budget",
    "Constraint",
    "DuplicateTrialError",
    "EvalOutcome",
    "MemoryTrialStore",
    "Normalizer",
    "Objective",
    "ParetoFront",
    "ResolvedSpec",
    "SearchSpec",
    "SpecError",
    "SubnetEvaluator",
    "Trial",
    "TrialState",
    "TrialStore",
    "hypervolume",
    "non_dominated",
    "parse_constraint",
    "parse_objective",
    "resolve",
    "utcnow",
]
