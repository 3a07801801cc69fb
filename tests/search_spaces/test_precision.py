"""The mixed-precision spaces: counting fidelity against BitsFusion's figures, the quantizer, packing,
the assignment and the supernet. Full-size networks are only counted (built on the meta device)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from search_spaces import ConfigError, get_space
from search_spaces._quantize import (
    assign_bits,
    counted_bits,
    fake_quantize,
    pack_codes,
    quantize_codes,
    unpack_codes,
)
from search_spaces.precision import BITSFUSION_MEAN_BITS, MixedPrecisionSpace, weight_storage

SMALL_UNET = {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32}


def test_sd15_at_16_bits_is_the_fp16_size_of_1_72_gb() -> None:
    plain = weight_storage(get_space("unet"), "sd15")
    assert plain.size_bytes == pytest.approx(1.72e9, rel=0.01)
    unquantized = get_space("unet_bits", fixed_bits=16)
    storage = unquantized.weight_storage("fp16")
    assert storage.size_bytes == plain.size_bytes
    assert storage.mean_bits == 16.0
    assert storage.quantized_weights + storage.other_params == 859_520_964


def test_bitsfusion_reference_lands_on_the_papers_size_and_mean_bits() -> None:
    space = get_space("unet_bits")
    # The paper's 256 quantizable layers: 282 less the first / last convs and the time-embedding path.
    assert len(space.searched_layers) == 256 and len(space.layers) == 282
    storage = space.weight_storage("bitsfusion")
    assert storage.size_mb == pytest.approx(219, rel=0.05)
    assert storage.mean_bits == pytest.approx(1.99, abs=0.02)
    assert storage.mean_bits <= BITSFUSION_MEAN_BITS
    config = space.canonicalize("bitsfusion")
    assert set(config.values()) <= {1, 2, 3, 4}
    # Larger layers get fewer bits (S = 4^-b N^-0.3), the first and last layers 8.
    assert space.assignment(config)["blocks.1.conv"] == 8


def test_fixed_layers_are_not_choices_and_names_are_readable() -> None:
    space = get_space("unet_bits")
    names = list(space.choice_map)
    assert "bits.down1.resnet0.conv_shortcut" in names
    assert "bits.mid.transformer0.layers.0.attn2.to_k" in names
    assert not any(name.startswith(("bits.conv_in", "bits.conv_out", "bits.time.")) for name in names)
    assert not any(name.endswith("time_emb_proj") for name in names)
    fixed = space.describe()["fixed_layers"]
    assert len(fixed) == 26 and set(fixed.values()) == {8}
    assert {"time.linear_1", "time.linear_2", "conv_in.conv", "conv_out.conv"} < set(fixed)
    assert "down0.resnet0.time_emb_proj" in fixed and "up0.resnet2.time_emb_proj" in fixed
    assert sum(layer.weights for layer in space.layers if layer.fixed) == 27_875_840
    with pytest.raises(ConfigError) as info:
        space.canonicalize({"bits.down0.resnet0.conv1": 5})
    assert info.value.allowed == [1, 2, 3, 4, 8, 16]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_quantizer_uses_2n_plus_1_levels_per_channel(bits: int) -> None:
    weight = torch.randn(6, 5, 3, 3)
    quantized = fake_quantize(weight, bits)
    for channel in range(6):
        assert len(torch.unique(quantized[channel])) <= 2**bits + 1
    error = (quantized - weight).pow(2).mean().item()
    assert error < weight.pow(2).mean().item() / 4 ** (bits - 1)
    assert counted_bits(bits) == pytest.approx(math.log2(2**bits + 1))
    assert torch.equal(fake_quantize(weight, 16), weight)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_packed_codes_round_trip(bits: int) -> None:
    weight = torch.randn(7, 13)
    codes, scale = quantize_codes(weight, bits)
    data = pack_codes(codes, bits)
    assert len(data) == math.ceil(codes.numel() * (bits + 1) / 8)
    assert torch.equal(unpack_codes(data, bits, codes.shape), codes)
    decoded = unpack_codes(data, bits, codes.shape).float() * scale.view(-1, 1)
    assert torch.equal(decoded, fake_quantize(weight, bits))


def test_assignment_meets_the_budget_and_spends_it() -> None:
    rng = np.random.default_rng(0)
    weights = {f"l{i}": int(rng.integers(10, 1000)) for i in range(40)}
    sensitivity = {
        name: {b: float(rng.random()) * 4.0**-b * n**-0.3 for b in (1, 2, 3)} for name, n in weights.items()
    }
    cost = {name: {b: n * counted_bits(b) for b in (1, 2, 3, 4)} for name, n in weights.items()}
    total = sum(weights.values())
    means = []
    for target in (1.7, 2.0, 2.5, 3.0):
        assigned, _ = assign_bits(sensitivity, cost, target * total)
        mean = sum(cost[name][b] for name, b in assigned.items()) / total
        assert mean <= target
        means.append(mean)
    assert means == sorted(means) and means[-1] > means[0]
    everything_at_one, _ = assign_bits(sensitivity, cost, 0.0)
    assert set(everything_at_one.values()) == {1}


def test_size_budget_assignment_fits() -> None:
    space = get_space("unet_bits", **SMALL_UNET)
    assert isinstance(space, MixedPrecisionSpace)
    sensitivity = {
        layer.name: {b: 4.0**-b * layer.weights**-0.3 for b in (1, 2, 3)} for layer in space.searched_layers
    }
    full = space.weight_storage("w4").size_mb
    config = space.config_for_size(sensitivity, full * 0.7)
    assert space.weight_storage(config).size_mb <= full * 0.7


def test_supernet_runs_each_config_as_its_extracted_subnet() -> None:
    space = get_space("unet_bits", **SMALL_UNET)
    torch.manual_seed(0)
    supernet = space.supernet().eval()
    inputs = space.example_inputs()
    outputs = []
    for name in ("fp16", "w2", "bitsfusion"):
        supernet.activate(name)
        with torch.no_grad():
            out = supernet(*inputs)
            extracted = supernet.extract(name).eval()(*inputs)
        assert torch.allclose(out, extracted, atol=1e-5)
        outputs.append(out)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4), "2-bit weights must change the output"


def test_blocks_carry_the_widest_width_and_build_quantized() -> None:
    space = get_space("unet_bits", **SMALL_UNET)
    config = space.canonicalize("w2")
    widths = {spec.kind: spec.arg_dict["wbits"] for spec in space.blocks(config)}
    assert set(widths.values()) == {2, 8}
    # A ResNet holds its fixed 8-bit time_emb_proj: it is keyed (and priced) as an 8-bit block.
    assert widths["unet.resnet"] == 8 and widths["unet.transformer"] == 2
    spec = next(spec for spec in space.blocks(config) if spec.kind == "unet.transformer")
    module, _ = space.build_block(spec)
    weight = module.proj_in.weight
    assert len(torch.unique(weight[0])) <= 5
    with pytest.raises(ValueError, match="wbits"):
        space.build_block(type(spec).make(spec.kind, **{**spec.arg_dict, "wbits": 5}))


def test_efficientformerv2_composes_too() -> None:
    space = get_space("efficientformerv2_bits", resolution=32, num_classes=10)
    assert weight_storage(space, "w4").size_mb < weight_storage(space, "fp16").size_mb
    model = space.build("w3").eval()
    with torch.no_grad():
        assert torch.isfinite(model(*space.example_inputs())[0]).all()


def test_quantized_export_round_trips_to_the_fake_quantized_outputs() -> None:
    import copy

    from search_spaces.precision import quantize_module
    from search_spaces.quantized_export import export_quantized, load_quantized, read_assignment

    space = get_space("unet_bits", **SMALL_UNET)
    assert isinstance(space, MixedPrecisionSpace)
    config = space.canonicalize({**space.canonicalize("bitsfusion"), "bits.mid.resnet0.conv1": 16})
    torch.manual_seed(3)
    trained = space.float_model()
    data = export_quantized(space, config, trained)
    header = read_assignment(data)
    assert header["config_id"] == space.config_id(config)
    assert {path: entry["bits"] for path, entry in header["layers"].items()} == space.assignment(config)
    loaded = load_quantized(space, data).eval()
    fake = quantize_module(copy.deepcopy(trained), space.assignment(config)).eval()
    inputs = space.example_inputs(batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), fake(*inputs))
        assert not torch.equal(loaded(*inputs), trained.eval()(*inputs))
    # Packed codes take about (bits + 1) / 32 of the float32 weights.
    codes = sum(
        math.ceil(layer.weights * (space.assignment(config)[layer.path] + 1) / 8)
        for layer in space.layers
        if space.assignment(config)[layer.path] < 16
    )
    assert codes < len(data)
