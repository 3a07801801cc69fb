"""The peers of `search_quality.py`, each run as its users run it (see that module's docstring).

A peer gets the problem (`space`, `objectives`, `constraints`, `feasible`) and a curve whose `add`
evaluates a canonical config and records it; every proposal is evaluated, duplicates included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

PEERS = ["optuna-tpe", "optuna-nsga2", "pymoo-nsga2"]


def run_peer(name: str, problem: Any, curve: Any, seed: int, evals: int) -> None:
    """Run peer `name` for `evals` evaluations on `problem`, recording each in `curve`."""
    if name == "pymoo-nsga2":
        _run_pymoo(problem, curve, seed, evals)
    else:
        _run_optuna(name, problem, curve, seed, evals)


def _violations(problem: Any, values: dict[str, float]) -> list[float]:
    return [c.violation(values) for c in problem.constraints]


def _run_optuna(name: str, problem: Any, curve: Any, seed: int, evals: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if name == "optuna-tpe":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    study = optuna.create_study(directions=[o.direction for o in problem.objectives], sampler=sampler)
    choices = list(problem.space.choice_map.values())

    def objective(trial: optuna.Trial) -> list[float]:
        raw = {c.name: trial.suggest_categorical(c.name, c.options) for c in choices}
        values = curve.add(problem.space.canonicalize(raw))
        for constraint in problem.constraints:  # Optuna 5's way (constraints_func is deprecated)
            trial.set_constraint(str(constraint), constraint.violation(values))
        return [values[o.name] for o in problem.objectives]

    study.optimize(objective, n_trials=evals)


def _run_pymoo(problem: Any, curve: Any, seed: int, evals: int) -> None:
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import ElementwiseProblem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    choices = list(problem.space.choice_map.values())

    class Subnets(ElementwiseProblem):
        def __init__(self) -> None:
            super().__init__(
                n_var=len(choices),
                n_obj=len(problem.objectives),
                n_ieq_constr=len(problem.constraints),
                xl=np.zeros(len(choices)),
                xu=np.array([len(c.options) - 1 for c in choices], dtype=float),
                vtype=int,
            )

        def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            raw = {c.name: c.options[round(v)] for c, v in zip(choices, x, strict=True)}
            values = curve.add(problem.space.canonicalize(raw))
            out["F"] = problem.point(values)
            if problem.constraints:
                out["G"] = _violations(problem, values)

    algorithm = NSGA2(
        sampling=IntegerRandomSampling(),
        crossover=SBX(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
        mutation=PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    minimize(Subnets(), algorithm, ("n_eval", evals), seed=seed, verbose=False)
