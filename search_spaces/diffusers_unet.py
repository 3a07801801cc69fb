"""Real UNet weights from a diffusers-format folder, mapped onto this project's UNet module.

A diffusers UNet folder (`unet/` of a Stable Diffusion pipeline, or the pipeline folder holding it)
has a `config.json` of `UNet2DConditionModel` and its weights in `diffusion_pytorch_model.safetensors`
(or `.bin`, or the `.fp16.` variants). Nothing is downloaded: the folder is read from this machine.

This project's UNet keeps its blocks in one flat list run in order (`search_spaces.unet`); diffusers
nests them by block (`down_blocks.1.attentions.0...`). `diffusers_names` gives every tensor of a UNet
architecture its diffusers name from the architecture's layout, stage by stage:

- time embedding `linear_1`, `linear_2` -> `time_embedding.linear_1`, `time_embedding.linear_2`;
- conv_in `conv` -> `conv_in`; conv_out `norm`, `conv` -> `conv_norm_out`, `conv_out`;
- down{L} resnet{j} / transformer{j} / downsampler -> `down_blocks.{L}.resnets.{j}` /
  `down_blocks.{L}.attentions.{j}` / `down_blocks.{L}.downsamplers.0`;
- mid resnet{j} / transformer0 -> `mid_block.resnets.{j}` / `mid_block.attentions.0`;
- up{L} resnet{j} / transformer{j} / upsampler -> `up_blocks.{levels-1-L}.resnets.{j}` / ... /
  `up_blocks.{levels-1-L}.upsamplers.0` (diffusers counts up blocks from the deepest level);

and inside blocks: a ResNet's `conv1.full` / `conv2.full` are `conv1` / `conv2`; a transformer's
`layers.{k}` are `transformer_blocks.{k}`, an attention's `to_out` is `to_out.0`, the GEGLU
feed-forward's `proj` / `out` are `ff.net.0.proj` / `ff.net.2`. Everything else keeps its name.

Only architectures with diffusers' block structure have such names: the `sd15` reference (at any
`width_scale`). `config.json` is checked against the architecture field by field, and the weights
name by name and shape by shape; every error says which fields or keys are missing, unexpected or of
the wrong shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces._base import Config, OptionError
from search_spaces._unet_modules import GROUPS, heads_for
from search_spaces._weights import weights_mismatch
from search_spaces.unet import UNetSpace

#: The weight files of a diffusers folder, in the order they are looked for.
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
#: config.json fields that change what the network computes, with the value this project's UNet
#: implements (and diffusers' default when the field is absent).
_SEMANTICS: dict[str, Any] = {
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
    "use_linear_projection": False,
    "transformer_layers_per_block": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "time_embedding_type": "positional",
    "class_embed_type": None,
    "addition_embed_type": None,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "center_input_sample": False,
    "resnet_time_scale_shift": "default",
    "norm_num_groups": GROUPS,
}
_INNER = (
    (".conv1.full.", ".conv1."),
    (".conv2.full.", ".conv2."),
    (".to_out.", ".to_out.0."),
    (".ff.proj.", ".ff.net.0.proj."),
    (".ff.out.", ".ff.net.2."),
)


def _error(message: str, allowed: str | None = None) -> OptionError:
    return OptionError(f"option 'weights': {message}", field="weights", allowed=allowed)


def _stage_prefix(stage: str, levels: int) -> str:
    if stage == "mid":
        return "mid_block"
    if stage.startswith("down"):
        return f"down_blocks.{int(stage.removeprefix('down'))}"
    return f"up_blocks.{levels - 1 - int(stage.removeprefix('up'))}"


def structure_problems(space: UNetSpace, architecture: Config) -> list[str]:
    """Why the architecture has no diffusers `UNet2DConditionModel` equivalent ([] when it has)."""
    levels = architecture["levels"]
    problems = []
    down = {architecture[f"down{lv}.resnets"] for lv in range(levels)}
    up = {architecture[f"up{lv}.resnets"] for lv in range(levels)}
    if len(down) != 1 or up != {next(iter(down)) + 1}:
        problems.append(f"ResNets per stage {sorted(down)} down and {sorted(up)} up, not n and n + 1")
    if (architecture["mid.resnets"], architecture["mid.transformers"]) != (2, 1):
        problems.append("the mid stage is not ResNet, transformer, ResNet")
    for stage in [f"down{lv}" for lv in range(levels)] + ["mid"] + [f"up{lv}" for lv in range(levels)]:
        transformers = architecture[f"{stage}.transformers"]
        if architecture[f"{stage}.resnets"] and architecture[f"{stage}.resnet_conv"] != "full":
            problems.append(f"{stage} has {architecture[f'{stage}.resnet_conv']} ResNet convs")
        if transformers and transformers != architecture[f"{stage}.resnets"] and stage != "mid":
            problems.append(
                f"{stage} has {transformers} transformers for {architecture[f'{stage}.resnets']} ResNets"
            )
        if transformers and (
            architecture[f"{stage}.transformer_depth"],
            architecture[f"{stage}.self_attention"],
            architecture[f"{stage}.attention"],
            architecture[f"{stage}.ffn_ratio"],
        ) != (1, "on", "mha", 4):
            problems.append(
                f"{stage}'s transformers are not one SD layer (depth 1, self-attention, mha, ffn 4)"
            )
    return problems


def diffusers_names(space: UNetSpace, architecture: Config, model: nn.Module) -> dict[str, str]:
    """Every state-dict name of `model` (the architecture built by `space`) -> its diffusers name."""
    levels = architecture["levels"]
    entries = space.layout(architecture).entries
    out = {}
    for name in model.state_dict():
        _, index, inner = name.split(".", 2)
        entry = entries[int(index)]
        inner = "." + inner
        for ours, theirs in _INNER:
            inner = inner.replace(ours, theirs)
        if entry.slot == "time":
            prefix = "time_embedding"
        elif entry.slot == "conv_in":
            prefix, inner = "conv_in", inner.removeprefix(".conv")
        elif entry.slot == "conv_out":
            prefix = "conv_norm_out" if inner.startswith(".norm.") else "conv_out"
            inner = inner.removeprefix(".norm").removeprefix(".conv")
        elif entry.slot in ("down", "up"):
            prefix = f"{_stage_prefix(entry.stage, levels)}.{entry.slot}samplers.0"
        else:
            group = "resnets" if entry.slot == "resnet" else "attentions"
            prefix = f"{_stage_prefix(entry.stage, levels)}.{group}.{entry.index}"
        inner = inner.replace(".layers.", ".transformer_blocks.")
        out[name] = prefix + inner
    return out


def expected_config(space: UNetSpace, architecture: Config) -> dict[str, Any]:
    """The config.json fields (diffusers' names) that the architecture at `space`'s options has."""
    levels = architecture["levels"]
    widths = [space.width(architecture[f"level{lv}.channels"]) for lv in range(levels)]
    heads = [
        heads_for(widths[lv], architecture[f"down{lv}.head_dim"] or architecture["mid.head_dim"])
        for lv in range(levels)
    ]
    return {
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": widths,
        "layers_per_block": architecture["down0.resnets"],
        "down_block_types": [
            "CrossAttnDownBlock2D" if architecture[f"down{lv}.transformers"] else "DownBlock2D"
            for lv in range(levels)
        ],
        "up_block_types": [
            "CrossAttnUpBlock2D" if architecture[f"up{lv}.transformers"] else "UpBlock2D"
            for lv in reversed(range(levels))
        ],
        "cross_attention_dim": space.options["cross_attention_dim"],
        "attention_heads": heads,
    }


def check_config(config: Mapping[str, Any], space: UNetSpace, architecture: Config, where: Path) -> None:
    """`OptionError` naming every config.json field that differs from the architecture."""
    expected = expected_config(space, architecture)
    wrong = []
    for field in ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                  "up_block_types", "cross_attention_dim"):  # fmt: skip
        value = config.get(field)
        value = list(value) if isinstance(value, tuple | list) else value
        if value != expected[field]:
            wrong.append(f"{field} is {value!r}, the architecture has {expected[field]!r}")
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    heads = list(heads) if isinstance(heads, list | tuple) else [heads] * len(expected["attention_heads"])
    attended = [lv for lv, kind in enumerate(expected["down_block_types"]) if kind.startswith("CrossAttn")]
    if [heads[lv] for lv in attended] != [expected["attention_heads"][lv] for lv in attended]:
        wrong.append(
            f"attention heads are {heads}, the architecture has {expected['attention_heads']} "
            "(attention_head_dim / num_attention_heads)"
        )
    for field, value in _SEMANTICS.items():
        found = config.get(field, value)
        if field == "transformer_layers_per_block" and isinstance(found, list | tuple):
            found = found[0] if len(set(found)) == 1 else found
        if found != value:
            wrong.append(f"{field} is {found!r}; this UNet implements {value!r}")
    if wrong:
        raise _error(
            f"{str(where)!r} describes another UNet than the architecture: " + "; ".join(wrong),
            allowed="a diffusers UNet2DConditionModel folder of the sd15 layout at this space's options",
        )


def find_unet_folder(path: Path) -> Path:
    """`path` if it holds a UNet's config.json, else its `unet/` (a pipeline folder)."""
    for folder in (path, path / "unet"):
        if (folder / "config.json").is_file():
            return folder
    raise _error(
        f"folder {str(path)!r} has no config.json (nor unet/config.json)",
        allowed="a diffusers UNet folder: config.json + diffusion_pytorch_model.safetensors or .bin",
    )


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of the folder's first weight file of `WEIGHT_FILES`."""
    for name in WEIGHT_FILES:
        source = folder / name
        if not source.is_file():
            continue
        try:
            if source.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(source)
            return torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise _error(f"{str(source)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    raise _error(f"folder {str(folder)!r} has none of {list(WEIGHT_FILES)}")


def check_folder(space: UNetSpace, architecture: Config, path: str | Path) -> Path:
    """The UNet folder of `path` after the checks that read no tensor: the architecture has
    diffusers' layout, config.json matches it, a weight file is there. `OptionError` otherwise."""
    problems = structure_problems(space, architecture)
    if problems:
        raise _error(
            "this architecture has no diffusers UNet2DConditionModel layout: " + "; ".join(problems),
            allowed="a diffusers folder only for architecture 'sd15' (any width_scale)",
        )
    folder = find_unet_folder(Path(path))
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise _error(f"{str(folder / 'config.json')!r} is not JSON ({exc})") from None
    check_config(config, space, architecture, folder / "config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        sharded = (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
        raise _error(
            f"{str(folder)!r} holds a sharded checkpoint; only single-file weights are read"
            if sharded
            else f"folder {str(folder)!r} has none of {list(WEIGHT_FILES)}",
            allowed=f"one of {list(WEIGHT_FILES)} beside config.json",
        )
    return folder


def load_diffusers_unet(space: UNetSpace, architecture: Config, model: nn.Module, path: str | Path) -> str:
    """Load a diffusers UNet folder into `model` (the architecture built by `space`); returns the
    weight file read. `OptionError` (field `weights`) lists the missing, unexpected and
    shape-mismatched keys, in diffusers' names."""
    folder = check_folder(space, architecture, path)
    names = diffusers_names(space, architecture, model)
    state = read_state(folder)
    own = model.state_dict()
    mismatch = weights_mismatch({theirs: own[ours].shape for ours, theirs in names.items()}, state)
    if mismatch:
        raise _error(
            f"{str(folder)!r} does not hold this architecture's weights: {mismatch}",
            allowed="the UNet2DConditionModel weights of the sd15 layout at this space's options",
        )
    model.load_state_dict({ours: state[theirs] for ours, theirs in names.items()})
    return next(name for name in WEIGHT_FILES if (folder / name).is_file())


__all__ = [
    "WEIGHT_FILES",
    "check_config",
    "check_folder",
    "diffusers_names",
    "expected_config",
    "find_unet_folder",
    "load_diffusers_unet",
    "structure_problems",
]
