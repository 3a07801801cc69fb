"""EfficientFormerV2's search: slim the largest subnet one action at a time, trading the least
quality for the most Mobile Efficiency Score."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nas.objectives import SpecError
from nas.strategies._stepwise import Action, StepwiseStrategy, rank_by_cost_per_gain, ranking_log
from nas.strategies.params import ParamCheck, config_or_reference, positive_number
from nas.strategies.registry import register_strategy
from search_spaces import Config

#: Choices an action may reduce, by the last part of their name: a stage's depth, a stage's width,
#: a block's expansion ratio.
SLIMMABLE_SUFFIXES = ("depth", "width", "ratio")
#: MES defaults (EfficientFormerV2, Li et al. 2023): equal weight on latency and size, in units of
#: 1 ms and 1 M parameters.
DEFAULT_ALPHA = {"latency": 0.5, "params": 0.5}
DEFAULT_UNITS = {"latency": 1.0, "params": 1e6}


def _weights(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or not set(value) <= set(DEFAULT_ALPHA):
        raise ValueError(f"an object with keys among {sorted(DEFAULT_ALPHA)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value.values()):
        raise ValueError(f"an object with keys among {sorted(DEFAULT_ALPHA)} and numbers >= 0")
    return {k: float(v) for k, v in value.items()}


def mobile_efficiency_score(
    measures: Mapping[str, float], alpha: Mapping[str, float], units: Mapping[str, float]
) -> float:
    """MES = 100 * prod_i (M_i / U_i) ** (-alpha_i): larger is more efficient."""
    return 100.0 * math.prod((measures[k] / units[k]) ** (-alpha[k]) for k in alpha if alpha[k])


@register_strategy
class SlimmingStrategy(StepwiseStrategy):
    """MES-driven slimming (EfficientFormerV2, Li et al. 2023, section 3.4), one step per decision.

    From `start` (default the largest subnet), each step probes every action that moves one
    slimmable choice (a stage's depth, a stage's width, one block's expansion ratio: choices whose
    name ends in one of `SLIMMABLE_SUFFIXES`) one option down, and takes the action with the
    smallest quality drop per gain in Mobile Efficiency Score
    `MES = 100 * prod_i (M_i / U_i) ** (-alpha_i)` over latency (the `latency` objective, ms) and
    parameters (the `params` objective). An action that drops no quality is free and ranks first,
    the largest MES gain first (`rank_by_cost_per_gain`). It stops when
    no action raises the MES, when the latency reaches `target_ms` (if given), or at the budget.
    Every decision is in `steps` with the probed actions, their quality and MES deltas and the MES.

    Params: `quality` (objective name; default the first `proxy:` objective), `latency` (default
    the first `latency:` objective), `alpha` ({"latency": 0.5, "params": 0.5}; 0 drops a term),
    `units` ({"latency": 1.0 ms, "params": 1e6}), `start` (reference config name or config),
    `target_ms` (none).
    """

    name = "slimming"

    @classmethod
    def param_checks(cls) -> Mapping[str, ParamCheck]:
        return {
            "quality": str,
            "latency": str,
            "alpha": _weights,
            "units": _weights,
            "start": config_or_reference,
            "target_ms": positive_number,
        }

    def setup(self, params: Mapping[str, Any]) -> None:
        super().setup(params)
        space = self.space
        self.quality = self.objective_param(params, "quality", "proxy")
        self.alpha = {**DEFAULT_ALPHA, **params.get("alpha", {})}
        self.units = {**DEFAULT_UNITS, **params.get("units", {})}
        if any(u <= 0 for u in self.units.values()):
            raise SpecError("MES units must be > 0", field="strategy_params.units", allowed="numbers > 0")
        self.measures: dict[str, str] = {}
        if self.alpha["latency"]:
            self.measures["latency"] = self.objective_param(params, "latency", "latency").name
        if self.alpha["params"]:
            searched = {o.name for o in self.objectives} | {c.objective.name for c in self.constraints}
            if "params" not in searched:
                raise SpecError(
                    "strategy 'slimming' scores MES on parameters: add 'params' to the objectives, or set "
                    "strategy_params.alpha.params to 0",
                    field="strategy_params.alpha",
                    allowed=sorted(searched),
                )
            self.measures["params"] = "params"
        self.target_ms: float | None = params.get("target_ms")
        self._start = self.start_param(params.get("start"), "start", space.largest())
        self.choices = [n for n in space.choice_map if n.rsplit(".", 1)[-1] in SLIMMABLE_SUFFIXES]
        if not self.choices:
            raise SpecError(
                f"space {space.name!r} has no slimmable choices (names ending in {SLIMMABLE_SUFFIXES})",
                field="space",
            )

    def mes(self, values: Mapping[str, float]) -> float:
        measures = {term: values[name] for term, name in self.measures.items()}
        alpha = {term: self.alpha[term] for term in self.measures}
        return mobile_efficiency_score(measures, alpha, self.units)

    def start(self) -> Config:
        return self._start

    def latency_target(self) -> tuple[str, float] | None:
        latency = self.measures.get("latency")
        return None if latency is None or self.target_ms is None else (latency, self.target_ms)

    def candidates(self, current: Config, values: Mapping[str, float]) -> list[tuple[Action, ...]]:
        latency = self.measures.get("latency")
        if self.target_ms is not None and latency is not None and values[latency] <= self.target_ms:
            return []
        actions = (self.step_option(current, choice, -1) for choice in self.choices)
        return [(a,) for a in actions if a is not None]

    def decide(
        self,
        current: Config,
        values: Mapping[str, float],
        probes: list[tuple[tuple[Action, ...], dict[str, float]]],
    ) -> tuple[Config | None, dict[str, Any]]:
        q = self.quality
        mes = self.mes(values)
        rows = [
            {
                "actions": [a.to_dict() for a in actions],
                "d_quality": q.to_min(values[q.name]) - q.to_min(probe[q.name]),
                "d_mes": self.mes(probe) - mes,
                **(
                    {"d_latency_ms": probe[self.measures["latency"]] - values[self.measures["latency"]]}
                    if "latency" in self.measures
                    else {}
                ),
            }
            for actions, probe in probes
        ]
        entry: dict[str, Any] = {"mes": mes, "quality": values[q.name], "probed": rows}
        for term, name in self.measures.items():
            entry[term] = values[name]
        actions_of = {id(row): actions for row, (actions, _) in zip(rows, probes, strict=True)}
        gaining = [r for r in rows if r["d_mes"] > 0]
        if not gaining:
            reason = "latency target met" if not probes else "no action raises the MES"
            return None, {**entry, "kind": "stop", "reason": reason}
        ranked = rank_by_cost_per_gain(gaining, cost=lambda r: -r["d_quality"], gain=lambda r: r["d_mes"])
        why = ranking_log(ranked, 1, "quality lost per MES gained (free actions first)")
        taken = ranked[0]
        return self.apply(current, actions_of[id(taken)]), {
            **entry,
            "kind": "slim",
            "taken": taken["actions"],
            **why,
        }
