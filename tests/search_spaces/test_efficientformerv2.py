"""EfficientFormerV2 space: exact counts of the reference models, block decomposition, supernet."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import BlockSpec, ConfigError, OptionError, config_id, count_macs, count_params, get_space
from search_spaces._effv2_modules import EfficientFormerV2, relative_bias_index
from search_spaces.efficientformerv2 import EfficientFormerV2Space, EfficientFormerV2Supernet

PARAMS = {"s0": 3_600_256, "s1": 6_185_560, "s2": 12_710_112, "l": 26_322_288}
GMACS = {"s0": 0.41, "s1": 0.67, "s2": 1.27, "l": 2.59}
SMALL = {"resolution": 64, "num_classes": 10}


@pytest.fixture(scope="module")
def space() -> EfficientFormerV2Space:
    return get_space("efficientformerv2")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def small() -> EfficientFormerV2Space:
    return get_space("efficientformerv2", **SMALL)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def full_size_macs(space: EfficientFormerV2Space) -> dict[str, int]:
    """fvcore MACs of each reference model at 224 px, counted once."""
    return {name: count_macs(space.build(name), space.example_inputs()) for name in PARAMS}


# ----------------------------------------------------------------- reference models
@pytest.mark.parametrize("name", list(PARAMS))
def test_reference_models_have_exact_parameter_counts(space: EfficientFormerV2Space, name: str) -> None:
    assert count_params(space.build(name)) == PARAMS[name]
    assert sum(spec.params for spec in space.blocks(name)) == PARAMS[name]


@pytest.mark.parametrize(
    ("heads", "params"), [("both", 3_600_256), ("classifier", 3_423_256), ("none", 3_246_256)]
)
def test_s0_head_variants_have_exact_parameter_counts(heads: str, params: int) -> None:
    variant = get_space("efficientformerv2", heads=heads)
    assert count_params(variant.build("s0")) == params
    assert variant.count("s0")["params"] == params


@pytest.mark.slow
def test_reference_macs_match_fvcore_figures(full_size_macs: dict[str, int]) -> None:
    for name, gmacs in GMACS.items():
        assert full_size_macs[name] / 1e9 == pytest.approx(gmacs, rel=0.02), name


@pytest.mark.slow
def test_block_macs_add_up_to_the_whole_model_at_full_size(
    space: EfficientFormerV2Space, full_size_macs: dict[str, int]
) -> None:
    assert space.count("s0")["macs"] == full_size_macs["s0"]


def test_reference_configs_match_the_published_structure(space: EfficientFormerV2Space) -> None:
    s0 = space.canonicalize("s0")
    assert [s0[f"stage{i}.depth"] for i in range(4)] == [2, 2, 6, 4]
    assert [s0[f"stage{i}.width"] for i in range(4)] == [32, 48, 96, 176]
    assert [s0[f"stage2.block{j}.ratio"] for j in range(6)] == [4, 3, 3, 3, 4, 4]
    assert s0["stage2.block6.ratio"] == 0
    kinds = [spec.kind for spec in space.blocks("l")]
    assert kinds[0] == "effv2.stem" and kinds[-1] == "effv2.head"
    assert kinds.count("effv2.attn_ffn") == 12  # six at the end of stages 2 and 3
    assert kinds.count("effv2.downsample") == 2 and kinds.count("effv2.attn_downsample") == 1
    stage2 = [spec for spec in space.blocks("l") if spec.arg_dict.get("hw") == "14x14"]
    assert [spec.kind for spec in stage2[-7:]] == ["effv2.attn_ffn"] * 6 + ["effv2.attn_downsample"]
    assert all(spec["stride"] == 2 for spec in stage2 if spec.kind == "effv2.attn_ffn")


# ----------------------------------------------------------------- choices and canonical form
def test_choices_cover_every_reference_variant(space: EfficientFormerV2Space) -> None:
    choices = space.choice_map
    assert choices["stage2.depth"].options[-1] == 15 and choices["stage3.depth"].options[-1] == 10
    assert {96, 120, 144, 192} <= set(choices["stage2.width"].options)
    assert {176, 224, 288, 384} <= set(choices["stage3.width"].options)
    assert "stage2.block14.ratio" in choices and "stage2.block15.ratio" not in choices
    for choice in choices.values():
        assert list(choice.options) == sorted(choice.options)


def test_canonicalize_zeroes_ratios_beyond_depth_and_clamps_vit(space: EfficientFormerV2Space) -> None:
    config = space.canonicalize({"stage3.depth": 3, "stage3.vit": 6, "stage2.depth": 8, "stage2.vit": 2})
    assert config["stage3.vit"] == 3 and config["stage2.vit"] == 2
    assert [config[f"stage3.block{j}.ratio"] for j in range(5)] == [4, 4, 4, 0, 0]
    same = space.canonicalize({"stage3.depth": 3, "stage3.vit": 4, "stage2.depth": 8, "stage2.vit": 2})
    assert config_id(same) == config_id(config)


@pytest.mark.parametrize("field", ["stage1.depth", "stage3.width"])
def test_zero_depth_or_width_is_rejected(space: EfficientFormerV2Space, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        space.canonicalize({field: 0})
    assert info.value.field == field
    assert info.value.allowed == list(space.choice_map[field].options)


def test_zero_ratio_within_depth_is_rejected(space: EfficientFormerV2Space) -> None:
    with pytest.raises(ConfigError, match=r"stage0\.block1\.ratio") as info:
        space.canonicalize({"stage0.depth": 3, "stage0.block1.ratio": 0})
    assert info.value.allowed == [2, 3, 4]


def test_cardinality_counts_distinct_canonical_configs() -> None:
    class Tiny(EfficientFormerV2Space):
        depth_options = ((1, 2), (1,), (1, 2), (1, 2))
        width_options = ((32, 40), (48,), (96,), (176, 224))
        ratio_options = (2, 3)
        vit_options = (0, 1, 2)

    tiny = Tiny(resolution=64, num_classes=10)
    names = list(tiny.choice_map)
    canonical = {
        config_id(tiny.canonicalize(dict(zip(names, values, strict=True))))
        for values in itertools.product(*(tiny.choice_map[n].options for n in names))
    }
    assert len(canonical) == tiny.cardinality == 6 * 2 * 16 * 16 * 2 * 2


def test_full_cardinality_formula(space: EfficientFormerV2Space) -> None:
    def stage(depths: range, widths: int, attention: bool) -> int:
        return widths * sum(3**d * (min(d, 6) + 1 if attention else 1) for d in depths)

    expected = (
        stage(range(1, 6), 2, False)
        * stage(range(1, 6), 3, False)
        * stage(range(1, 16), 5, True)
        * stage(range(1, 11), 6, True)
    )
    assert space.cardinality == expected


def test_mutate_and_crossover_keep_zero_attention_blocks(space: EfficientFormerV2Space) -> None:
    rng = np.random.default_rng(4)
    parent = space.canonicalize({"stage2.vit": 0, "stage3.vit": 0})
    children = [space.mutate(parent, rng) for _ in range(20)]
    assert sum(child["stage2.vit"] == 0 for child in children) >= 10
    other = space.canonicalize({"stage2.vit": 0, "stage3.vit": 0, "stage0.depth": 1})
    assert space.crossover(parent, other, rng)["stage3.vit"] == 0


# ----------------------------------------------------------------- blocks
def test_block_keys_do_not_depend_on_position(space: EfficientFormerV2Space) -> None:
    specs = space.blocks("l")
    keys = [spec.key for spec in specs]
    assert len(set(keys)) < len(keys)
    assert "effv2.ffn|batch=1|dim=192|dtype=fp32|hw=14x14|ratio=3" in keys
    for spec in specs:
        assert not {"stage", "block", "index", "position"} & set(spec.arg_dict), spec.key


def test_all_blocks_is_exact_and_small(space: EfficientFormerV2Space) -> None:
    listed = space.all_blocks()
    # stem 2; FFN 3 ratios x widths per stage; attention blocks 3 x widths in stages 2, 3;
    # downsamplings: every pair of neighbouring widths; head per last-stage width.
    expected = 2 + 3 * (2 + 3 + 5 + 6) + 3 * (5 + 6) + (2 * 3 + 3 * 5 + 5 * 6) + 6
    assert len(listed) == len({spec.key for spec in listed}) == expected


def test_all_blocks_equals_the_union_over_every_config_of_a_tiny_space() -> None:
    class Tiny(EfficientFormerV2Space):
        depth_options = ((1,), (1,), (1, 2), (1,))
        width_options = ((32, 40), (48,), (96, 120), (176,))
        ratio_options = (2, 4)
        vit_options = (0, 1)

    tiny = Tiny(resolution=64, num_classes=10)
    names = list(tiny.choice_map)
    seen = set()
    for values in itertools.product(*(tiny.choice_map[n].options for n in names)):
        seen.update(spec.key for spec in tiny.blocks(dict(zip(names, values, strict=True))))
    assert seen == {spec.key for spec in tiny.all_blocks()}


@pytest.mark.parametrize("which", ["smallest", "random", pytest.param("largest", marks=pytest.mark.slow)])
def test_blocks_chain_shapes_and_macs_add_up(small: EfficientFormerV2Space, which: str) -> None:
    configs = {"smallest": small.smallest, "largest": small.largest}
    config = configs[which]() if which in configs else small.sample(np.random.default_rng(5))
    x = small.example_inputs()[0]
    for spec in small.blocks(config):
        module, (example,) = small.build_block(spec)
        assert example.shape == x.shape, spec.key
        with torch.no_grad():
            x = module.eval()(x)
    assert x.shape == (1, 10)
    assert small.count(config)["macs"] == count_macs(small.build(config), small.example_inputs())


def test_build_block_rejects_bad_specs(small: EfficientFormerV2Space) -> None:
    with pytest.raises(ValueError, match="known kinds"):
        small.build_block(BlockSpec.make("unet.resnet", dim=8, hw="8x8", batch=1, dtype="fp32"))
    with pytest.raises(ValueError, match="ratio"):
        small.build_block(BlockSpec.make("effv2.ffn", dim=8, hw="8x8", batch=1, dtype="fp32"))
    with pytest.raises(ValueError, match="hw"):
        small.build_block(BlockSpec.make("effv2.ffn", dim=8, ratio=2, hw="8x4", batch=1, dtype="fp32"))
    with pytest.raises(ValueError, match="fp32"):
        small.build_block(BlockSpec.make("effv2.ffn", dim=8, ratio=2, hw="8x8", batch=1, dtype="fp16"))


def test_build_block_rejects_non_positive_sizes(small: EfficientFormerV2Space) -> None:
    with pytest.raises(ValueError, match="dim must be a positive"):
        small.build_block(BlockSpec.make("effv2.ffn", dim=-8, ratio=2, hw="8x8", batch=1, dtype="fp32"))


def test_relative_bias_index_numbers_offsets_in_order_of_appearance() -> None:
    for query_side, key_side, step in [(1, 1, 1), (1, 2, 2), (3, 3, 1), (7, 7, 1), (2, 4, 2), (7, 14, 2)]:
        offsets: dict[tuple[int, int], int] = {}
        expected = [
            offsets.setdefault((abs(qy * step - ky), abs(qx * step - kx)), len(offsets))
            for qy, qx in itertools.product(range(query_side), repeat=2)
            for ky, kx in itertools.product(range(key_side), repeat=2)
        ]
        count, index = relative_bias_index(query_side, key_side, step)
        assert count == len(offsets)
        assert index.tolist() == torch.tensor(expected).view(query_side**2, key_side**2).tolist()


def test_build_block_uses_the_batch_of_the_key(small: EfficientFormerV2Space) -> None:
    spec = BlockSpec.make("effv2.attn_ffn", dim=96, ratio=3, stride=2, hw="4x4", batch=3, dtype="fp32")
    module, (x,) = small.build_block(spec)
    assert x.shape == (3, 96, 4, 4)
    assert module.eval()(x).shape == (3, 96, 4, 4)


# ----------------------------------------------------------------- options and outputs
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"resolution": 100}, "resolution"),
        ({"resolution": 16}, "resolution"),
        ({"resolution": 2048}, "resolution"),
        ({"resolution": "224"}, "resolution"),
        ({"num_classes": 0}, "num_classes"),
        ({"heads": "three"}, "heads"),
        ({"dtype": "fp16"}, "dtype"),
    ],
)
def test_bad_options_name_the_field_and_allowed_values(options: dict, field: str) -> None:
    with pytest.raises(OptionError) as info:
        get_space("efficientformerv2", **options)
    assert info.value.field == field
    assert field in str(info.value)
    assert info.value.allowed


def test_resolution_not_a_multiple_of_32_says_so() -> None:
    with pytest.raises(OptionError, match="multiple of 32") as info:
        get_space("efficientformerv2", resolution=96 + 16)
    assert "multiple of 32" in str(info.value.allowed)


@pytest.mark.parametrize(("heads", "shape"), [("both", (2, 10)), ("classifier", (2, 10)), ("none", (2, 176))])
def test_forward_output_shapes(heads: str, shape: tuple[int, int]) -> None:
    variant = get_space("efficientformerv2", heads=heads, **SMALL)
    model = variant.build("s0").eval()
    with torch.no_grad():
        assert model(*variant.example_inputs(batch=2)).shape == shape


def test_both_heads_return_a_pair_in_train_mode_and_their_mean_in_eval(small: EfficientFormerV2Space) -> None:
    model = small.build("s0")
    x = small.example_inputs(batch=2)
    model.train()
    logits, distilled = model(*x)
    model.eval()
    with torch.no_grad():
        averaged = model(*x)
    assert logits.shape == distilled.shape == averaged.shape == (2, 10)


def test_attention_resolution_follows_the_resolution_option() -> None:
    for resolution in (32, 96, 224):
        variant = get_space("efficientformerv2", resolution=resolution, num_classes=10)
        model = variant.build("s0").eval()
        with torch.no_grad():
            assert model(*variant.example_inputs()).shape == (1, 10)
        stage3 = [spec for spec in variant.blocks("s0") if spec.kind == "effv2.attn_ffn"][-1]
        assert stage3["hw"] == f"{resolution // 32}x{resolution // 32}"


# ----------------------------------------------------------------- supernet
def _randomize(module: nn.Module, seed: int) -> None:
    """Move layer scales, biases and BN statistics away from their init so every branch matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "layer_scale" in name:
                parameter.uniform_(0.5, 1.0, generator=generator)
            elif "attention_biases" in name:
                parameter.normal_(0.0, 0.5, generator=generator)
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.normal_(0.0, 0.1, generator=generator)
                layer.running_var.uniform_(0.5, 2.0, generator=generator)
                layer.weight.uniform_(0.5, 1.5, generator=generator)
                layer.bias.normal_(0.0, 0.1, generator=generator)


@pytest.fixture(scope="module")
def supernet(small: EfficientFormerV2Space) -> EfficientFormerV2Supernet:
    net = small.supernet()
    _randomize(net, seed=0)
    return net.eval()


def test_extract_equals_the_activated_supernet(
    small: EfficientFormerV2Space, supernet: EfficientFormerV2Supernet
) -> None:
    rng = np.random.default_rng(6)
    configs = [small.smallest(), small.largest(), *(small.sample(rng) for _ in range(5))]
    x = small.example_inputs(batch=2)
    outputs = []
    for config in configs:
        supernet.activate(config)
        extracted = supernet.extract(config)
        assert type(extracted) is EfficientFormerV2
        assert count_params(extracted) == small.count(config)["params"]
        assert not extracted.training
        with torch.no_grad():
            expected, got = supernet(*x), extracted(*x)
        assert got.shape == (2, 10)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        outputs.append(expected)
    # Subnets really differ, so the comparison above is not vacuous.
    for a, b in itertools.combinations(outputs, 2):
        assert not torch.allclose(a, b, atol=1e-4)


def test_extract_leaves_the_active_subnet_alone(
    small: EfficientFormerV2Space, supernet: EfficientFormerV2Supernet
) -> None:
    supernet.activate("s0")
    supernet.extract("l")
    assert supernet.active_config == small.canonicalize("s0")


def test_supernet_trains_only_the_active_subnet(small: EfficientFormerV2Space) -> None:
    net = small.supernet().train()
    config = small.canonicalize({"stage3.depth": 2, "stage3.vit": 1, "stage2.vit": 0, "stage0.width": 32})
    net.activate(config)
    stem_stats = net.stem.conv1.bn.running_mean.clone()
    logits, distilled = net(*small.example_inputs(batch=2))
    # Width 32 of 40: the stem's first conv runs 16 of its 20 channels, and only their statistics move.
    moved = net.stem.conv1.bn.running_mean != stem_stats
    assert moved[:16].all() and not moved[16:].any()
    (logits.sum() + distilled.sum()).backward()
    stage3 = net.stages[3]
    assert stage3[1].token_mixer.q.conv.weight.grad is not None
    assert stage3[0].token_mixer.q.conv.weight.grad is None  # FFN-only block: attention unused
    assert stage3[2].mlp.fc1.weight.grad is None  # beyond the depth
    stem_grad = net.stem.conv2.conv.weight.grad
    assert stem_grad is not None and stem_grad[32:].abs().sum() == 0 and stem_grad[:32].abs().sum() > 0


def test_supernet_size_and_default_activation(small: EfficientFormerV2Space) -> None:
    net = small.supernet()
    assert net.active_config == small.largest()
    assert count_params(net) > count_params(small.build(small.largest()))
    with torch.no_grad():
        assert math.isfinite(float(net.eval()(*small.example_inputs()).sum()))
