"""Latency predictors: the table-only sums, the learned group models and their selection by held-out
error, on synthetic tables whose truth is known; and the timings that fill a table's entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from latency_lut import (
    LatencyEntry,
    MeasuredSubnet,
    MemoryLatencyTable,
    TableView,
    TorchCPUBackend,
    measure_missing,
    select_predictor,
)
from latency_lut.predictors import (
    BlockSum,
    InContextSum,
    LearnedPredictor,
    OverheadCorrectedSum,
    fit_group_model,
    group_of,
    sample_statistic,
)
from latency_lut.timings import check_timings, predecessors, split_timing_key, timing_key
from search_spaces import BlockSpec, SearchSpace

DEVICE = "synthetic"
KINDS = ("conv", "attn")
RESOLUTIONS = ("8x8", "16x16")


def _block(kind: str, hw: str, width: int) -> BlockSpec:
    return BlockSpec.make(f"t.{kind}", params=width * 1000, dim=width, hw=hw)


def _table(rng: np.random.Generator) -> tuple[list[BlockSpec], dict[str, float], dict[str, float]]:
    blocks = [_block(k, hw, w) for k in KINDS for hw in RESOLUTIONS for w in (8, 16, 32, 64)]
    isolated = {b.key: float(rng.uniform(0.5, 5.0)) for b in blocks}
    in_context = {key: 1.1 * value for key, value in isolated.items()}
    return blocks, isolated, in_context


def _truth(subnet: list[BlockSpec], in_context: dict[str, float]) -> float:
    """What a 'network' takes: per kind and resolution its own scale of the in-context time, plus a
    per-block cost and a cost per weight that leaves the caches."""
    scale = {"t.conv|hw=8x8": 1.0, "t.conv|hw=16x16": 1.3, "t.attn|hw=8x8": 0.9, "t.attn|hw=16x16": 1.6}
    return 0.2 + sum(
        scale[group_of(b, "group")] * in_context[b.key] + 0.05 + 2e-3 * b.params / 1e3 for b in subnet
    )


def _entries(
    isolated: dict[str, float], in_context: dict[str, float], calls: float = 0.0
) -> list[LatencyEntry]:
    out = []
    for key, value in isolated.items():
        out.append(
            LatencyEntry(DEVICE, key, 2 * value, value, 3 * value, 5, key.split("|")[0], {"clock": "thread"})
        )
        ctx = in_context[key]
        out.append(
            LatencyEntry(
                DEVICE, timing_key(key, "in_context"), 2 * ctx, ctx, 3 * ctx, 5, "", {"clock": "thread"}
            )
        )
        if calls:
            out.append(LatencyEntry(DEVICE, timing_key(key, "call_overhead"), calls, calls, calls, 5, "", {}))
    return out


def _subnets(blocks: list[BlockSpec], rng: np.random.Generator, n: int) -> list[list[BlockSpec]]:
    return [[blocks[i] for i in rng.choice(len(blocks), size=int(rng.integers(4, 12)))] for _ in range(n)]


def test_table_view_reads_each_timing_on_the_statistic() -> None:
    rng = np.random.default_rng(0)
    _, isolated, in_context = _table(rng)
    p10 = TableView.from_entries(DEVICE, _entries(isolated, in_context, calls=0.01))
    median = TableView.from_entries(DEVICE, _entries(isolated, in_context), "median")
    key = next(iter(isolated))
    assert p10.isolated[key] == isolated[key] and median.isolated[key] == 2 * isolated[key]
    assert p10.in_context[key] == in_context[key] and p10.call_overhead[key] == 0.01
    assert median.call_overhead == {} and p10.clocks == ("thread",)
    with pytest.raises(ValueError, match="statistic"):
        TableView.from_entries(DEVICE, [], "mean")  # type: ignore[arg-type]


def test_table_only_predictors_sum_their_timings() -> None:
    rng = np.random.default_rng(1)
    blocks, isolated, in_context = _table(rng)
    table = TableView.from_entries(DEVICE, _entries(isolated, in_context, calls=0.01))
    subnet = blocks[:5]
    plain = BlockSum(table).predict(subnet)
    assert plain.total_ms == pytest.approx(sum(isolated[b.key] for b in subnet))
    assert plain.predictor == "block_sum" and plain.statistic == "p10" and plain.complete
    assert InContextSum(table).predict(subnet).total_ms == pytest.approx(
        sum(in_context[b.key] for b in subnet)
    )
    # One call each taken out, one call for the network put back.
    overhead = OverheadCorrectedSum(table).predict(subnet).total_ms
    assert overhead == pytest.approx(plain.total_ms - 5 * 0.01 + 0.01)
    unknown = BlockSum(table).predict([*subnet, _block("conv", "4x4", 8)])
    assert not unknown.complete and unknown.missing_keys == [_block("conv", "4x4", 8).key]


def test_learned_group_model_recovers_what_the_sum_misses_and_wins_the_selection() -> None:
    rng = np.random.default_rng(2)
    blocks, isolated, in_context = _table(rng)
    table = TableView.from_entries(DEVICE, _entries(isolated, in_context))
    subnets = [MeasuredSubnet(s, _truth(s, in_context)) for s in _subnets(blocks, rng, 80)]
    selection = select_predictor(table, subnets)
    reports = {r.name: r for r in selection.candidates}
    assert set(reports) == {"block_sum", "in_context", "learned:global", "learned:kind", "learned:group"}
    assert reports["learned:group"].rmspe < 1e-6 < reports["learned:kind"].rmspe < reports["block_sum"].rmspe
    assert selection.predictor.label == "learned:group"
    assert selection.predictor.expected_error == pytest.approx(reports["learned:group"].rmspe)
    assert isinstance(selection.predictor, LearnedPredictor)
    assert min(selection.predictor.model.coefficients) >= 0
    fresh = _subnets(blocks, rng, 5)
    for subnet in fresh:  # held out: never seen by the fit
        estimate = selection.predictor.predict(subnet)
        assert estimate.total_ms == pytest.approx(_truth(subnet, in_context), rel=1e-6)
        assert estimate.predictor == "learned:group" and estimate.expected_error is not None


def test_a_group_the_fit_never_saw_falls_back_to_the_global_model() -> None:
    rng = np.random.default_rng(3)
    blocks, isolated, in_context = _table(rng)
    seen = [b for b in blocks if "16x16" not in b.key or b.kind == "t.conv"]
    table = TableView.from_entries(DEVICE, _entries(isolated, in_context))
    subnets = [MeasuredSubnet(s, _truth(s, in_context)) for s in _subnets(seen, rng, 60)]
    model = fit_group_model(
        [(s.blocks, [in_context[b.key] for b in s.blocks], s.measured_ms) for s in subnets],
        "group",
        "in_context",
    )
    backup = fit_group_model(
        [(s.blocks, [in_context[b.key] for b in s.blocks], s.measured_ms) for s in subnets],
        "global",
        "in_context",
    )
    predictor = LearnedPredictor(table, model, backup)
    novel = [_block("attn", "16x16", 32), *seen[:3]]
    estimate = predictor.predict(novel)
    global_row = sum(in_context[b.key] for b in novel), len(novel), sum(b.params for b in novel) / 1e6
    expected = float(np.dot([*global_row, 1.0], backup.coefficients))
    assert estimate.total_ms == pytest.approx(expected)


def test_without_measured_subnets_the_in_context_sum_is_chosen() -> None:
    rng = np.random.default_rng(4)
    _, isolated, in_context = _table(rng)
    with_context = select_predictor(TableView.from_entries(DEVICE, _entries(isolated, in_context)), [])
    assert with_context.predictor.label == "in_context" and with_context.predictor.expected_error is None
    only_isolated = [e for e in _entries(isolated, in_context) if split_timing_key(e.key)[0] == "isolated"]
    assert select_predictor(TableView.from_entries(DEVICE, only_isolated), []).predictor.label == "block_sum"


def test_too_few_subnets_fit_no_learned_model() -> None:
    rng = np.random.default_rng(5)
    blocks, isolated, in_context = _table(rng)
    table = TableView.from_entries(DEVICE, _entries(isolated, in_context))
    subnets = [MeasuredSubnet(s, _truth(s, in_context)) for s in _subnets(blocks, rng, 12)]
    names = {r.name for r in select_predictor(table, subnets).candidates}
    assert "learned:group" not in names and "learned:global" in names


def test_sample_statistic() -> None:
    samples = [float(v) for v in range(1, 11)]
    assert sample_statistic(samples, "median") == pytest.approx(5.5)
    assert sample_statistic(samples, "p10") == pytest.approx(1.9)
    with pytest.raises(ValueError):
        sample_statistic([], "p10")


def test_timing_keys_round_trip() -> None:
    key = _block("conv", "8x8", 8).key
    assert split_timing_key(timing_key(key, "in_context")) == ("in_context", key)
    assert split_timing_key(timing_key(key, "call_overhead")) == ("call_overhead", key)
    assert timing_key(key, "isolated") == key and split_timing_key(key) == ("isolated", key)
    with pytest.raises(ValueError, match="timings must be among"):
        check_timings(["warm"])


def test_predecessors_are_the_blocks_before_in_a_subnet(space: SearchSpace) -> None:
    specs = space.all_blocks()
    before = predecessors(space, specs, [space.reference_config("big")])
    big = space.blocks(space.reference_config("big"))
    first = {}
    for i, spec in enumerate(big):  # a block's first occurrence decides
        first.setdefault(spec.key, big[i - 1] if i else None)
    assert before[big[0].key] is None and first[big[0].key] is None
    assert all(before[key] == prior for key, prior in first.items())
    assert set(before) == {s.key for s in specs}


def test_in_context_timing_runs_the_predecessor_untimed_before_each_sample() -> None:
    calls: list[str] = []

    class Recorder(nn.Module):
        def __init__(self, name: str):
            super().__init__()
            self.name = name

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(self.name)
            return x

    x = (torch.zeros(1),)
    samples = TorchCPUBackend().measure_in_context(
        Recorder("block"), x, before=(Recorder("prior"), x), warmup=1, repeats=3
    )
    assert len(samples) == 3 and all(s >= 0 for s in samples)
    assert calls == ["prior", "block"] * 4
    assert len(TorchCPUBackend().measure_call_overhead(x, warmup=0, repeats=2)) == 2


def test_measure_missing_fills_every_timing_with_its_provenance(space: SearchSpace) -> None:
    table = MemoryLatencyTable()
    report = measure_missing(
        space, "host-cpu-torch", table, configs=["small"], backend=TorchCPUBackend(), warmup=0, repeats=2
    )
    blocks = space.blocks(space.reference_config("small"))
    assert report.needed == 3 * len(blocks) == report.measured and report.clock == "thread"
    entries = {e.key: e for e in table.entries("host-cpu-torch")}
    for i, spec in enumerate(blocks):
        assert entries[spec.key].provenance["timing"] == "isolated"
        context = entries[timing_key(spec.key, "in_context")].provenance
        assert context["timing"] == "in_context" and context["after"] == (blocks[i - 1].key if i else None)
        assert entries[timing_key(spec.key, "call_overhead")].kind == spec.kind
    again = measure_missing(
        space, "host-cpu-torch", table, configs=["small"], backend=TorchCPUBackend(), warmup=0, repeats=2
    )
    assert again.measured == 0 and again.already_present == again.needed
    only = measure_missing(
        space,
        "other",
        MemoryLatencyTable(),
        configs=["small"],
        backend=TorchCPUBackend(),
        warmup=0,
        repeats=1,
        timings=["isolated"],
    )
    assert only.needed == len(blocks)


def test_subnets_to_measure_spread_first_then_where_predictors_disagree(space: SearchSpace) -> None:
    from latency_lut.predictors import table_predictors
    from latency_lut.sampling import choose_subnets
    from latency_lut.validate import sample_configs

    pool = sample_configs(space, 12, seed=0)
    spread = choose_subnets(space, pool, 4, {})
    assert len(spread) == 4 and len({i for i, _ in spread}) == 4
    sizes = [len(space.blocks(pool[i])) for i, _ in spread]
    assert sizes[0] == max(len(space.blocks(c)) for c in pool)  # the largest first
    assert all("spreads" in reason for _, reason in spread)

    # Two predictors that agree on subnets without 3x3 convs and disagree on those with them.
    blocks = {b.key: b for c in pool for b in space.blocks(c)}
    isolated = {key: 1.0 for key in blocks}
    in_context = {
        key: (3.0 if blocks[key]["k"] == 3 else 1.0) if "k" in blocks[key].arg_dict else 1.0 for key in blocks
    }
    table = TableView(DEVICE, "p10", isolated, in_context)
    candidates = dict(table_predictors(table))
    candidates["learned:global"] = candidates.pop("in_context")
    chosen = choose_subnets(space, pool, 3, candidates)
    convs = [sum(1 for b in space.blocks(pool[i]) if b.arg_dict.get("k") == 3) for i, _ in chosen]
    assert convs[0] == max(sum(1 for b in space.blocks(c) if b.arg_dict.get("k") == 3) for c in pool) > 0
    assert "disagree" in chosen[0][1]
