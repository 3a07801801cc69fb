"""SnapFusion's evolving (UNet) and EfficientFormerV2's MES slimming, driven with synthetic LUT
latency and the `params` proxy as quality, and through the runner on the tiny space."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from nas_testing import DEVICE, TinySpace, make_resolved, synthetic_latency

from nas import MemoryTrialStore, SpecError, Trial, parse_constraint, parse_objective
from nas.runner import Runner
from nas.strategies import make_strategy
from nas.strategies._stepwise import StepwiseStrategy
from nas.strategies.slimming import mobile_efficiency_score
from search_spaces import SearchSpace, config_id, get_space, list_spaces

LATENCY = f"latency:{DEVICE}"
QUALITY = "proxy:params"


def values_of(space: SearchSpace, config: dict[str, Any]) -> dict[str, float]:
    blocks = space.blocks(config)
    params = float(sum(b.params for b in blocks))
    return {LATENCY: sum(synthetic_latency(b) for b in blocks), "params": params, QUALITY: params}


def make(name: str, space: SearchSpace, objectives: list[str], constraints: list[str] = (), **params: Any):
    parsed = [parse_objective(o, [DEVICE]) for o in objectives]
    bounds = [parse_constraint(c, [DEVICE]) for c in constraints]
    strategy = make_strategy(name, space, parsed, bounds, seed=0, **params)
    assert isinstance(strategy, StepwiseStrategy)
    return strategy


def drive(
    strategy: StepwiseStrategy, values: Callable[[dict], dict[str, float]], batch: int = 8, limit: int = 2000
) -> list[Trial]:
    """Ask and tell until the strategy is done (or `limit` trials); returns the trials in order."""
    trials: list[Trial] = []
    while len(trials) < limit:
        configs = strategy.ask(batch)
        if not configs:
            break
        new = [Trial(len(trials) + i, c, config_id(c), values=values(c)) for i, c in enumerate(configs)]
        trials += new
        strategy.tell(new)
    return trials


def need_space(name: str, **options: Any) -> SearchSpace:
    if name not in list_spaces():
        pytest.skip(f"search space {name!r} is not registered")
    return get_space(name, **options)


@pytest.fixture(scope="module")
def unet() -> SearchSpace:
    return need_space("unet", latent_size=8, width_scale=0.125, text_tokens=4, cross_attention_dim=32)


@pytest.fixture(scope="module")
def evolved(unet: SearchSpace) -> tuple[StepwiseStrategy, list[Trial], float]:
    base = values_of(unet, unet.canonicalize("sd15"))[LATENCY]
    target = 0.6 * base
    strategy = make("evolving", unet, [LATENCY, QUALITY], target_ms=target, group_size=2)
    trials = drive(strategy, lambda c: values_of(unet, c))
    return strategy, trials, target


def test_evolving_starts_from_sd15_and_never_repeats(unet: SearchSpace, evolved) -> None:
    strategy, trials, _ = evolved
    assert trials[0].config == unet.canonicalize("sd15")
    assert len({t.config_id for t in trials}) == len(trials)
    assert strategy.done and strategy.ask(4) == []


def test_evolving_removes_cheapest_groups_until_the_target_then_adds(evolved) -> None:
    strategy, trials, target = evolved
    kinds = [s["kind"] for s in strategy.steps]
    first_add = kinds.index("add") if "add" in kinds else len(kinds) - 1
    assert kinds[0] == "remove" and set(kinds[:first_add]) == {"remove"} and kinds[-1] == "stop"
    for step in strategy.steps:
        if step["kind"] == "remove" and step["latency_ms"] > target:
            # The group taken is the two probed removals with the least quality lost per ms saved.
            removals = [r for r in step["probed"] if r["d_latency_ms"] < 0]
            ranked = sorted(removals, key=lambda r: max(-r["d_quality"], 0) / -r["d_latency_ms"])
            assert step["taken"] == [a for r in ranked[:2] for a in r["actions"]]
            assert step["score"] == [r["score"] for r in ranked[:2]]
            if len(ranked) > 2:
                assert step["runner_up"]["actions"] == ranked[2]["actions"]
                assert step["runner_up"]["score"] >= step["score"][-1]
            assert all(a["to"] < a["from"] for a in step["taken"])
        elif step["kind"] == "add":
            assert step["latency_ms"] <= target
            fitting = [r for r in step["probed"] if r["d_quality"] > 0 and r["latency_ms"] <= target]
            best = max(fitting, key=lambda r: r["d_quality"] / r["d_latency_ms"])
            assert step["taken"] == best["actions"]
    final = {t.config_id: t for t in trials}[strategy.steps[-1]["from"]]
    assert final.values[LATENCY] <= target
    assert strategy.steps[-1]["reason"] == "target met and no action gains quality within it"


def test_evolving_prefers_a_free_big_saving_to_small_savings_with_tiny_gains(unet: SearchSpace) -> None:
    """SnapFusion's rule on the case that went wrong: removing `mid.transformers` saves 6.6 ms at no
    quality change; removing `down3.resnets` or `up3.resnets` saves 0.4 ms each with a tiny quality
    gain. A plain ratio of quality change to latency change ranked the small savings first."""
    sd15 = unet.canonicalize("sd15")
    saving = {"mid.transformers": 6.6, "down3.resnets": 0.4, "up3.resnets": 0.4}

    def values(config: dict[str, Any]) -> dict[str, float]:
        latency, quality = 100.0, 1.0
        for choice, value in config.items():
            removed = sd15[choice] - value if isinstance(value, int) and choice in saving else 0
            latency -= removed * saving[choice] if removed > 0 else 0.0
            quality += 1e-4 * removed if choice != "mid.transformers" and removed > 0 else 0.0
        # removing a ResNet of down1 costs a lot of quality and saves little time
        others = sd15["down1.resnets"] - config["down1.resnets"]
        return {LATENCY: latency - 0.1 * others, QUALITY: quality - 10.0 * others, "params": 1.0}

    strategy = make(
        "evolving",
        unet,
        [LATENCY, QUALITY],
        target_ms=50.0,
        group_size=1,
        choices=["down3.resnets", "mid.transformers", "up3.resnets", "down1.resnets"],
    )
    drive(strategy, values, limit=12)
    first = strategy.steps[0]
    assert first["kind"] == "remove"
    assert [a["choice"] for a in first["taken"]] == ["mid.transformers"]
    assert first["score"] == [0.0]
    # The runner-up is the other free removal (a small saving), not the costly one.
    assert first["runner_up"]["score"] == 0.0
    assert first["runner_up"]["actions"][0]["choice"] in ("down3.resnets", "up3.resnets")
    costly = next(r for r in first["probed"] if r["actions"][0]["choice"] == "down1.resnets")
    assert costly["score"] == pytest.approx(10.0 / 0.1)


@pytest.mark.parametrize("fraction", [0.9, 0.6])
def test_evolving_budget_warning_names_a_budget_that_reaches_the_target(
    unet: SearchSpace, fraction: float
) -> None:
    """The submit-time estimate (steps from the first step's mean saving) against the real walk: the
    steps it names are within one of those taken, and the trials it names are enough."""
    base = values_of(unet, unet.canonicalize("sd15"))[LATENCY]
    target = fraction * base

    def latency(config: dict[str, Any]) -> float:
        return values_of(unet, config)[LATENCY]

    estimate = make("evolving", unet, [LATENCY, QUALITY], target_ms=target, group_size=2)
    (warning,) = estimate.budget_warnings(20, latency)
    assert "budget 20 trials buys about 1 step of 17 evaluations" in warning
    steps = int(re.search(r"needs about (\d+) steps", warning)[1])
    trials = int(re.search(r"about (\d+) trials would reach it", warning)[1])
    assert estimate.budget_warnings(trials, latency) == []

    walk = make("evolving", unet, [LATENCY, QUALITY], target_ms=target, group_size=2)
    told = {t.config_id: t for t in drive(walk, lambda c: values_of(unet, c), batch=1, limit=trials)}
    # The first step that led to an evaluated config within the target.
    reached = [s for s in walk.steps if s.get("to") in told and told[s["to"]].values[LATENCY] <= target]
    assert reached, "the named budget did not reach the target"
    assert abs(reached[0]["step"] + 1 - steps) <= 1


def test_evolving_resumes_from_told_trials_with_the_same_steps(unet: SearchSpace, evolved) -> None:
    strategy, trials, target = evolved
    half = trials[: len(trials) // 2]
    resumed = make("evolving", unet, [LATENCY, QUALITY], target_ms=target, group_size=2)
    resumed.tell(half)
    rest = drive(resumed, lambda c: values_of(unet, c))
    assert {t.config_id for t in rest}.isdisjoint(t.config_id for t in half)
    assert len(half) + len(rest) == len(trials)
    assert resumed.steps == strategy.steps


def test_evolving_param_errors(unet: SearchSpace) -> None:
    with pytest.raises(SpecError) as info:
        make("evolving", unet, [LATENCY, QUALITY])
    assert info.value.field == "strategy_params.target_ms"
    with pytest.raises(SpecError) as info:
        make("evolving", unet, [LATENCY, "params"], target_ms=5.0)
    assert info.value.field == "strategy_params.quality"
    with pytest.raises(SpecError) as info:
        make("evolving", unet, [LATENCY, QUALITY], target_ms=5.0, base="sd99")
    assert info.value.field == "strategy_params.base" and "sd15" in info.value.allowed
    with pytest.raises(SpecError) as info:
        make("evolving", unet, [LATENCY, QUALITY], target_ms=5.0, choices=["down0.colour"])
    assert info.value.field == "strategy_params.choices"


def test_mes_formula() -> None:
    mes = mobile_efficiency_score(
        {"latency": 4.0, "params": 9e6}, {"latency": 0.5, "params": 0.5}, {"latency": 1.0, "params": 1e6}
    )
    assert mes == pytest.approx(100 / 6)
    assert mobile_efficiency_score({"latency": 2.0}, {"latency": 1.0}, {"latency": 0.5}) == pytest.approx(
        25.0
    )


def test_slimming_takes_the_smallest_quality_drop_per_mes_gain() -> None:
    space = need_space("efficientformerv2", resolution=32, num_classes=10)
    strategy = make("slimming", space, [LATENCY, "params", QUALITY], alpha={"latency": 0.5, "params": 1.0})
    trials = drive(strategy, lambda c: values_of(space, c), batch=16, limit=150)
    assert trials[0].config == space.largest()
    assert len({t.config_id for t in trials}) == len(trials)
    slims = [s for s in strategy.steps if s["kind"] == "slim"]
    assert len(slims) >= 2
    for step in slims:
        gaining = [r for r in step["probed"] if r["d_mes"] > 0]
        best = min(gaining, key=lambda r: max(-r["d_quality"], 0) / r["d_mes"])  # quality lost per MES
        assert step["taken"] == best["actions"] and step["score"] == [best["score"]]
        (action,) = step["taken"]
        assert action["choice"].rsplit(".", 1)[-1] in ("depth", "width", "ratio")
        assert action["to"] < action["from"]
        expected = 100 * step["latency"] ** -0.5 * (step["params"] / 1e6) ** -1.0
        assert step["mes"] == pytest.approx(expected)
    assert [s["mes"] for s in slims] == sorted(s["mes"] for s in slims)


def test_slimming_stops_at_the_latency_target_and_needs_params() -> None:
    space = need_space("efficientformerv2", resolution=32, num_classes=10)
    largest = values_of(space, space.largest())[LATENCY]
    strategy = make("slimming", space, [LATENCY, "params", QUALITY], target_ms=0.97 * largest)
    trials = drive(strategy, lambda c: values_of(space, c), batch=64)
    assert strategy.done and strategy.steps[-1]["reason"] == "latency target met"
    assert strategy.steps[-1]["latency"] <= 0.97 * largest < strategy.steps[-2]["latency"]
    assert len(trials) < 500
    with pytest.raises(SpecError) as info:
        make("slimming", space, [LATENCY, QUALITY])
    assert info.value.field == "strategy_params.alpha"
    make("slimming", space, [LATENCY, QUALITY], alpha={"params": 0})


def test_evolving_through_the_runner_records_every_probe(tiny_space: TinySpace, tiny_luts) -> None:
    resolved = make_resolved(
        tiny_space,
        objectives=[LATENCY, QUALITY],
        constraints=[f"{LATENCY} <= 0.9"],
        strategy="evolving",
        strategy_params={"base": {"depth": 3, "width": 16}},
        budget={"trials": 200, "parallelism": 3},
    )
    store = MemoryTrialStore()
    runner = Runner(resolved, "evolve", store, tiny_luts, use_ray=False)
    result = runner.run()
    assert result.state == "succeeded" and result.error is None
    assert 1 < result.n_trials < 200  # it stopped on its own: nothing else helped
    strategy = runner.strategy
    assert isinstance(strategy, StepwiseStrategy) and strategy.done
    stored = {t.config_id for t in store.trials("evolve")}
    assert {s["from"] for s in strategy.steps} <= stored
    assert math.isfinite(result.hypervolume or 0.0)
