"""Temporal (SnapGen-V) space: the frozen base, placement of temporal layers, identity at init,
supernet with trainable temporal layers only, memory objective."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import BlockSpec, ConfigError, OptionError, count_macs, count_params, get_space
from search_spaces._memory import measure_call
from search_spaces._temporal_modules import TEMPORAL_TYPES, TemporalAttention, TemporalConv, VideoUNet
from search_spaces._unet_modules import ResnetBlock, Transformer, UNet
from search_spaces.temporal import TemporalSpace, TemporalSupernet

FRAMES = 3
SMALL = {"latent_size": 8, "width_scale": 0.1, "text_tokens": 8, "cross_attention_dim": 32, "frames": FRAMES}
STAGES = ["down0", "down1", "down2", "mid", "up2", "up1", "up0"]  # snapgen has 3 levels


@pytest.fixture(scope="module")
def space() -> TemporalSpace:
    return get_space("temporal")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def small() -> TemporalSpace:
    return get_space("temporal", **SMALL)  # type: ignore[return-value]


def _only(space: TemporalSpace, **stages: tuple[str, int, int]) -> dict[str, Any]:
    """A config with temporal layers (type, count, after) only in the named stages."""
    config: dict[str, Any] = dict(space.reference_configs()["image"])
    for stage, (kind, count, after) in stages.items():
        config.update(
            {f"{stage}.temporal": kind, f"{stage}.temporal_count": count, f"{stage}.temporal_after": after}
        )
    return space.canonicalize(config)


def _configs(space: TemporalSpace, n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [space.canonicalize(name) for name in space.reference_configs()] + [
        space.sample(rng) for _ in range(n)
    ]


def _randomize_temporal(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, TemporalConv | TemporalAttention):
                for parameter in layer.parameters():
                    parameter.normal_(0.0, 0.2, generator=generator)


# ----------------------------------------------------------------- the base
def test_base_by_name_or_json() -> None:
    unet = get_space("unet", latent_size=16)
    by_name = get_space("temporal", base="sd15", latent_size=16)
    assert by_name.base_config == unet.canonicalize("sd15")
    config = unet.reference_configs()["snapfusion"]
    by_json = get_space("temporal", base=json.dumps(config), latent_size=16)
    assert by_json.base_config == unet.canonicalize("snapfusion")
    assert [s.key.replace("batch=16", "batch=1") for s in by_json.blocks("image")] == [
        s.key for s in unet.blocks(config)
    ]


@pytest.mark.parametrize("base", ["sd14", "{not json", "[1, 2]", '{"levels": 5}', '{"no_such_choice": 1}'])
def test_bad_base_is_an_option_error(base: str) -> None:
    with pytest.raises(OptionError) as info:
        get_space("temporal", base=base)
    assert info.value.field == "base" and "sd15" in str(info.value.allowed)


def test_image_config_is_the_base_at_a_batch_of_frames(space: TemporalSpace) -> None:
    specs = space.blocks("image")
    assert all(spec["batch"] == 16 for spec in specs)
    unet = get_space("unet")
    assert sum(spec.params for spec in specs) == sum(spec.params for spec in unet.blocks("snapgen"))


def test_bad_options_name_the_field() -> None:
    for options, field in [
        ({"frames": 1}, "frames"),
        ({"latent_size": 12}, "latent_size"),
        ({"base": 3}, "base"),
    ]:
        with pytest.raises(OptionError) as info:
            get_space("temporal", **options)
        assert info.value.field == field


# ----------------------------------------------------------------- canonical form
def test_canonicalize_zeroes_clamps_and_drops_missing_stages(space: TemporalSpace) -> None:
    config = space.canonicalize(
        {"down0.temporal": "none", "down1.temporal_after": 6, "down1.temporal": "attn"}
    )
    assert config["down0.temporal_count"] == config["down0.temporal_after"] == 0
    assert config["down1.temporal_after"] == 4  # snapgen's down1 has 2 ResNets and 2 transformers
    assert all(config[f"{stage}.temporal"] == 0 for stage in ("down3", "up3"))  # 3 levels
    assert space.config_id({**config, "down1.temporal_after": 5}) == space.config_id(config)
    sd15 = get_space("temporal", base="sd15")
    assert sd15.canonicalize({"down3.temporal": "conv1d"})["down3.temporal"] == "conv1d"


@pytest.mark.parametrize("field", ["down1.temporal_count", "mid.temporal"])
def test_zero_for_a_relevant_choice_is_rejected(space: TemporalSpace, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        space.canonicalize({"down1.temporal": "conv3d", field: 0})
    assert info.value.field == field
    assert info.value.allowed == list(space.choice_map[field].options)


def test_cardinality_is_the_product_of_distinct_stage_settings(space: TemporalSpace) -> None:
    image = space.canonicalize("image")
    total = 1
    for stage in ["down0", "down1", "down2", "down3", "mid", "up3", "up2", "up1", "up0"]:
        names = [f"{stage}.temporal", f"{stage}.temporal_count", f"{stage}.temporal_after"]
        settings = {
            tuple(space.canonicalize({**image, **dict(zip(names, values, strict=True))})[n] for n in names)
            for values in itertools.product(*(space.choice_map[n].options for n in names))
        }
        total *= len(settings)
    assert space.cardinality == total


# ----------------------------------------------------------------- layout
def _replay_skips(space: TemporalSpace, config: dict[str, Any]) -> None:
    """Every pop finds a skip tensor of the popping ResNet's width and side; nothing is left over."""
    stack: list[tuple[int, str]] = []
    for entry in space.layout(config):
        if entry.step.pop:
            assert stack.pop() == (entry.spec["skip_dim"], entry.spec["hw"])
        if entry.step.push:
            side = int(str(entry.spec["hw"]).split("x")[0]) // (2 if entry.spec.kind == "unet.down" else 1)
            stack.append((int(entry.spec["dim"]), f"{side}x{side}"))
    assert not stack


def test_temporal_layers_go_after_the_chosen_block(small: TemporalSpace) -> None:
    entries = small.layout(_only(small, down1=("conv1d", 2, 1)))
    kinds = [(e.stage, e.spec.kind) for e in entries]
    first = kinds.index(("down1", "unet.resnet"))
    assert kinds[first + 1 : first + 4] == [("down1", "temporal.conv1d")] * 2 + [
        ("down1", "unet.transformer")
    ]
    resnet, layer = entries[first].spec, entries[first + 1].spec
    assert (layer["dim"], layer["hw"], layer["frames"], layer["batch"]) == (
        resnet["dim"],
        resnet["hw"],
        FRAMES,
        1,
    )
    assert [e.index for e in entries if e.kind == "conv1d"] == [0, 1]


def test_a_skip_taken_where_temporal_layers_sit_is_taken_after_them(small: TemporalSpace) -> None:
    entries = small.layout(_only(small, down1=("attn", 1, 0), up0=("conv3d", 1, 2)))
    at = next(i for i, e in enumerate(entries) if e.kind == "attn")
    assert entries[at - 1].spec.kind == "unet.down" and not entries[at - 1].step.push
    assert entries[at].step.push
    assert entries[at].spec["hw"] == "4x4" and entries[at].spec["dim"] == entries[at - 1].spec["dim"]
    for config in [_only(small, down1=("attn", 1, 0)), *_configs(small, 10, seed=1)]:
        _replay_skips(small, config)


def test_all_blocks_lists_every_type_at_every_place(space: TemporalSpace) -> None:
    listed = space.all_blocks()
    keys = {spec.key for spec in listed}
    assert len(keys) == len(listed) < 100
    assert {spec.kind for spec in listed if spec.kind.startswith("temporal.")} == {
        f"temporal.{t}" for t in TEMPORAL_TYPES
    }
    for stage in STAGES:
        for after in range(len(space.stage_blocks[stage]) + 1):
            for kind in TEMPORAL_TYPES:
                config = _only(space, **{stage: (kind, 1, after)})
                assert {spec.key for spec in space.blocks(config)} <= keys, (stage, after, kind)


# ----------------------------------------------------------------- running
def _image_model(space: TemporalSpace, video: VideoUNet, config: dict[str, Any]) -> UNet:
    """The image UNet made of the video model's own image blocks."""
    entries = space.layout(config)
    blocks = [block for block, entry in zip(video.blocks, entries, strict=True) if entry.kind == "image"]
    return UNet(blocks, [entry.step for entry in space.base_layout.entries])


def test_temporal_layers_start_as_the_identity(small: TemporalSpace) -> None:
    sample, timestep, context = small.example_inputs(batch=2)
    frames = (
        sample.flatten(0, 1),
        timestep.repeat_interleave(FRAMES),
        context.repeat_interleave(FRAMES, dim=0),
    )
    for config in _configs(small, 3, seed=2):
        torch.manual_seed(0)
        video = small.build(config).eval()
        image = _image_model(small, video, config).eval()
        with torch.no_grad():
            expected = image(*frames).unflatten(0, (2, FRAMES))
            assert torch.equal(video(sample, timestep, context), expected)
            if any(e.kind != "image" for e in small.layout(config)):
                _randomize_temporal(video, 0)
                assert not torch.allclose(video(sample, timestep, context), expected, atol=1e-4)


def test_forward_and_backward_at_a_small_size(small: TemporalSpace) -> None:
    torch.manual_seed(0)
    config = _only(
        small, down0=("conv3d", 1, 1), mid=("st_attn", 2, 1), up1=("attn", 1, 3), up0=("conv1d", 1, 0)
    )
    model = small.build(config)
    _randomize_temporal(model, 1)
    sample, timestep, context = small.example_inputs(batch=2)
    out = model(sample, timestep, context)
    assert out.shape == sample.shape == (2, FRAMES, 4, 8, 8)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="video latents"):
        model(sample[:, :2], timestep, context)


def test_block_macs_add_up_to_the_whole_video_subnet(small: TemporalSpace) -> None:
    for config in ["mixed", _only(small, down0=("conv3d", 2, 2), mid=("st_attn", 1, 0))]:
        assert small.count(config)["macs"] == count_macs(small.build(config), small.example_inputs())


def test_temporal_blocks_build_from_their_keys(small: TemporalSpace) -> None:
    for kind in TEMPORAL_TYPES:
        spec = small.temporal_spec(kind, small.position("down1", 2))
        module, (x,) = small.build_block(BlockSpec.from_key(spec.key))
        assert x.shape == (FRAMES, 64, 4, 4) and count_params(module) == spec.params
        assert torch.equal(module(x), x)  # zero-initialised: the identity
    with pytest.raises(ValueError, match=r"temporal\.conv1d.*unet\.resnet|unet\.resnet.*temporal\.conv1d"):
        small.build_block(BlockSpec.make("effv2.ffn", dim=32, ratio=2, hw="8x8", batch=1, dtype="fp32"))


# ----------------------------------------------------------------- supernet
@pytest.fixture(scope="module")
def supernet(small: TemporalSpace) -> TemporalSupernet:
    net = small.supernet()
    _randomize_temporal(net, 3)
    return net.eval()


def test_only_temporal_parameters_train(small: TemporalSpace, supernet: TemporalSupernet) -> None:
    temporal = {id(p) for p in supernet.temporal_parameters()}
    assert temporal and all(p.requires_grad for p in supernet.temporal_parameters())
    image = [p for p in supernet.parameters() if id(p) not in temporal]
    assert image and not any(p.requires_grad for p in image)
    assert sum(p.numel() for p in image) == sum(s.params for s in small.unet.blocks(small.base_config))


def test_extract_equals_the_activated_supernet(small: TemporalSpace, supernet: TemporalSupernet) -> None:
    inputs = small.example_inputs(batch=2)
    outputs = []
    for config in _configs(small, 4, seed=4):
        supernet.activate(config)
        extracted = supernet.extract(config)
        assert type(extracted) is VideoUNet and not extracted.training
        assert count_params(extracted) == sum(s.params for s in small.blocks(config))
        with torch.no_grad():
            expected, got = supernet(*inputs), extracted(*inputs)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        outputs.append(expected)
    for a, b in itertools.combinations(outputs[1:], 2):  # all but "image" have temporal layers
        assert not torch.allclose(a, b, atol=1e-4)
    supernet.activate("image")
    sample, timestep, context = inputs
    with torch.no_grad():
        image = supernet.image(
            sample.flatten(0, 1), timestep.repeat_interleave(FRAMES), context.repeat_interleave(FRAMES, 0)
        )
        torch.testing.assert_close(supernet(*inputs), image.unflatten(0, (2, FRAMES)))


def test_a_fresh_supernet_is_the_image_model_on_every_frame(small: TemporalSpace) -> None:
    net = small.supernet().eval()
    unet = small.unet.build(small.base_config)
    net.load_image_unet(unet)
    assert all(torch.equal(a, b) for a, b in zip(net.image.parameters(), unet.parameters(), strict=True))
    sample, timestep, context = small.example_inputs()
    with torch.no_grad():
        image = unet.eval()(
            sample.flatten(0, 1), timestep.repeat_interleave(FRAMES), context.repeat_interleave(FRAMES, 0)
        )
        for config in _configs(small, 2, seed=5):
            net.activate(config)
            assert torch.equal(net(sample, timestep, context), image.unflatten(0, (1, FRAMES)))


def test_backward_reaches_only_the_active_temporal_layers(small: TemporalSpace) -> None:
    net = small.supernet().train()
    net.activate(_only(small, down1=("conv1d", 1, 2), mid=("attn", 2, 1)))
    net(*small.example_inputs(batch=2)).square().mean().backward()
    assert net.temporal["down1"]["conv1d"][0].conv.weight.grad is not None
    assert net.temporal["down1"]["conv1d"][1].conv.weight.grad is None  # count 1
    assert net.temporal["mid"]["attn"][1].attn.to_out.weight.grad is not None
    assert net.temporal["down0"]["conv3d"][0].conv.weight.grad is None
    assert all(p.grad is None for p in net.image.parameters())


def test_robust_training_skips_image_blocks_not_temporal_layers(small: TemporalSpace) -> None:
    net = small.supernet().train()
    config = _only(small, down0=("conv1d", 2, 1), up1=("attn", 1, 0))
    net.activate(config)
    entries = small.layout(config)
    calls: Counter[str] = Counter()
    for module in net.modules():
        if isinstance(module, ResnetBlock | Transformer | TemporalConv | TemporalAttention):
            module.register_forward_hook(lambda m, a, o: calls.update([type(m).__name__]))
    net.skip_prob = 1.0
    with torch.no_grad():
        net(*small.example_inputs())
    changing = sum(1 for e in entries if e.spec.kind == "unet.resnet" and e.spec["in_dim"] != e.spec["dim"])
    assert calls == Counter({"ResnetBlock": changing, "TemporalConv": 2, "TemporalAttention": 1})


# ----------------------------------------------------------------- memory
def test_memory_equals_a_whole_subnet_measurement(small: TemporalSpace) -> None:
    for config in _configs(small, 3, seed=6)[2:]:
        with torch.device("meta"):
            model = small.build(config)
        inputs = [t.to("meta") for t in small.example_inputs()]
        _, peak = measure_call(model, *inputs)
        assert small.memory(config) == peak + sum(t.nelement() * t.element_size() for t in inputs)


def test_spatio_temporal_attention_at_high_resolution_costs_memory(space: TemporalSpace) -> None:
    image = space.memory("image")
    assert space.memory(_only(space, down0=("conv1d", 1, 1))) == image  # the image blocks peak higher
    full = space.memory(_only(space, down0=("st_attn", 1, 1)))
    # 16 frames x 64 x 64 positions: 4 heads of 65,536^2 float32 scores and probabilities.
    assert full > 2 * 4 * 65_536**2 * 4 > 50 * image
    # At the lowest level (16 x 16) the same layer needs about 60 times less.
    assert space.memory(_only(space, down2=("st_attn", 1, 1))) < full / 50


def test_memory_grows_with_frames() -> None:
    few, many = (get_space("temporal", **{**SMALL, "frames": f}).memory("attn") for f in (2, 8))
    assert many > 3 * few


def test_frozen_start_is_the_supernets_image_unet_frozen_with_fresh_temporal_layers(
    small: TemporalSpace, supernet: TemporalSupernet
) -> None:
    assert small.supernet_freezes and not small.unet.supernet_freezes
    config = _configs(small, 1, seed=6)[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = supernet.frozen_start(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        fresh = small.build(config)
    layout = small.layout(small.canonicalize(config))
    assert {entry.kind for entry in layout} - {"image"}  # it has temporal layers
    for block, fresh_block, entry in zip(model.blocks, fresh.blocks, layout, strict=True):
        if entry.kind == "image":
            source = supernet.image.blocks[entry.base_index]
            assert all(
                torch.equal(a, b) for a, b in zip(block.parameters(), source.parameters(), strict=True)
            )
            assert not any(p.requires_grad for p in block.parameters())
        else:  # the fresh init of the same seed, trainable
            assert all(
                torch.equal(a, b) for a, b in zip(block.parameters(), fresh_block.parameters(), strict=True)
            )
            assert all(p.requires_grad for p in block.parameters())
    # Fresh temporal layers are the identity: the video subnet is the supernet's image UNet per frame,
    # unlike the subnet extracted with the supernet's (randomised) temporal weights.
    sample, timestep, context = small.example_inputs()
    with torch.no_grad():
        image = supernet.image(
            sample.flatten(0, 1), timestep.repeat_interleave(FRAMES), context.repeat_interleave(FRAMES, 0)
        )
        out = model.eval()(sample, timestep, context)
        torch.testing.assert_close(out, image.unflatten(0, (1, FRAMES)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(supernet.extract(config).eval()(sample, timestep, context), out, atol=1e-4)
    assert small.unet.supernet().frozen_start(small.base_config) is None
