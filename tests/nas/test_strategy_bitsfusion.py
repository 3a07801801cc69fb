"""The `bitsfusion` strategy: it reproduces the recipe's size and mean bits on SD-v1.5 (fed the
modelled sensitivities, no forward pass), and runs end to end on measured sensitivities."""

from __future__ import annotations

import pytest

from nas import Trial
from nas.evaluate import SubnetEvaluator
from nas.objectives import parse_constraint, parse_objective
from nas.strategies import make_strategy
from search_spaces import config_id, get_space
from search_spaces.precision import CHOICE_PREFIX, MixedPrecisionSpace

OBJECTIVES = [parse_objective(name, []) for name in ("bits", "proxy:quant_sensitivity")]


def drive(strategy, values_of) -> list[dict]:
    asked: list[dict] = []
    while configs := strategy.ask(1000):
        trials = [Trial(len(asked) + i, c, config_id(c), values=values_of(c)) for i, c in enumerate(configs)]
        asked += configs
        strategy.tell(trials)
    return asked


def test_reproduces_the_bitsfusion_recipe_at_sd_size() -> None:
    space = get_space("unet_bits")
    assert isinstance(space, MixedPrecisionSpace)
    layers = {CHOICE_PREFIX + layer.name: layer for layer in space.searched_layers}

    def values_of(config: dict) -> dict[str, float]:
        modelled = sum(
            4.0 ** -config[name] * layer.weights**-0.3 for name, layer in layers.items() if config[name] < 16
        )
        return {"bits": space.weight_storage(config).mean_bits, "proxy:quant_sensitivity": modelled}

    constraint = parse_constraint("bits <= 1.99", [])
    strategy = make_strategy("bitsfusion", space, OBJECTIVES, [constraint])
    asked = drive(strategy, values_of)
    assert len(asked) == 1 + 3 * len(layers) + 1, "the start, one probe per (layer, width), the result"
    final = asked[-1]
    assert final == space.canonicalize("bitsfusion")
    storage = space.weight_storage(final)
    assert storage.mean_bits == pytest.approx(1.99, abs=0.02)
    assert storage.size_mb == pytest.approx(219, rel=0.05)
    assert strategy.steps[0]["kind"] == "assign"
    assert strategy.steps[0]["predicted_cost"] == pytest.approx(storage.mean_bits)
    assert strategy.ask(4) == []


@pytest.mark.usefixtures("one_torch_thread")
def test_size_budget_on_measured_sensitivities() -> None:
    options = {"resolution": 32, "num_classes": 10}
    space = get_space("efficientformerv2_bits", **options)
    objectives = [parse_objective(name, []) for name in ("size_mb", "proxy:quant_sensitivity")]
    evaluator = SubnetEvaluator(space.name, options, objectives, {}, space=space)
    budget = space.weight_storage("w3").size_mb
    strategy = make_strategy("bitsfusion", space, objectives, budget=budget)
    asked = drive(strategy, lambda config: evaluator.evaluate(config).values)
    final = asked[-1]
    assert space.weight_storage(final).size_mb <= budget
    assert strategy.steps[0]["predicted_cost"] == pytest.approx(space.weight_storage(final).size_mb)
    # The budget of uniform 3 bits is spent on a mix: the most sensitive layers get more than 3 bits.
    widths = {final[name] for name in space.choice_map}
    assert len(widths) > 1 and max(widths) == 4
    values = evaluator.evaluate(final).values
    uniform = evaluator.evaluate(space.canonicalize("w3")).values
    assert values["proxy:quant_sensitivity"] < uniform["proxy:quant_sensitivity"]


def test_needs_a_budget_and_a_cost() -> None:
    from nas import SpecError

    space = get_space("unet_bits", latent_size=8, width_scale=0.0625)
    with pytest.raises(SpecError) as info:
        make_strategy("bitsfusion", space, OBJECTIVES)
    assert info.value.field == "strategy_params.budget"
    with pytest.raises(SpecError) as info:
        make_strategy("bitsfusion", space, [parse_objective("proxy:quant_sensitivity", [])], budget=2)
    assert info.value.field == "strategy_params.cost"
