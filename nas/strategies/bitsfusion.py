"""BitsFusion's bit-width assignment (arXiv 2406.04333) as a strategy: measure each layer's
sensitivity alone, then give every layer the smallest width whose sensitivity is under one threshold,
the threshold chosen to meet a budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nas.objectives import Objective, SpecError, upper_bound
from nas.strategies._stepwise import Action, StepwiseStrategy
from nas.strategies.params import ParamCheck, config_or_reference, positive_number
from nas.strategies.registry import register_strategy
from search_spaces import Config
from search_spaces.precision import (
    ASSIGNED_BITS,
    FALLBACK_BITS,
    MixedPrecisionSpace,
    assign_bits,
    weight_storage,
)

#: Cost objectives the strategy can price exactly from the space (others are summed from probes).
COUNTED_COSTS = ("bits", "size_mb")


@register_strategy
class BitsFusionStrategy(StepwiseStrategy):
    """One probe per (layer, width), then the paper's threshold assignment.

    From `start` (default the largest config: on a mixed-precision space every layer at 16 bits) it
    asks, for every choice and every width to try, the start with only that choice changed. On a
    mixed-precision space the widths tried are 1, 2 and 3 bits and a layer none of them suits gets
    4 bits, as in the paper; on any other space every option below the start's is tried and the
    start's option is the fallback. A probe's sensitivity is how much worse it makes the `quality`
    objective than the start (with `proxy:quant_sensitivity` that is exactly S(i, b) = M(i, b) *
    N_i^-0.3, since the start adds 0). Then one threshold decides every choice (see
    `search_spaces.precision.assign_bits`), the smallest threshold whose predicted `cost` is within
    `budget`; the search asks that config and stops. `steps[0]` records the threshold, the
    predicted cost and the assignment's widths.

    Params: `quality` (objective; default the first `proxy:` objective), `cost` (objective; default
    `bits`, then `size_mb`, then `params`, whichever the search evaluates), `budget` (number; default
    the bound of a `<=` constraint on `cost`), `start` (reference config name or config). `bits`
    and `size_mb` are priced exactly from the space; any other cost is the start's value plus each
    change's measured difference (additive).
    """

    name = "bitsfusion"

    @classmethod
    def param_checks(cls) -> Mapping[str, ParamCheck]:
        return {"quality": str, "cost": str, "budget": positive_number, "start": config_or_reference}

    def setup(self, params: Mapping[str, Any]) -> None:
        super().setup(params)
        self.quality = self.objective_param(params, "quality", "proxy")
        self.cost = self._cost_objective(params)
        self.budget = params["budget"] if "budget" in params else self._budget_from_constraints()
        self._start = self.start_param(params.get("start"), "start", self.space.largest())
        self.precision = isinstance(self.space, MixedPrecisionSpace)

    def _cost_objective(self, params: Mapping[str, Any]) -> Objective:
        if "cost" in params:
            return self.objective_param(params, "cost", None)
        searched = [o.name for o in self.objectives] + [c.objective.name for c in self.constraints]
        for name in (*COUNTED_COSTS, "params"):
            if name in searched:
                return self.objective_param({"cost": name}, "cost", None)
        raise SpecError(
            "strategy 'bitsfusion' needs strategy_params.cost: an objective to keep within the budget "
            f"(bits, size_mb or params), among the objectives or constraints {sorted(searched)}",
            field="strategy_params.cost",
            allowed=sorted(searched),
        )

    def _budget_from_constraints(self) -> float:
        bound = upper_bound(self.constraints, self.cost.name)
        if bound is not None:
            return bound
        raise SpecError(
            f"strategy 'bitsfusion' needs a budget on {self.cost.name!r}: strategy_params.budget or a "
            f"constraint '{self.cost.name} <= <number>' (e.g. bits <= 1.99, size_mb <= 220)",
            field="strategy_params.budget",
            allowed="a number > 0",
        )

    # ------------------------------------------------------------------ the walk: one step
    def start(self) -> Config:
        return self._start

    def tried(self, choice: str) -> list[Any]:
        """The options tried for `choice`, smallest first."""
        options = self.space.choice_map[choice].options
        if self.precision:
            return [b for b in ASSIGNED_BITS if b in options]
        start = self._start[choice]
        return [o for o in options if start in options and options.index(o) < options.index(start)]

    def fallback(self, choice: str) -> Any:
        return FALLBACK_BITS if self.precision else self._start[choice]

    def candidates(self, current: Config, values: Mapping[str, float]) -> list[tuple[Action, ...]]:
        if current != self._start:
            return []
        return [
            (Action(choice, current[choice], option),)
            for choice in self.space.choice_map
            for option in self.tried(choice)
        ]

    def decide(
        self,
        current: Config,
        values: Mapping[str, float],
        probes: list[tuple[tuple[Action, ...], dict[str, float]]],
    ) -> tuple[Config | None, dict[str, Any]]:
        if current != self._start:
            return None, {"kind": "stop", "reason": "assigned"}
        if not probes:
            return None, {"kind": "stop", "reason": "no probe succeeded"}
        q, base = self.quality, values[self.quality.name]
        sensitivity: dict[str, dict[Any, float]] = {}
        measured: dict[str, dict[Any, float]] = {}
        for (action,), probe in probes:
            sensitivity.setdefault(action.choice, {})[action.new] = q.to_min(probe[q.name]) - q.to_min(base)
            measured.setdefault(action.choice, {})[action.new] = (
                probe[self.cost.name] - values[self.cost.name]
            )
        fallback = {choice: self.fallback(choice) for choice in sensitivity}
        cost = self._costs(current, values, sensitivity, measured, fallback)
        start_cost = self._price(current) if self.cost.name in COUNTED_COSTS else values[self.cost.name]
        assigned, threshold = assign_bits(sensitivity, cost, self.budget - start_cost, fallback)
        config = self.space.canonicalize({**current, **assigned})
        predicted = start_cost + sum(cost[c][o] for c, o in assigned.items())
        counts: dict[str, int] = {}
        for option in assigned.values():
            counts[str(option)] = counts.get(str(option), 0) + 1
        entry = {
            "kind": "assign",
            "threshold": threshold,
            "cost": self.cost.name,
            "budget": self.budget,
            "predicted_cost": predicted,
            "choices_by_option": counts,
        }
        return config, entry

    def _price(self, config: Config) -> float:
        storage = weight_storage(self.space, config)
        return storage.mean_bits if self.cost.name == "bits" else storage.size_mb

    def _costs(
        self,
        current: Config,
        values: Mapping[str, float],
        sensitivity: Mapping[str, Mapping[Any, float]],
        measured: Mapping[str, Mapping[Any, float]],
        fallback: Mapping[str, Any],
    ) -> dict[str, dict[Any, float]]:
        """What each choice adds to the cost at each option it may get, relative to the start."""
        out: dict[str, dict[Any, float]] = {}
        base = self._price(current) if self.cost.name in COUNTED_COSTS else values[self.cost.name]
        for choice, by_option in sensitivity.items():
            options = [*by_option, fallback[choice]]
            if isinstance(self.space, MixedPrecisionSpace) and self.cost.name in COUNTED_COSTS:
                start = self.space.choice_cost(choice, current[choice])[self.cost.name]
                out[choice] = {o: self.space.choice_cost(choice, o)[self.cost.name] - start for o in options}
            elif self.cost.name in COUNTED_COSTS:
                out[choice] = {o: self._price({**current, choice: o}) - base for o in options}
            else:
                out[choice] = {o: measured[choice].get(o, 0.0) for o in options}
        return out
