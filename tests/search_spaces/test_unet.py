"""Diffusion-UNet space: SD-v1.5's exact counts, the SnapFusion / SnapGen configs, canonical form,
layout rules (units, skip pairing), exact enumeration, supernet and robust training, memory."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import BlockSpec, ConfigError, OptionError, config_id, count_macs, count_params, get_space
from search_spaces._memory import measure_call
from search_spaces._unet_layout import units
from search_spaces._unet_modules import ResnetBlock, Transformer, UNet
from search_spaces.unet import UNetSpace, UNetSupernet

SD15_PARAMS = 859_520_964
SMALL = {"latent_size": 8, "width_scale": 0.1, "text_tokens": 8, "cross_attention_dim": 32}


@pytest.fixture(scope="module")
def space() -> UNetSpace:
    return get_space("unet")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def small() -> UNetSpace:
    return get_space("unet", **SMALL)  # type: ignore[return-value]


def _params(space: UNetSpace, config: str | dict[str, Any]) -> int:
    return sum(spec.params for spec in space.blocks(config))


def _stage_params(space: UNetSpace, config: str | dict[str, Any]) -> dict[tuple[str, str], list[float]]:
    """Per (stage, slot) the block parameter counts in millions, rounded as ARCHITECTURES.md lists them."""
    out: dict[tuple[str, str], list[float]] = {}
    for entry in space.layout(config).entries:
        out.setdefault((entry.stage, entry.slot), []).append(round(entry.spec.params / 1e6, 2))
    return out


# ----------------------------------------------------------------- reference configs
def test_sd15_has_exactly_the_published_parameter_count(space: UNetSpace) -> None:
    with torch.device("meta"):
        model = space.build("sd15")
    assert count_params(model) == SD15_PARAMS
    assert sum(spec.params for spec in space.blocks("sd15")) == SD15_PARAMS


def test_sd15_per_block_parameter_counts(space: UNetSpace) -> None:
    got = _stage_params(space, "sd15")
    # ARCHITECTURES.md section 1 names diffusers' up_blocks by position: its up0 is our up3.
    expected = {
        ("down0", "resnet"): [2.26, 2.26], ("down0", "transformer"): [2.55, 2.55],
        ("down1", "resnet"): [6.56, 8.20], ("down1", "transformer"): [9.19, 9.19],
        ("down2", "resnet"): [24.58, 31.14], ("down2", "transformer"): [34.76, 34.76],
        ("down3", "resnet"): [31.14, 31.14],
        ("mid", "resnet"): [31.14, 31.14], ("mid", "transformer"): [34.76],
        ("up3", "resnet"): [49.16] * 3,
        ("up2", "resnet"): [49.16, 49.16, 40.97], ("up2", "transformer"): [34.76] * 3,
        ("up1", "resnet"): [16.80, 12.70, 10.66], ("up1", "transformer"): [9.19] * 3,
        ("up0", "resnet"): [4.41, 3.38, 3.38], ("up0", "transformer"): [2.55] * 3,
        ("", "time"): [2.05],
    }  # fmt: skip
    for place, counts in expected.items():
        assert got[place] == counts, place
    assert ("down3", "transformer") not in got and ("up3", "transformer") not in got
    exact = {spec.key: spec.params for spec in space.blocks("sd15")}
    assert exact["unet.time_embed|batch=1|dim=320|dtype=fp32|emb=1280"] == 2_050_560
    assert (
        exact["unet.resnet|batch=1|conv=full|dim=320|dtype=fp32|emb=1280|hw=64x64|in_dim=320|skip_dim=0"]
        == 2_255_040
    )
    key = (
        "unet.transformer|attention=mha|batch=1|context=768|depth=1|dim=320|dtype=fp32|ffn_ratio=4|head_dim=40"
        "|hw=64x64|self_attention=on|tokens=77"
    )
    assert exact[key] == 2_546_240


def test_transformer_parameter_shortcut_matches_whole_builds(space: UNetSpace) -> None:
    """`spec` counts transformers as shell + depth x layer; a whole build must agree."""
    rng = np.random.default_rng(0)
    specs = [s for s in space.all_blocks() if s.kind == "unet.transformer"]
    for index in rng.choice(len(specs), size=12, replace=False):
        spec = specs[int(index)]
        with torch.device("meta"):
            assert count_params(space._module(spec)) == spec.params, spec.key


@pytest.mark.parametrize("ref", ["sd15", "snapfusion", "snapgen"])
def test_block_macs_add_up_to_the_whole_subnet(small: UNetSpace, ref: str) -> None:
    assert small.count(ref)["macs"] == count_macs(small.build(ref), small.example_inputs())


def test_snapfusion_has_the_papers_block_counts(space: UNetSpace) -> None:
    kinds = Counter((e.stage, e.slot) for e in space.layout("snapfusion").entries)
    # SnapFusion's 7 stages; its Mid covers our down3, mid and up3.
    groups = {
        "Down-1": ["down0"], "Down-2": ["down1"], "Down-3": ["down2"], "Mid": ["down3", "mid", "up3"],
        "Up-1": ["up2"], "Up-2": ["up1"], "Up-3": ["up0"],
    }  # fmt: skip
    table = {
        "Down-1": (0, 2), "Down-2": (2, 2), "Down-3": (2, 1), "Mid": (1, 4),
        "Up-1": (6, 2), "Up-2": (3, 3), "Up-3": (0, 3),
    }  # fmt: skip
    for group, (transformers, resnets) in table.items():
        assert sum(kinds[(s, "transformer")] for s in groups[group]) == transformers, group
        assert sum(kinds[(s, "resnet")] for s in groups[group]) == resnets, group
    assert 0.72e9 < _params(space, "snapfusion") < 0.79e9  # what the block counts give


def test_snapgen_follows_the_reported_choices(space: UNetSpace) -> None:
    config = space.canonicalize("snapgen")
    assert config["levels"] == 3 and config["level3.channels"] == 0
    assert [config[f"level{lv}.channels"] for lv in range(3)] == [256, 512, 896]
    transformers = [s for s in space.layout(config).entries if s.slot == "transformer"]
    by_level = {entry.spec["hw"]: entry.spec for entry in transformers}
    assert [by_level[hw]["depth"] for hw in ("64x64", "32x32", "16x16")] == [1, 2, 4]
    assert all(t.spec["self_attention"] == ("on" if t.spec["hw"] == "16x16" else "off") for t in transformers)
    assert {(t.spec["attention"], t.spec["ffn_ratio"], t.spec["head_dim"]) for t in transformers} == {
        ("mqa", 3, 64)
    }
    assert {e.spec["conv"] for e in space.layout(config).entries if e.slot == "resnet"} == {"separable"}
    # Each of SnapGen's choices makes the model smaller than the alternative.
    params = _params(space, config)
    for name, other in [("down1.resnet_conv", "full"), ("down2.attention", "mha"), ("down2.ffn_ratio", 4)]:
        assert _params(space, {**config, name: other}) > params, name


# ----------------------------------------------------------------- canonical form and options
def test_three_levels_zero_every_level3_choice(space: UNetSpace) -> None:
    config = space.canonicalize({**space.reference_configs()["sd15"], "levels": 3})
    level3 = {name: value for name, value in config.items() if name.startswith(("level3.", "down3.", "up3."))}
    assert level3 and set(level3.values()) == {0}
    assert [e.stage for e in space.layout(config).entries if e.slot == "down"] == ["down0", "down1"]


def test_irrelevant_choices_are_zeroed(space: UNetSpace) -> None:
    config = space.canonicalize({"down0.transformers": 0, "mid.resnets": 0})
    assert config["down0.head_dim"] == config["down0.transformer_depth"] == config["down0.attention"] == 0
    assert config["mid.resnets"] == 0 and config["mid.resnet_conv"] == 0
    assert config_id(config) == space.config_id(
        {"down0.transformers": 0, "down0.head_dim": 40, "mid.resnets": 0}
    )


def test_a_stage_that_changes_width_keeps_a_resnet(space: UNetSpace) -> None:
    config = space.canonicalize({"down1.resnets": 0, "up0.resnets": 0, "down0.resnets": 0})
    assert config["down1.resnets"] == 1  # 320 -> 640 needs a ResNet
    assert config["up0.resnets"] == 1  # 640 -> 320 too
    assert config["down0.resnets"] == 0  # conv_in already gives level 0's width
    same = space.canonicalize(
        {"level2.channels": 896, "level3.channels": 896, "down3.resnets": 0, "up2.resnets": 0}
    )
    assert same["down3.resnets"] == 0 and same["up2.resnets"] == 0
    wider = space.canonicalize({"level2.channels": 896, "level3.channels": 1280, "down3.resnets": 0})
    assert wider["down3.resnets"] == 1


@pytest.mark.parametrize("field", ["down0.head_dim", "up1.resnet_conv", "levels", "level2.channels"])
def test_zero_for_a_relevant_choice_is_rejected(space: UNetSpace, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        space.canonicalize({field: 0})
    assert info.value.field == field
    assert info.value.allowed == list(space.choice_map[field].options)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"latent_size": 60}, "latent_size"),
        ({"latent_size": 4}, "latent_size"),
        ({"width_scale": 0.01}, "width_scale"),
        ({"dtype": "bf16"}, "dtype"),
        ({"text_tokens": 0}, "text_tokens"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(OptionError) as info:
        get_space("unet", **options)
    assert info.value.field == field and field in str(info.value) and info.value.allowed


def test_width_scale_rounds_to_groupnorm_multiples() -> None:
    assert [get_space("unet", width_scale=0.1).width(c) for c in (256, 320, 640, 896, 1280)] == [
        32,
        32,
        64,
        96,
        128,
    ]
    assert [get_space("unet", width_scale=0.0625).width(c) for c in (320, 640, 1280)] == [32, 32, 96]
    assert get_space("unet").width(896) == 896


class _Tiny(UNetSpace):
    channel_options = ((256,), (512,), (896,), (896, 1280))
    resnet_options = {"down": (0, 1), "mid": (0,), "up": (0, 2)}  # noqa: RUF012
    transformer_options = {"down": (0, 2), "mid": (0,), "up": (0,)}  # noqa: RUF012
    conv_options = ("full",)
    depth_options = (1,)
    self_attention_options = ("on",)
    ffn_ratio_options = (2,)
    attention_options = ("mqa",)
    head_dim_options = (64,)


@pytest.fixture(scope="module")
def tiny_canonical() -> dict[str, dict[str, Any]]:
    """Every canonical config of a tiny UNet space, by id, from every raw config."""
    tiny = _Tiny(latent_size=8, width_scale=0.0625)
    names = list(tiny.choice_map)
    out: dict[str, dict[str, Any]] = {}
    for values in itertools.product(*(tiny.choice_map[n].options for n in names)):
        config = tiny.canonicalize(dict(zip(names, values, strict=True)))
        out.setdefault(config_id(config), config)
    return out


def test_cardinality_counts_distinct_canonical_configs(tiny_canonical: dict[str, dict[str, Any]]) -> None:
    # levels 4 with level3 896: 4 * 2 * 2 * 4 * 2 * 2 (down0, down1, down2, down3, up3, up2; the stages
    # that change width have one ResNet count left); level3 1280: 4 * 2 * 2 * 2 * 2; levels 3: 4 * 2 * 2 * 2.
    assert len(tiny_canonical) == _Tiny(latent_size=8, width_scale=0.0625).cardinality == 256 + 64 + 32


def test_all_blocks_equals_the_union_over_every_config(tiny_canonical: dict[str, dict[str, Any]]) -> None:
    tiny = _Tiny(latent_size=8, width_scale=0.0625)
    seen = {spec.key for config in tiny_canonical.values() for spec in tiny.blocks(config)}
    assert seen == {spec.key for spec in tiny.all_blocks()}


def test_all_blocks_is_exact_and_bounded(space: UNetSpace) -> None:
    listed = space.all_blocks()
    assert len(listed) == len({spec.key for spec in listed}) < 2000
    kinds = Counter(spec.kind for spec in listed)
    assert kinds["unet.transformer"] == 8 * 4 * 2 * 3 * 2 * 4  # (level, width) x attributes


# ----------------------------------------------------------------- layout
def test_units_interleave_resnets_and_transformers() -> None:
    assert units(2, 2) == [["resnet", "transformer"]] * 2
    assert units(2, 1) == [["resnet", "transformer"], ["resnet"]]
    assert units(2, 6) == [["resnet", "transformer", "transformer", "transformer"]] * 2
    assert units(3, 4) == [
        ["resnet", "transformer", "transformer"],
        ["resnet", "transformer"],
        ["resnet", "transformer"],
    ]
    assert units(0, 3) == [["transformer"]] * 3 and units(0, 0) == [] and units(1, 0) == [["resnet"]]


def _check_skip_stack(space: UNetSpace, config: dict[str, Any]) -> list[int]:
    """Replay the runner's skip stack on the layout: every pop finds a tensor of the popping ResNet's
    skip width and side, nothing is left over. Returns the skip widths, in pop order."""
    stack: list[tuple[int, int]] = []
    popped = []
    for entry in space.layout(config).entries:
        if entry.step.pop:
            width, side = stack.pop()
            assert (width, f"{side}x{side}") == (entry.spec["skip_dim"], entry.spec["hw"])
            popped.append(width)
        elif entry.slot == "resnet":
            assert entry.spec["skip_dim"] == 0
        if entry.step.push:
            stack.append((entry.out_dim, entry.out_side))
    assert not stack
    return popped


def test_skip_pairing_is_consistent_on_random_configs(space: UNetSpace) -> None:
    rng = np.random.default_rng(1)
    for config in [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(40))]:
        _check_skip_stack(space, config)


def test_skip_pairing_with_more_or_fewer_up_resnets(space: UNetSpace) -> None:
    sd15 = space.reference_configs()["sd15"]
    assert _check_skip_stack(space, sd15)[-3:] == [320, 320, 320]
    more = space.layout({**sd15, "up0.resnets": 4}).entries
    assert [e.spec["skip_dim"] for e in more if e.stage == "up0" and e.slot == "resnet"] == [320, 320, 320, 0]
    fewer = {**sd15, "up1.resnets": 1}
    # up1 takes only the newest skip of level 1; level 1's entering tensor and first unit are not kept.
    assert [
        e.spec["skip_dim"] for e in space.layout(fewer).entries if e.stage == "up1" and e.slot == "resnet"
    ] == [640]
    assert sum(e.step.push for e in space.layout(fewer).entries) == 12 - 2
    _check_skip_stack(space, fewer)


def test_block_keys_do_not_depend_on_position(space: UNetSpace) -> None:
    specs = space.blocks("sd15")
    assert len({s.key for s in specs}) == 27 < len(specs)
    for spec in specs:
        assert not {"stage", "block", "index", "position", "level"} & set(spec.arg_dict), spec.key


# ----------------------------------------------------------------- running
@pytest.mark.parametrize("ref", ["sd15", "snapfusion", "snapgen"])
def test_forward_and_backward_at_a_small_size(small: UNetSpace, ref: str) -> None:
    torch.manual_seed(0)
    model = small.build(ref)
    sample, timestep, context = small.example_inputs(batch=2)
    out = model(sample, timestep, context)
    assert out.shape == sample.shape
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_build_block_rejects_bad_specs(small: UNetSpace) -> None:
    with pytest.raises(ValueError, match="known kinds"):
        small.build_block(BlockSpec.make("effv2.ffn", dim=32, ratio=2, hw="8x8", batch=1, dtype="fp32"))
    with pytest.raises(ValueError, match="lacks args"):
        small.build_block(BlockSpec.make("unet.down", dim=32, batch=1, dtype="fp32"))
    with pytest.raises(ValueError, match="conv must be one of"):
        spec = BlockSpec.make(
            "unet.resnet", in_dim=32, skip_dim=0, dim=32, emb=128, conv="dw", hw="8x8", batch=1, dtype="fp32"
        )
        small.build_block(spec)
    with pytest.raises(ValueError, match="multiples of the 32"):
        small.build_block(BlockSpec.make("unet.down", dim=40, hw="8x8", batch=1, dtype="fp32"))
    with pytest.raises(ValueError, match="hw"):
        small.build_block(BlockSpec.make("unet.down", dim=32, hw="8x4", batch=1, dtype="fp32"))


def test_fp16_blocks_and_subnets_run() -> None:
    half = get_space("unet", dtype="fp16", **SMALL)
    spec = half.blocks("snapgen")[3]
    module, inputs = half.build_block(spec)
    assert "dtype=fp16" in spec.key and module(*inputs).dtype == torch.float16
    with torch.no_grad():
        assert half.build("snapgen").eval()(*half.example_inputs()).dtype == torch.float16


# ----------------------------------------------------------------- supernet
def _randomize(module: nn.Module, seed: int) -> None:
    """Move norm affines and biases away from their init so every slice matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.dim() == 1:
                parameter.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3, generator=generator)


@pytest.fixture(scope="module")
def supernet(small: UNetSpace) -> UNetSupernet:
    net = small.supernet()
    _randomize(net, 0)
    return net.eval()


def test_extract_equals_the_activated_supernet(small: UNetSpace, supernet: UNetSupernet) -> None:
    rng = np.random.default_rng(2)
    configs = [small.smallest(), small.largest(), *small.reference_configs().values()]
    configs += [small.sample(rng) for _ in range(4)]
    inputs = small.example_inputs(batch=2)
    outputs = []
    for config in configs:
        supernet.activate(config)
        extracted = supernet.extract(config)
        assert type(extracted) is UNet and not extracted.training
        assert count_params(extracted) == small.count(config)["params"]
        with torch.no_grad():
            expected, got = supernet(*inputs), extracted(*inputs)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        outputs.append(expected)
    for a, b in itertools.combinations(outputs, 2):
        assert not torch.allclose(a, b, atol=1e-4)


def test_extract_leaves_the_active_subnet_alone(small: UNetSpace, supernet: UNetSupernet) -> None:
    supernet.activate("snapgen")
    supernet.extract("sd15")
    assert supernet.active_config == small.canonicalize("snapgen")


def test_supernet_trains_only_the_active_subnet(small: UNetSpace) -> None:
    net = small.supernet().train()
    config = small.canonicalize({**small.reference_configs()["snapgen"]})
    net.activate(config)
    out = net(*small.example_inputs(batch=2))
    out.square().mean().backward()
    down1 = net.stages["down1"]
    assert down1["transformers"][0].proj_in.weight.grad is not None
    assert down1["transformers"][2].proj_in.weight.grad is None  # beyond the count
    assert down1["resnets"][0].conv1["separable"].depthwise.weight.grad is not None
    assert down1["resnets"][0].conv1["full"].weight.grad is None  # the other conv variant
    assert all(p.grad is None for p in net.stages["down3"].parameters())  # 3 levels
    layer = down1["transformers"][0].layers[0]
    assert layer.attn1.to_q.weight.grad is None  # self-attention off at level 1
    to_k = layer.attn2.to_k.weight.grad
    assert to_k is not None and to_k[64:].abs().sum() == 0 < to_k[:64].abs().sum()  # one MQA head of 64


def _calls(net: UNetSupernet) -> Counter[str]:
    counts: Counter[str] = Counter()
    for module in net.modules():
        if isinstance(module, ResnetBlock | Transformer):

            def hook(m: nn.Module, args: Any, out: Any) -> None:
                counts[
                    "same" if isinstance(m, Transformer) or args[0].shape[1] == m.active_out else "change"
                ] += 1

            module.register_forward_hook(hook)
    return counts


def test_robust_training_skips_blocks_in_train_mode_only(small: UNetSpace) -> None:
    net = small.supernet()
    net.activate("sd15")
    layout = small.layout("sd15").entries
    changing = sum(1 for e in layout if e.slot == "resnet" and e.spec["in_dim"] != e.spec["dim"])
    blocks = sum(1 for e in layout if e.slot in ("resnet", "transformer"))
    counts = _calls(net)
    inputs = small.example_inputs()
    net.skip_prob = 1.0
    with torch.no_grad():
        full = net.eval()(*inputs)
        assert sum(counts.values()) == blocks  # eval never skips
        counts.clear()
        skipped = net.train()(*inputs)
        assert counts == Counter({"change": changing})  # only ResNets that change the width run
        counts.clear()
        torch.manual_seed(3)
        net.skip_prob = 0.5
        net(*inputs)
        assert changing < sum(counts.values()) < blocks
        net.skip_prob = 0.0
        torch.testing.assert_close(net(*inputs), full)
    assert skipped.shape == full.shape and not torch.allclose(skipped, full, atol=1e-3)


# ----------------------------------------------------------------- memory
def test_memory_equals_a_whole_subnet_measurement(small: UNetSpace) -> None:
    rng = np.random.default_rng(4)
    for config in ["sd15", "snapgen", small.sample(rng), small.sample(rng)]:
        with torch.device("meta"):
            model = small.build(config)
        inputs = [t.to("meta") for t in small.example_inputs()]
        _, peak = measure_call(model, *inputs)
        assert small.memory(config) == peak + sum(t.nelement() * t.element_size() for t in inputs)


def test_memory_follows_size_and_dtype() -> None:
    low, high = (get_space("unet", **{**SMALL, "latent_size": side}).memory("sd15") for side in (8, 16))
    assert high > 3 * low
    half = get_space("unet", **{**SMALL, "dtype": "fp16"}).memory("sd15")
    assert 0.45 * low < half < 0.55 * low
    full = get_space("unet")
    assert 0.5 * 2**30 < full.memory("sd15") < 4 * 2**30  # SD-v1.5 at 512 px: about a gigabyte
