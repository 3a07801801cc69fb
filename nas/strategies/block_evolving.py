"""SnapFusion's architecture evolving: remove the cheapest-to-lose blocks until a latency target is
met, then add copies of the most valuable blocks while they fit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nas.objectives import SpecError, upper_bound
from nas.strategies._stepwise import Action, StepwiseStrategy, rank_by_cost_per_gain, ranking_log
from nas.strategies.params import ParamCheck, config_or_reference, int_at_least, positive_number
from nas.strategies.registry import register_strategy
from search_spaces import Config

#: Choices whose value counts blocks (the last part of the choice name): the removable blocks.
BLOCK_COUNT_SUFFIXES = ("resnets", "transformers", "transformer_depth", "depth", "vit", "temporal_count")


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("a non-empty list of choice names")
    return value


@register_strategy
class EvolvingStrategy(StepwiseStrategy):
    """Architecture evolving (SnapFusion, Li et al. 2023, section 3.2), one step per decision.

    From the `base` config, every *action* moves one block-count choice (default: choices whose
    name ends in one of `BLOCK_COUNT_SUFFIXES`; `choices` overrides) one option down (removing a
    block) or up (adding a copy). Each step probes the actions from the current config and reads
    their quality change (the `quality` objective, loss counted in its own direction) and latency
    change (the `latency` objective):
    - while the current latency exceeds `target_ms`, take the `group_size` removals with the
      smallest quality loss per millisecond saved, together; removals that lose no quality are free
      and rank first, the largest saving first (`rank_by_cost_per_gain`);
    - once the target is met, take the single action (addition or removal) with the largest quality
      gain per millisecond it costs among those that keep the latency within the target (a gain
      that also saves time is free and ranks first, the largest gain first);
    - stop when no action helps. Every decision is in `steps`: the probed actions with their deltas,
      the actions taken with their score and the runner-up, and the latency and quality where the
      step led.

    Params: `quality` (objective name; default the first `proxy:` objective), `latency` (default the
    first `latency:` objective), `target_ms` (default the bound of a `<latency> <= X` constraint),
    `base` (reference config name or config; default `sd15` where the space has it, else the
    largest subnet), `group_size` (2), `choices` (list of choice names).
    """

    name = "evolving"

    @classmethod
    def param_checks(cls) -> Mapping[str, ParamCheck]:
        return {
            "quality": str,
            "latency": str,
            "target_ms": positive_number,
            "base": config_or_reference,
            "group_size": int_at_least(1),
            "choices": _names,
        }

    def setup(self, params: Mapping[str, Any]) -> None:
        super().setup(params)
        space = self.space
        self.quality = self.objective_param(params, "quality", "proxy")
        self.latency = self.objective_param(params, "latency", "latency")
        self.target_ms: float = (
            params["target_ms"] if "target_ms" in params else self._target_from_constraints()
        )
        self.group_size: int = params.get("group_size", 2)
        self.actions_per_step = self.group_size
        refs = space.reference_configs()
        self._base = self.start_param(
            params.get("base"), "base", refs["sd15"] if "sd15" in refs else space.largest()
        )
        self.choices = params.get("choices") or [
            name for name in space.choice_map if name.rsplit(".", 1)[-1] in BLOCK_COUNT_SUFFIXES
        ]
        if not self.choices:
            raise SpecError(
                f"strategy 'evolving' needs block-count choices (…{'/'.join(BLOCK_COUNT_SUFFIXES)}); "
                f"space {space.name!r} has none",
                field="space",
            )
        unknown = [c for c in self.choices if c not in space.choice_map]
        if unknown:
            raise SpecError(
                f"strategy parameter 'choices' of 'evolving' names unknown choices {unknown} (or the space "
                "has no block-count choices)",
                field="strategy_params.choices",
                allowed=list(space.choice_map),
            )

    def _target_from_constraints(self) -> float:
        bound = upper_bound(self.constraints, self.latency.name)
        if bound is not None:
            return bound
        raise SpecError(
            f"strategy 'evolving' needs a latency target: strategy_params.target_ms or a constraint "
            f"'{self.latency.name} <= <ms>'",
            field="strategy_params.target_ms",
            allowed="a number > 0",
        )

    def start(self) -> Config:
        return self._base

    def latency_target(self) -> tuple[str, float] | None:
        return self.latency.name, self.target_ms

    def candidates(self, current: Config, values: Mapping[str, float]) -> list[tuple[Action, ...]]:
        deltas = (-1,) if values[self.latency.name] > self.target_ms else (-1, +1)
        out = []
        for choice in self.choices:
            for delta in deltas:
                action = self.step_option(current, choice, delta)
                if action is not None:
                    out.append((action,))
        return out

    def _quality_loss(self, before: Mapping[str, float], after: Mapping[str, float]) -> float:
        q = self.quality
        return q.to_min(after[q.name]) - q.to_min(before[q.name])

    def decide(
        self,
        current: Config,
        values: Mapping[str, float],
        probes: list[tuple[tuple[Action, ...], dict[str, float]]],
    ) -> tuple[Config | None, dict[str, Any]]:
        lat = self.latency.name
        rows = [
            {
                "actions": [a.to_dict() for a in actions],
                "d_quality": -self._quality_loss(values, probe),
                "d_latency_ms": probe[lat] - values[lat],
                "latency_ms": probe[lat],
            }
            for actions, probe in probes
        ]
        actions_of = {id(row): actions for row, (actions, _) in zip(rows, probes, strict=True)}
        entry: dict[str, Any] = {
            "latency_ms": values[lat],
            "quality": values[self.quality.name],
            "target_ms": self.target_ms,
            "probed": rows,
        }
        if values[lat] > self.target_ms:
            removals = [r for r in rows if r["d_latency_ms"] < 0]
            if not removals:
                return None, {**entry, "kind": "stop", "reason": "over the target and no removal saves time"}
            ranked = rank_by_cost_per_gain(
                removals, cost=lambda r: -r["d_quality"], gain=lambda r: -r["d_latency_ms"]
            )
            group = ranked[: self.group_size]
            taken = [a for row in group for a in actions_of[id(row)]]
            nxt = self.apply(current, taken)
            if nxt is None:  # the group together is no valid subnet: the best removal alone
                group, taken = ranked[:1], list(actions_of[id(ranked[0])])
                nxt = self.apply(current, taken)
            why = ranking_log(ranked, len(group), "quality lost per ms saved (free removals first)")
            return nxt, {**entry, "kind": "remove", "taken": [a.to_dict() for a in taken], **why}
        helpful = [r for r in rows if r["d_quality"] > 0 and r["latency_ms"] <= self.target_ms]
        if not helpful:
            return None, {
                **entry,
                "kind": "stop",
                "reason": "target met and no action gains quality within it",
            }
        ranked = rank_by_cost_per_gain(
            helpful, cost=lambda r: r["d_latency_ms"], gain=lambda r: r["d_quality"]
        )
        actions = actions_of[id(ranked[0])]
        kind = "add" if actions[0].new > actions[0].old else "remove"
        why = ranking_log(ranked, 1, "ms paid per quality gained (time-saving gains first)")
        return self.apply(current, actions), {**entry, "kind": kind, "taken": ranked[0]["actions"], **why}
