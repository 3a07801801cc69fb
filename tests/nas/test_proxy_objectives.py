"""`proxy:<name>` objectives: parsing against the chosen space, the evaluator, the runner on Ray."""

from __future__ import annotations

import pytest
from nas_testing import DEVICE, TinySpace, make_resolved, objectives

from nas import MemoryTrialStore, SearchSpec, SpecError, TrialState, parse_objective, resolve
from nas.evaluate import SubnetEvaluator
from nas.objectives import objective_direction, parse_constraint
from nas.proxies import DEFAULT_PROXY, ProxyContext, available_proxies, default_proxy, get_proxy
from nas.runner import Runner
from search_spaces import SearchSpace

BATCH_PROXIES = ["grad_norm", "jacob_cov", "naswot", "snip", "synflow", "zico", "train_speed"]
SMALL = {"resolution": 32, "num_classes": 10}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec(**fields) -> SearchSpec:
    return SearchSpec(**{"space": "efficientformerv2", "space_options": SMALL, **fields})


def test_resolve_accepts_proxies_with_their_directions() -> None:
    resolved = resolve(spec(objectives=["proxy:synflow", "params"]), [DEVICE])
    assert [(o.name, o.direction) for o in resolved.objectives] == [
        ("proxy:synflow", "maximize"),
        ("params", "minimize"),
    ]
    constrained = resolve(spec(objectives=["params"], constraints=["proxy:naswot >= 10"]), [DEVICE])
    assert constrained.constraints[0].objective.name == "proxy:naswot"
    assert constrained.constraints[0].satisfied({"proxy:naswot": 11.0})


def test_default_proxy_is_the_spaces_measured_best_and_is_stored_expanded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolved = resolve(
        spec(objectives=["params", "proxy:default"], constraints=["proxy:default >= 1"]), [DEVICE]
    )
    assert default_proxy("efficientformerv2") == "grad_norm"
    assert [o.name for o in resolved.objectives] == ["params", "proxy:grad_norm"]
    assert resolved.spec.objectives == ["params", "proxy:grad_norm"]
    assert resolved.spec.constraints == ["proxy:grad_norm >= 1"]
    unet = SearchSpec(space="unet", space_options={"latent_size": 8, "width_scale": 0.0625},
                      objectives=["proxy:default"])  # fmt: skip
    assert resolve(unet, []).spec.objectives == ["proxy:train_speed"]
    # Without a trained supernet the diffusion spaces fall back to a short training from scratch; a
    # space with no measured default falls back to the parameter count.
    temporal = SearchSpec(space="temporal", objectives=["proxy:default"])
    assert resolve(temporal, []).spec.objectives == ["proxy:train_speed"]
    monkeypatch.delitem(DEFAULT_PROXY, "temporal")
    assert resolve(temporal, []).spec.objectives == ["proxy:params"]


def test_unknown_proxy_names_the_available_ones() -> None:
    with pytest.raises(SpecError) as info:
        resolve(spec(objectives=["params", "proxy:magic"]), [DEVICE])
    error = info.value
    assert error.field == "objectives[1]"
    assert "unknown proxy 'magic'" in str(error) and "for space 'efficientformerv2'" in str(error)
    assert str(sorted(available_proxies(resolve(spec(objectives=["params"]), []).space))) in str(error)
    assert "proxy:synflow" in error.allowed and "proxy:params" in error.allowed
    assert f"latency:{DEVICE}" in error.allowed


def test_supernet_proxies_need_a_trained_checkpoint() -> None:
    with pytest.raises(
        SpecError, match=r"proxy 'supernet_loss' is not available.*nas supernet train"
    ) as info:
        resolve(spec(objectives=["proxy:supernet_loss"]), [])
    assert info.value.field == "objectives[0]"
    assert "proxy:supernet_loss" not in info.value.allowed


def test_constraint_on_an_unavailable_proxy_names_the_constraint() -> None:
    with pytest.raises(SpecError, match="unknown proxy 'nope'") as info:
        resolve(spec(objectives=["params"], constraints=["params <= 5", "proxy:nope >= 1"]), [])
    assert info.value.field == "constraints[1]"


def test_space_without_a_task_offers_only_the_counting_baselines() -> None:
    tiny = TinySpace()
    offered = available_proxies(tiny)
    assert offered == {"macs": "maximize", "params": "maximize"}
    with pytest.raises(SpecError, match="it needs data and a loss for the space") as info:
        parse_objective("proxy:synflow", [], proxies=offered, space=tiny.name)
    assert info.value.allowed == ["params", "macs", "size_mb", "bits", "proxy:macs", "proxy:params"]
    assert parse_objective("proxy:params", [], proxies=offered).direction == "maximize"


def test_directions_and_parsing_without_a_space() -> None:
    assert parse_objective("proxy:supernet_loss", []).direction == "minimize"
    assert parse_constraint("proxy:zico >= 3", []).objective.direction == "maximize"
    assert objective_direction("proxy:supernet_loss") == "minimize"
    assert objective_direction(" proxy:synflow ") == "maximize"
    assert objective_direction("params") == "minimize"
    assert objective_direction(f"latency:{DEVICE}") == "minimize"


def test_evaluator_computes_proxies_and_records_their_cost(effv2_space: SearchSpace) -> None:
    names = [f"proxy:{n}" for n in BATCH_PROXIES]
    ev = SubnetEvaluator(
        effv2_space.name, effv2_space.options, objectives(["params", *names, "proxy:params"]), {}
    )
    config = effv2_space.reference_config("s0")
    outcome = ev.evaluate(config)
    assert outcome.error is None, outcome.error
    context = ProxyContext(effv2_space)
    for name in [*BATCH_PROXIES, "params"]:
        assert outcome.values[f"proxy:{name}"] == get_proxy(name).compute(context, config)
        seconds = outcome.metrics[f"proxy_seconds:{name}"]
        assert isinstance(seconds, float) and seconds >= 0
    assert outcome.values["proxy:params"] == outcome.values["params"]
    # Same config, new evaluator: the same values (seeded init and data).
    again = SubnetEvaluator(effv2_space.name, effv2_space.options, objectives(names), {}).evaluate(config)
    assert {k: again.values[k] for k in names} == {k: outcome.values[k] for k in names}


def test_evaluator_rejects_unavailable_proxies_naming_the_space(tiny_space: TinySpace) -> None:
    with pytest.raises(SpecError, match=r"proxy 'snip' is not available.*for space 'tiny-test'") as info:
        SubnetEvaluator(tiny_space.name, tiny_space.options, objectives(["proxy:snip"]), {}, space=tiny_space)
    assert info.value.allowed == ["params", "macs", "size_mb", "bits", "proxy:macs", "proxy:params"]
    outcome = SubnetEvaluator(
        tiny_space.name, tiny_space.options, objectives(["proxy:params"]), {}, space=tiny_space
    ).evaluate(tiny_space.largest())
    assert outcome.values == {
        "proxy:params": float(sum(b.params for b in tiny_space.blocks(tiny_space.largest())))
    }


def test_proxy_failure_is_the_trials_error(effv2_space: SearchSpace, tmp_path) -> None:
    missing = tmp_path / "no-such-run"
    ev = SubnetEvaluator(
        effv2_space.name,
        effv2_space.options,
        objectives(["proxy:supernet_loss"]),
        {},
        supernet_checkpoint=str(missing),
    )
    outcome = ev.evaluate(effv2_space.smallest())
    assert outcome.values == {}
    assert outcome.error == f"ProxyError: supernet checkpoint {str(missing)!r} does not exist"


@pytest.mark.usefixtures("ray_local")
def test_runner_computes_proxies_in_ray_actors(effv2_space: SearchSpace) -> None:
    store = MemoryTrialStore()
    resolved = make_resolved(
        effv2_space,
        objectives=["proxy:synflow", "params"],
        strategy="random",
        budget={"trials": 4, "parallelism": 2},
        seed=5,
    )
    result = Runner(resolved, "proxy-ray", store, {}).run()
    assert (result.state, result.n_trials, result.error) == ("succeeded", 4, None)
    context = ProxyContext(effv2_space)
    for trial in store.trials("proxy-ray"):
        assert trial.state == TrialState.COMPLETE
        expected = get_proxy("synflow").compute(context, trial.config)
        assert trial.values["proxy:synflow"] == pytest.approx(expected, rel=1e-9)
        assert trial.metrics["proxy_seconds:synflow"] > 0
