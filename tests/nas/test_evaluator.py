"""`SubnetEvaluator`: params, MACs and LUT latency of real subnets; errors instead of exceptions."""

from __future__ import annotations

import numpy as np
import pytest
from nas_testing import DEVICE, TinySpace, objectives

from nas import Objective, SpecError
from nas.evaluate import SubnetEvaluator
from search_spaces import SearchSpace, _counting, count_params

LATENCY = f"latency:{DEVICE}"


def evaluator(space: SearchSpace, names: list[str], luts) -> SubnetEvaluator:
    return SubnetEvaluator(space.name, space.options, objectives(names, [DEVICE, "phone"]), luts, space=space)


def tiny_configs(space: TinySpace) -> list[dict]:
    rng = np.random.default_rng(0)
    return [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(5))]


def test_params_equal_the_built_subnets(tiny_space: TinySpace, tiny_luts) -> None:
    ev = evaluator(tiny_space, ["params"], tiny_luts)
    for config in tiny_configs(tiny_space):
        outcome = ev.evaluate(config)
        assert outcome.error is None
        assert outcome.values == {"params": count_params(tiny_space.build(config))}


def test_params_alone_does_not_trace_with_fvcore(tiny_space: TinySpace, tiny_luts, monkeypatch) -> None:
    def no_tracing(*args, **kwargs):
        raise AssertionError("fvcore was called")

    monkeypatch.setattr(_counting, "_CACHE", {})
    monkeypatch.setattr(_counting, "count_mac_details", no_tracing)
    assert evaluator(tiny_space, ["params", LATENCY], tiny_luts).evaluate(tiny_space.largest()).error is None
    outcome = evaluator(tiny_space, ["macs"], tiny_luts).evaluate(tiny_space.largest())
    assert outcome.error == "AssertionError: fvcore was called"


def test_macs_and_latency(tiny_space: TinySpace, tiny_luts) -> None:
    ev = evaluator(tiny_space, [LATENCY, "params", "macs"], tiny_luts)
    for config in tiny_configs(tiny_space):
        outcome = ev.evaluate(config)
        assert outcome.error is None, outcome.error
        blocks = tiny_space.blocks(config)
        assert outcome.values[LATENCY] == pytest.approx(sum(tiny_luts[DEVICE][b.key] for b in blocks))
        assert outcome.values["macs"] == tiny_space.count(config)["macs"] > 0
        assert outcome.values["params"] == count_params(tiny_space.build(config))
        assert outcome.metrics[f"latency_coverage:{DEVICE}"] == 1.0
        assert outcome.metrics["n_blocks"] == len(blocks)
        assert outcome.duration_s > 0


def test_missing_lut_keys_are_an_error_naming_device_count_examples_and_fix(tiny_space, tiny_luts) -> None:
    config = tiny_space.canonicalize({"depth": 3, "width": 16, "block0.ratio": 2, "block1.ratio": 4})
    blocks = tiny_space.blocks(config)
    keys = list(dict.fromkeys(b.key for b in blocks))
    assert len(keys) == 4
    lut = {k: v for k, v in tiny_luts[DEVICE].items() if k not in keys[:3]}
    outcome = evaluator(tiny_space, [LATENCY, "params"], {DEVICE: lut}).evaluate(config)
    assert outcome.values == {}
    assert f"device {DEVICE!r}" in outcome.error
    assert "lacks 3 " in outcome.error
    assert (
        repr(keys[0]) in outcome.error
        and repr(keys[1]) in outcome.error
        and repr(keys[2]) not in outcome.error
    )
    # A device this host cannot measure is filled by a farm on the device, with the space's options.
    assert f"run `nas farm run --device {DEVICE} --backend BACKEND --space {tiny_space.name}" in outcome.error
    covered = sum(1 for b in blocks if b.key in lut)
    assert covered == 1
    assert outcome.metrics[f"latency_coverage:{DEVICE}"] == pytest.approx(covered / len(blocks))


def test_device_without_any_table(tiny_space: TinySpace) -> None:
    outcome = evaluator(tiny_space, ["latency:phone"], {}).evaluate(tiny_space.smallest())
    assert "device 'phone'" in outcome.error and "nas farm run --device phone" in outcome.error
    assert outcome.metrics["latency_coverage:phone"] == 0.0


def test_fill_command_names_the_device_s_tool_and_the_space_options() -> None:
    from nas.evaluate import fill_command
    from search_spaces import get_space

    space = get_space("efficientformerv2", resolution=64, num_classes=10)
    local = fill_command("host-cpu-torch", space)
    assert (
        "`nas lut measure --device host-cpu-torch --space efficientformerv2 "
        "-o num_classes=10 -o resolution=64`" in local
    )
    farm = fill_command("iphone14pro-coreml", space)
    assert (
        "`nas farm run --device iphone14pro-coreml --backend BACKEND --space efficientformerv2 "
        "-o num_classes=10 -o resolution=64`" in farm
    )
    assert "-o" not in fill_command("host-cpu-torch", get_space("efficientformerv2"))  # defaults are left out


def test_bad_configs_and_crashes_become_errors(tiny_space: TinySpace, tiny_luts) -> None:
    ev = evaluator(tiny_space, ["params"], tiny_luts)
    outcome = ev.evaluate({"depth": 5})
    assert outcome.error.startswith("ConfigError: choice 'depth' = 5 is not allowed; options: [1, 2, 3]")
    assert ev.evaluate({"colour": 1}).error.startswith("ConfigError: unknown choice 'colour'")

    class Broken(TinySpace):
        def blocks(self, config):
            raise RuntimeError("no blocks today")

    outcome = evaluator(Broken(), ["params"], tiny_luts).evaluate({})
    assert outcome.error == "RuntimeError: no blocks today"
    assert "no blocks today" in outcome.metrics["traceback"]


def test_unknown_objective_is_a_spec_error_before_any_evaluator(tiny_space: TinySpace) -> None:
    with pytest.raises(SpecError, match="unknown objective 'accuracy'") as info:
        SubnetEvaluator(tiny_space.name, tiny_space.options, [Objective("accuracy", "minimize")], {})
    assert info.value.field == "objectives"
    assert info.value.allowed == ["params", "macs", "size_mb", "bits", "latency:<device>", "proxy:<name>"]


def test_builds_registered_spaces_by_name(effv2_space: SearchSpace) -> None:
    blocks = effv2_space.all_blocks()
    luts = {DEVICE: {b.key: 1.0 for b in blocks}}
    ev = SubnetEvaluator(effv2_space.name, effv2_space.options, objectives(["params", LATENCY]), luts)
    assert ev.space.options == effv2_space.options
    rng = np.random.default_rng(0)
    for config in [effv2_space.reference_config("s0"), effv2_space.sample(rng)]:
        outcome = ev.evaluate(config)
        assert outcome.error is None, outcome.error
        assert outcome.values["params"] == count_params(effv2_space.build(config))
        assert outcome.values[LATENCY] == pytest.approx(len(effv2_space.blocks(config)))


def test_trials_record_the_predictor_its_error_and_the_fallback_share(
    tiny_space: TinySpace, tiny_luts
) -> None:
    from latency_lut import LatencyEntry, TableView
    from latency_lut.fallback import fit_fallback
    from latency_lut.features import block_features
    from latency_lut.predictors import InContextSum

    # In-context entries 10% above the isolated ones; one block missing from both.
    config = tiny_space.largest()
    blocks = tiny_space.blocks(config)
    missing = blocks[1].key
    entries = []
    for spec in tiny_space.all_blocks():
        if spec.key == missing:
            continue
        ms = tiny_luts[DEVICE][spec.key]
        entries.append(LatencyEntry(DEVICE, spec.key, ms, ms, ms, 3, spec.kind))
        entries.append(LatencyEntry(DEVICE, f"ctx@{spec.key}", 1.1 * ms, 1.1 * ms, 1.1 * ms, 3, spec.kind))
    table = TableView.from_entries(DEVICE, entries)
    fallback = fit_fallback(DEVICE, entries, lambda e: block_features(tiny_space, e.key), statistic="p10")
    predictor = InContextSum(table, fallback=fallback, space=tiny_space, expected_error=0.04)
    outcome = evaluator(tiny_space, [LATENCY], {DEVICE: predictor}).evaluate(config)
    assert outcome.error is None, outcome.error
    metrics = outcome.metrics
    assert metrics[f"latency_predictor:{DEVICE}"] == "in_context"
    assert metrics[f"latency_expected_error:{DEVICE}"] == 0.04
    estimated = metrics[f"latency_estimated_ms:{DEVICE}"]
    assert estimated > 0 and metrics[f"latency_coverage:{DEVICE}"] < 1
    measured = sum(1.1 * tiny_luts[DEVICE][b.key] for b in blocks if b.key != missing)
    assert outcome.values[LATENCY] == pytest.approx(measured + estimated)
