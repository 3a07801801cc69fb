"""Real UNet weights from a diffusers-format folder (`search_spaces.diffusers_unet`): the names of the
full-size SD-v1.5 UNet (counted on the meta device, never run), and a tiny checkpoint that the test
writes itself in diffusers' naming (config.json + diffusion_pytorch_model.safetensors / .bin), loaded
back exactly, with sensitivities of its own. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nas.proxies.quant_sensitivity import sensitivity_table
from search_spaces import OptionError, get_space
from search_spaces.diffusers_unet import diffusers_names
from search_spaces.precision import MixedPrecisionSpace

SMALL_UNET = {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32}
#: SD-v1.5's unet/config.json at these options (widths 320, 640, 1280 scaled to 32, 32, 96; one head).
SMALL_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 32, 96, 96],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 32,
    "attention_head_dim": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 8,
}


def small_space(**options: object) -> MixedPrecisionSpace:
    space = get_space("unet_bits", **SMALL_UNET, **options)
    assert isinstance(space, MixedPrecisionSpace)
    return space


def write_folder(
    folder: Path, state: dict[str, torch.Tensor], config: dict | None = None, fmt: str = "safetensors"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or SMALL_CONFIG))
    if fmt == "safetensors":
        save_file(state, folder / "diffusion_pytorch_model.safetensors")
    else:
        torch.save(state, folder / "diffusion_pytorch_model.bin")
    return folder


def diffusers_state(space: MixedPrecisionSpace, seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A float model of the space at `seed` and its state dict in diffusers' names."""
    torch.manual_seed(seed)
    model = space.float_model()
    names = diffusers_names(space.base, space.architecture, model)
    return model, {names[k]: v.contiguous() for k, v in model.state_dict().items()}


def test_sd15_names_are_diffusers_686_tensors() -> None:
    space = get_space("unet_bits")
    assert isinstance(space, MixedPrecisionSpace)
    with torch.device("meta"):
        model = space.base.build(space.architecture)
    names = diffusers_names(space.base, space.architecture, model)
    shapes = {theirs: tuple(model.state_dict()[ours].shape) for ours, theirs in names.items()}
    assert len(shapes) == len(names) == 686
    assert {name.split(".")[0] for name in shapes} == {
        "time_embedding", "conv_in", "down_blocks", "mid_block", "up_blocks", "conv_norm_out", "conv_out",
    }  # fmt: skip
    assert shapes["time_embedding.linear_1.weight"] == (1280, 320)
    assert shapes["down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"] == (2560, 320)
    assert shapes["down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0.weight"] == (320, 320)
    assert shapes["down_blocks.1.resnets.0.conv_shortcut.weight"] == (640, 320, 1, 1)
    assert shapes["down_blocks.2.downsamplers.0.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["mid_block.attentions.0.proj_in.weight"] == (1280, 1280, 1, 1)
    assert shapes["mid_block.resnets.1.time_emb_proj.weight"] == (1280, 1280)
    # Up blocks count from the deepest level; their ResNets read [x, skip].
    assert shapes["up_blocks.0.upsamplers.0.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["up_blocks.1.resnets.2.conv_shortcut.weight"] == (1280, 1920, 1, 1)
    assert shapes["up_blocks.3.resnets.0.conv1.weight"] == (320, 960, 3, 3)
    assert shapes["up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert shapes["conv_norm_out.weight"] == (320,)
    assert not any(".full." in name or ".layers." in name for name in shapes)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_diffusers_folder_loads_exactly_and_changes_the_sensitivities(tmp_path: Path, fmt: str) -> None:
    space = small_space()
    model, state = diffusers_state(space, seed=11)
    folder = write_folder(tmp_path / "pipeline" / "unet", state, fmt=fmt)
    for path in (folder, folder.parent):  # the UNet folder, or the pipeline folder holding unet/
        loaded = small_space(weights=str(path)).float_model()
        own = loaded.state_dict()
        assert all(torch.equal(own[name], value) for name, value in model.state_dict().items())
    real = sensitivity_table(small_space(weights=str(folder)), 0)
    init = sensitivity_table(space, 0)
    assert real.weights == f"checkpoint {folder}"
    layer = space.searched_layers[0].name
    assert real.mse(layer, 2) > 0 and real.mse(layer, 2) != init.mse(layer, 2)


def test_a_float16_checkpoint_is_read_as_float32(tmp_path: Path) -> None:
    space = small_space()
    model, state = diffusers_state(space, seed=3)
    folder = write_folder(tmp_path / "unet", {k: v.half() for k, v in state.items()})
    own = small_space(weights=str(folder)).float_model().state_dict()
    name = "blocks.2.conv1.full.weight"
    assert own[name].dtype == torch.float32
    assert torch.equal(own[name], model.state_dict()[name].half().float())


def test_wrong_keys_are_named_in_diffusers_names(tmp_path: Path) -> None:
    space = small_space()
    _, state = diffusers_state(space, seed=0)
    del state["mid_block.attentions.0.proj_out.weight"]
    state["mid_block.attentions.0.proj_out.extra"] = torch.zeros(2)
    state["conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    folder = write_folder(tmp_path / "unet", state)
    with pytest.raises(OptionError) as info:
        small_space(weights=str(folder)).float_model()
    message = str(info.value)
    assert info.value.field == "weights"
    assert "1 missing: ['mid_block.attentions.0.proj_out.weight']" in message
    assert "1 unexpected: ['mid_block.attentions.0.proj_out.extra']" in message
    assert "conv_in.weight [32, 3, 3, 3] (expected [32, 4, 3, 3])" in message


def test_a_config_of_another_unet_is_refused_when_the_space_is_made(tmp_path: Path) -> None:
    _, state = diffusers_state(small_space(), seed=0)
    other = {**SMALL_CONFIG, "cross_attention_dim": 768, "use_linear_projection": True}
    folder = write_folder(tmp_path / "unet", state, other)
    with pytest.raises(OptionError) as info:
        small_space(weights=str(folder))
    message = str(info.value)
    assert "cross_attention_dim is 768, the architecture has 32" in message
    assert "use_linear_projection is True" in message
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "config.json").write_text(json.dumps(SMALL_CONFIG))
    with pytest.raises(OptionError, match="has none of"):
        small_space(weights=str(folder))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptionError, match=r"no config\.json"):
        small_space(weights=str(tmp_path / "empty"))
    with pytest.raises(OptionError, match="no diffusers UNet2DConditionModel layout"):
        get_space("unet_bits", **SMALL_UNET, architecture="snapfusion", weights=str(folder))
    with pytest.raises(OptionError, match="is a folder"):
        get_space("efficientformerv2_bits", resolution=32, num_classes=10).load_weights(
            torch.nn.Linear(1, 1), str(folder)
        )


def test_the_mapped_weights_compute_what_diffusers_computes(tmp_path: Path) -> None:
    """diffusers' own `UNet2DConditionModel` (random weights, saved by `save_pretrained`) against our
    UNet loaded from that folder. Width x0.5 is the smallest at which SD-v1.5's head dims (40, 80,
    160) divide the widths (160, 320, 640), as diffusers' attention needs."""
    from diffusers import UNet2DConditionModel

    options = {"latent_size": 8, "width_scale": 0.5, "text_tokens": 4, "cross_attention_dim": 64}
    torch.manual_seed(0)
    theirs = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(160, 320, 640, 640),
        cross_attention_dim=64,
        attention_head_dim=4,
    ).eval()
    with torch.no_grad():
        for parameter in theirs.parameters():  # diffusers zero-initialises some layers (conv_out)
            parameter.normal_(0.0, 0.05)
    theirs.save_pretrained(tmp_path / "unet", safe_serialization=True)
    space = get_space("unet_bits", **options, weights=str(tmp_path))
    assert isinstance(space, MixedPrecisionSpace)
    ours = space.float_model().eval()
    sample, timestep, context = space.example_inputs(batch=2)
    with torch.no_grad():
        expected = theirs(sample, timestep, encoder_hidden_states=context).sample
        assert torch.allclose(ours(sample, timestep, context), expected, atol=1e-5)
        assert expected.abs().max() > 1e-2
