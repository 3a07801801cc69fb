"""Greedy one-step-at-a-time searches (`evolving`, `slimming`): probe actions, take the best, repeat.

A `StepwiseStrategy` keeps a *current* config. Each step it needs the values of the current config
and of the configs its candidate actions lead to; `ask` hands out those not yet known (all of them
at once, so a step's probes run in parallel), and once all are told it decides the step, records it
in `steps` and moves on. Values are cached by config id, so a probe seen before (or told from a store
on resume) is never asked again, and replaying the same seed and trials gives the same steps. A
failed probe is an action not taken. When no action helps, `ask` returns [] for good (`done`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nas._trial import Trial, TrialState
from nas.objectives import Objective, SpecError
from nas.strategies._base import Strategy
from search_spaces import Config, ConfigError, config_id


@dataclass(frozen=True)
class Action:
    """Set choice `choice` from `old` to `new` (one option up or down)."""

    choice: str
    old: Any
    new: Any

    def to_dict(self) -> dict[str, Any]:
        """The action as a step's log shows it: `{"choice", "from", "to"}`."""
        return {"choice": self.choice, "from": self.old, "to": self.new}


def rank_by_cost_per_gain(
    rows: list[dict[str, Any]],
    cost: Callable[[dict[str, Any]], float],
    gain: Callable[[dict[str, Any]], float],
) -> list[dict[str, Any]]:
    """`rows` ordered best first by `cost(row)` paid per unit of `gain(row)` (SnapFusion's quality lost
    per ms saved; EfficientFormerV2's quality lost per MES gained); every row must have a gain > 0.

    A plain ratio misorders the free rows: with `cost <= 0` (nothing lost, or quality gained), a
    larger gain makes the ratio *less* negative, so a removal saving 0.4 ms with a tiny quality gain
    would beat one saving 6.6 ms at no quality change. So a free row scores 0 and the free rows come
    first, the largest gain first; the others follow by cost per gain, smallest first. Ties go to
    the larger gain, then to the smaller cost, then to the order of `rows`. Each row gets its
    `score` (cost per gain, 0 when free)."""
    for row in rows:
        row["score"] = max(cost(row), 0.0) / gain(row)
    return sorted(rows, key=lambda r: (r["score"], -gain(r), cost(r)))


def ranking_log(ranked: list[dict[str, Any]], n_taken: int, rule: str) -> dict[str, Any]:
    """Why a step took its first `n_taken` ranked rows: the rule, their scores, their summed quality
    and latency changes, and the runner-up (the best row not taken; None when there was none)."""
    taken, runner_up = ranked[:n_taken], ranked[n_taken] if len(ranked) > n_taken else None
    out: dict[str, Any] = {"ranked_by": rule, "score": [r["score"] for r in taken]}
    for key in ("d_quality", "d_latency_ms"):
        if all(key in r for r in taken):
            out[key] = sum(r[key] for r in taken)
    out["runner_up"] = None
    if runner_up is not None:
        out["runner_up"] = {
            k: runner_up[k] for k in ("actions", "score", "d_quality", "d_latency_ms") if k in runner_up
        }
    return out


def _steps_to(
    target_ms: float,
    start: Config,
    probes: Sequence[Config],
    latency: Callable[[Config], float | None],
    actions_per_step: int,
) -> int | None:
    """About how many steps lead from `start` to `target_ms`: the distance over the mean saving of
    the first step's probes times the actions a step takes. None when the latencies are unknown or no
    probe saves time."""
    base = latency(start)
    if base is None:
        return None
    if base <= target_ms:
        return 0
    savings = [base - ms for ms in map(latency, probes) if ms is not None and ms < base]
    if not savings:
        return None
    return math.ceil((base - target_ms) / (actions_per_step * sum(savings) / len(savings)))


class StepwiseStrategy(Strategy):
    """Base of greedy stepwise strategies; see the module docstring."""

    def setup(self, params: Mapping[str, Any]) -> None:
        self.current: Config | None = None
        self.done = False
        #: One dict per decided step: what was probed, what was taken, and where it led.
        self.steps: list[dict[str, Any]] = []
        self._values: dict[str, dict[str, float] | None] = {}
        self._pending: set[str] = set()

    # ------------------------------------------------------------------ what subclasses decide
    @abc.abstractmethod
    def start(self) -> Config:
        """The config the search starts from (canonical)."""

    @abc.abstractmethod
    def candidates(self, current: Config, values: Mapping[str, float]) -> list[tuple[Action, ...]]:
        """The actions to probe from `current` (whose values are known); each a tuple of changes."""

    @abc.abstractmethod
    def decide(
        self,
        current: Config,
        values: Mapping[str, float],
        probes: list[tuple[tuple[Action, ...], dict[str, float]]],
    ) -> tuple[Config | None, dict[str, Any]]:
        """The next current config (None to stop) and the step's log entry, from the probed actions
        that succeeded and their values."""

    # ------------------------------------------------------------------ ask / tell
    def ask(self, n: int) -> list[Config]:
        out: list[Config] = []
        while not self.done and len(out) < n:
            needed = self._needed()
            missing = [c for c in needed if config_id(c) not in self._values]
            if not missing:
                self._advance()
                continue
            for config in missing:
                cid = config_id(config)
                if cid in self._pending or len(out) >= n:
                    continue
                self._pending.add(cid)
                out.append(config)
            break
        return out

    def tell(self, trials: Sequence[Trial]) -> None:
        for trial in trials:
            self._pending.discard(trial.config_id)
            ok = trial.state != TrialState.FAILED and all(o.name in trial.values for o in self.objectives)
            self._values.setdefault(trial.config_id, dict(trial.values) if ok else None)

    def step_log(self) -> list[dict[str, Any]]:
        return [dict(step) for step in self.steps]

    #: Actions one step takes together (SnapFusion's group of removals).
    actions_per_step = 1

    def budget_warnings(
        self, budget_trials: int, latency: Callable[[Config], float | None] | None = None
    ) -> list[str]:
        start = self.start()
        # The first step's probes, as the walk would ask them while over its target.
        planning = {o.name: float("inf") for o in self.objectives}
        planning.update({c.objective.name: float("inf") for c in self.constraints})
        probes = [config for _, config in self._probes(start, planning)]
        if not probes:
            return []
        # A step evaluates its probes, and, when it takes several actions together, the config they
        # lead to (the next step's current config); the walk starts by evaluating `start`.
        extra = 1 if self.actions_per_step > 1 else 0
        per_step = len(probes) + extra
        bought = (budget_trials - 1) // per_step
        if bought < 1:
            return [
                f"budget {budget_trials} trials buys no step of `{self.name}`: a step evaluates the "
                f"current config and its {len(probes)} candidate actions; give budget.trials at least "
                f"{len(probes) + 1}"
            ]
        target = self.latency_target()
        needed = None
        if target is not None and latency is not None:
            needed = _steps_to(target[1], start, probes, latency, self.actions_per_step)
        if needed is None or bought >= needed:
            return []
        return [
            f"budget {budget_trials} trials buys about {bought} step{'s' if bought > 1 else ''} of "
            f"{per_step} evaluations; `{self.name}` needs about {needed} steps to reach its latency target "
            f"of {target[1]:g} ms: about {1 + needed * per_step + extra} trials would reach it "
            "(set budget.trials, or a nearer target)"
        ]

    def warnings(self) -> list[str]:
        if self.steps:
            return []
        probes = "its candidate actions"
        needed = "more trials"
        if self.current is not None:
            values = self._values.get(config_id(self.current))
            if values is not None:
                n = len(self._probes(self.current, values))
                probes = f"its {n} candidate actions"
                needed = f"at least {n + 1} trials"
        return [
            f"the budget ended before `{self.name}` took a single step: a step evaluates the current "
            f"config and {probes}; give budget.trials {needed} (or use another strategy)"
        ]

    # ------------------------------------------------------------------ the walk
    def _needed(self) -> list[Config]:
        if self.current is None:
            self.current = self.start()
        values = self._values.get(config_id(self.current), {})
        if config_id(self.current) not in self._values:
            return [self.current]
        if values is None:
            return []
        return [config for _, config in self._probes(self.current, values)]

    def _probes(
        self, current: Config, values: Mapping[str, float]
    ) -> list[tuple[tuple[Action, ...], Config]]:
        out = []
        seen = {config_id(current)}
        for actions in self.candidates(current, values):
            config = self.apply(current, actions)
            if config is not None and config_id(config) not in seen:
                seen.add(config_id(config))
                out.append((actions, config))
        return out

    def apply(self, current: Config, actions: Sequence[Action]) -> Config | None:
        """`current` with `actions` applied and canonicalised; None when the space rejects the result."""
        changed = dict(current)
        for action in actions:
            changed[action.choice] = action.new
        try:
            return self.space.canonicalize(changed)
        except ConfigError:
            return None

    def _advance(self) -> None:
        assert self.current is not None
        values = self._values[config_id(self.current)]
        if values is None:
            self.steps.append(
                {"step": len(self.steps), "kind": "stop", "reason": "the current config failed"}
            )
            self.done = True
            return
        probes = []
        for actions, config in self._probes(self.current, values):
            probe_values = self._values.get(config_id(config))
            if probe_values is not None:
                probes.append((actions, probe_values))
        nxt, entry = self.decide(self.current, values, probes)
        entry = {"step": len(self.steps), "from": config_id(self.current), **entry}
        if nxt is None or config_id(nxt) == config_id(self.current):
            entry.setdefault("kind", "stop")
            self.done = True
        else:
            entry["to"] = config_id(nxt)
            self.current = nxt
        self.steps.append(entry)

    # ------------------------------------------------------------------ helpers for subclasses
    def objective_param(self, params: Mapping[str, Any], key: str, kind: str | None) -> Objective:
        """The objective named by strategy param `key` (default: the first objective, then constraint
        objective, of `kind`); it must be searched or constrained, since only those are evaluated."""
        known = {o.name: o for o in self.objectives}
        for c in self.constraints:
            known.setdefault(c.objective.name, c.objective)
        name = params.get(key)
        if name is None:
            found = [o for o in known.values() if kind is not None and o.kind == kind]
            if not found:
                raise SpecError(
                    f"strategy {self.name!r} needs strategy_params.{key}: the name of a {kind or 'an'} "
                    f"objective among the objectives or constraints {sorted(known)}",
                    field=f"strategy_params.{key}",
                    allowed=sorted(known),
                )
            return found[0]
        if not isinstance(name, str) or name not in known:
            raise SpecError(
                f"strategy parameter {key!r} of {self.name!r} must name an objective or constrained "
                f"objective of the search (only those are evaluated), got {name!r}",
                field=f"strategy_params.{key}",
                allowed=sorted(known),
            )
        return known[name]

    def start_param(self, value: Any, field: str, default: Config) -> Config:
        """A start config from a param: a reference config's name, a config dict, or `default`."""
        if value is None:
            return self.space.canonicalize(default)
        try:
            return self.space.canonicalize(value)
        except ConfigError as exc:
            raise SpecError(
                f"strategy parameter {field!r} of {self.name!r}: {exc}",
                field=f"strategy_params.{field}",
                allowed=sorted(self.space.reference_configs()),
            ) from None

    def step_option(self, config: Config, choice: str, delta: int) -> Action | None:
        """The action moving `choice` one option down (`delta=-1`) or up (+1), if there is one.
        Irrelevant (zeroed) entries have no action."""
        options = self.space.choice_map[choice].options
        value = config[choice]
        if value not in options or (value == 0 and 0 not in options):
            return None
        index = options.index(value) + delta
        if not 0 <= index < len(options):
            return None
        return Action(choice, value, options[index])
