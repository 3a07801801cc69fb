"""The `Strategy` contract (see the class docstring): turn observed trials into the next configs to
evaluate. Implementations are registered by name in `nas.strategies.registry`."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from nas._trial import Trial
from nas.objectives import Constraint, Objective
from nas.strategies.params import ParamCheck, check_strategy_params
from search_spaces import Config, SearchSpace


class Strategy(abc.ABC):
    """A search strategy: proposes subnets (`ask`) and learns from evaluated ones (`tell`).

    A strategy sees configs and objective values only; it knows nothing of storage, Ray or HTTP. The
    runner (`nas.runner.Runner`) owns the loop and is the only caller:

    - It builds one strategy per run with `make_strategy(name, space, objectives, constraints,
      seed=..., **strategy_params)`. The constructor checks the params against `param_checks`
      (unknown names and bad values raise `SpecError` naming `strategy_params.<name>`, which the
      service answers with a 422) and calls `setup`, where a strategy builds its state and may raise
      `SpecError` for params that contradict the search (e.g. a latency target without a latency
      objective).
    - When the run resumes a search, it first calls `tell` once with every stored trial, ordered by
      number (trials the strategy never asked for, failed and infeasible ones included).
    - Whenever fewer than `parallelism` evaluations are in flight (and budget remains), it calls
      `ask(n)` with the free slots: `1 <= n <= parallelism`. It canonicalises every config returned,
      skips (with a warning) any whose config id it has seen before, and starts evaluating the rest.
      When a call brings nothing new while nothing is in flight, it asks again, up to
      `nas.runner.MAX_EMPTY_ASKS` times in a row, and then ends the search as exhausted.
    - As each evaluation finishes, in completion order (not ask order), it stores the trial and then
      calls `tell([trial])`.
    - On a cancel, a deadline or the end of the budget it stops asking, and still tells the
      evaluations that were in flight as they finish.

    Both methods are called from one thread (the runner's), never concurrently: a strategy need not
    be thread-safe. An exception from either ends the search as `failed` with the exception's type
    and message as the search's error (`regularized_evolution.InfeasibleConstraintError` uses that to
    stop a search whose constraints no subnet meets); a `SpecError`'s message should say what to do.

    Determinism: the same `seed`, the same constructor arguments and the same sequence of `tell`s
    give the same `ask`s (strategies seed every random generator they use from `seed`; stepwise
    strategies use no randomness at all). A run with `parallelism` 1, or the in-process pool, is
    therefore reproducible; on Ray the completion order, and so the sequence of `tell`s, may vary.

    Subclasses set `name` (the registered name specs use), implement `ask` and `tell`, and name their
    params in `param_checks`; `self.space`, `self.objectives`, `self.constraints`, `self.seed` and
    `self.params` are set before `setup` runs.
    """

    #: The name specs and the registry use (`strategy: tpe`).
    name: ClassVar[str]

    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        *,
        seed: int = 0,
        **params: Any,
    ):
        self.space = space
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        self.seed = seed
        self.params = check_strategy_params(self.name, params, self.param_checks())
        self.setup(self.params)

    @classmethod
    def param_checks(cls) -> Mapping[str, ParamCheck]:
        """The `strategy_params` this strategy accepts, each with its check (none by default)."""
        return {}

    def setup(self, params: Mapping[str, Any]) -> None:  # noqa: B027 (a hook, empty by default)
        """Build the strategy's state from its checked params (the last step of the constructor)."""

    @abc.abstractmethod
    def ask(self, n: int) -> list[Config]:
        """Up to `n` (>= 1) configs to evaluate next.

        Every config is a canonical config of `self.space` (`space.canonicalize(config) == config`)
        that has been neither asked nor told before: a strategy never proposes the same subnet twice
        (by config id), also across a resume. Returning fewer than `n`, or none, is allowed: when
        the strategy waits for evaluations in flight before it can decide (a stepwise strategy
        between steps), or when it has nothing left to propose (the space, or its walk, is
        exhausted; from then on it keeps returning `[]`). It may raise to end the search (see the
        class docstring).
        """

    @abc.abstractmethod
    def tell(self, trials: Sequence[Trial]) -> None:
        """Learn from finished trials (in any order; each config id at most once).

        A trial is either `COMPLETE`, with `values` for every objective and for every constrained
        objective (by objective name) and `feasible` False when a constraint is violated (such a
        trial counts as evaluated; whether it may breed or join a front is the strategy's choice,
        and the runner keeps it off the front), or `FAILED`, with empty `values` and the `error`
        (the subnet could not be priced or built, a proxy failed, or its evaluation worker died on
        every retry). Trials the strategy never asked for (restored from a store on resume) must
        be accepted, and their configs are then never asked. Returns nothing; raising ends the
        search (see the class docstring).
        """

    def step_log(self) -> list[dict[str, Any]]:
        """The decisions a stepwise strategy took, one JSON-able dict per step (what it probed, what it
        took and why); empty for strategies that do not walk in steps. Stored with the search."""
        return []

    def latency_target(self) -> tuple[str, float] | None:
        """The latency objective and the target (ms) the strategy heads for, if it has one (a
        stepwise strategy's `target_ms`); None by default."""
        return None

    def budget_warnings(
        self, budget_trials: int, latency: Callable[[Config], float | None] | None = None
    ) -> list[str]:
        """What a budget of `budget_trials` will likely not achieve, said before the search runs
        (none by default). `latency` estimates a config's latency objective in ms (None where it
        cannot); a stepwise strategy uses it to say how many trials would reach its latency target."""
        return []

    def warnings(self) -> list[str]:
        """What a user should know about a run that ended without an error, asked by the runner once
        when the budget, the deadline or exhaustion ended it (none by default). A stepwise strategy
        says here that the budget ended before it took a single step."""
        return []
