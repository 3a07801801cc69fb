"""Diffusion-UNet search space: the Stable Diffusion v1.5 UNet family as SnapFusion (arXiv 2306.00980)
and SnapGen (arXiv 2412.09619) explored it, with `sd15`, `snapfusion` and `snapgen` as reference
configs. At width scale 1, `sd15` has exactly the 859,520,964 parameters of SD-v1.5's UNet.

Shape of a subnet. `levels` (3 or 4) resolution levels with one width each (`level{L}.channels`,
scaled by the `width_scale` option and rounded to a multiple of the 32 GroupNorm groups). Stages run
in the order down0, down1, ..., mid, ..., up1, up0: `down{L}` and `up{L}` at level L (latent side
/ 2**L), `mid` at the lowest level. SD-v1.5 and SnapFusion use 4 levels; SnapGen uses 3, which is
`levels = 3` (every level-3 choice is then zeroed). diffusers names the up stages by position, so its
`up_blocks[0]` is our `up3`. Around the stages: time embedding, conv_in, a stride-2 conv after every
down stage but the last, a x2 upsampling after every up stage but up0, then conv_out.

Inside a stage. `resnets` ResNet blocks and `transformers` transformer blocks, grouped into *units*:
unit k is ResNet k followed by its share of the transformers, shares as equal as possible with the
earlier units taking the remainder (2 and 2: R T R T; 2 and 1: R T R, SD's mid block; 2 and 6:
R T T T R T T T, SnapFusion's Up-1); without ResNets every transformer is a unit of its own. Per
stage the ResNets' conv (full 3x3, or depthwise-separable with expansion 2) and the transformers'
depth, self-attention (off keeps cross-attention and FFN), FFN ratio, multi-head or multi-query
attention and head dimension are chosen. A transformer of width C has max(1, C // head_dim) heads.

Skip connections. Level L offers 1 + (units of `down{L}`) skip tensors: the tensor entering the
stage (conv_in's output, or the previous level's downsampled output) and every unit's output.
`up{L}` pairs them with its ResNets last-in first-out, as SD does: its first ResNet takes the newest
skip tensor, the next one the one before, and so on. With more ResNets than skip tensors the last
ResNets take none; with fewer, the oldest skip tensors are not kept at all. A ResNet concatenates
[x, skip] on channels. A stage whose entering tensor is narrower or wider than its level always
keeps at least one ResNet to change the width (canonicalize raises a 0 to the smallest count), since
only ResNets change widths.

Counting convention: attention matmuls run in `F.scaled_dot_product_attention`, which fvcore does not
count, so MACs are those of convolutions, linear layers and normalisations (~338.6 G for `sd15` at a
64x64 latent). `memory(config)` is the peak activation memory in bytes (see `_memory.py`).

Blocks: seven kinds (`unet.time_embed`, `unet.conv_in`, `unet.resnet`, `unet.transformer`,
`unet.down`, `unet.up`, `unet.conv_out`) whose keys carry shapes and settings, never positions.
`all_blocks()` is exact (about 1,700 keys at the default options, most of them transformer settings).
The supernet (`UNetSupernet`) shares weights across every choice and implements SnapFusion's robust
training through its `skip_prob`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from search_spaces._base import Choice, Config, ConfigError, OptionError, OptionSpec, SearchSpace
from search_spaces._blocks import BlockSpec
from search_spaces._counting import count_params
from search_spaces._memory import BlockMemory, block_memory, compose_peak
from search_spaces._space_registry import register_space
from search_spaces._unet_layout import (
    ATTR_SUFFIXES,
    DTYPES,
    STAGE_KINDS,
    Layout,
    build_layout,
    entry_channels,
    enumerate_blocks,
    parse_side,
    stage_level,
    stage_names,
    validate_spec,
)
from search_spaces._unet_modules import (
    GROUPS,
    ConvIn,
    ConvOut,
    Downsample,
    ResnetBlock,
    TimeEmbedding,
    Transformer,
    TransformerLayer,
    UNet,
    Upsample,
    heads_for,
)
from search_spaces._unet_supernet import UNetSupernet

LATENT_STEP = 8

_PARAMS_BY_KEY: dict[str, int] = {}
_MEMORY_BY_KEY: dict[str, BlockMemory] = {}
_LAYER_PARAMS: dict[tuple[int | bool, ...], int] = {}
_SHELL_PARAMS: dict[int, int] = {}


def _ref(levels: int, channels: tuple[int, ...], stages: dict[str, dict[str, Any]]) -> Config:
    config: Config = {"levels": levels}
    config.update({f"level{level}.channels": width for level, width in enumerate(channels)})
    for stage, values in stages.items():
        config.update({f"{stage}.{name}": value for name, value in values.items()})
    return config


def _stage(
    resnets: int,
    transformers: int,
    conv: str = "full",
    depth: int = 1,
    self_attention: str = "on",
    ffn_ratio: int = 4,
    attention: str = "mha",
    head_dim: int = 0,
) -> dict[str, Any]:
    values: dict[str, Any] = {"resnets": resnets, "transformers": transformers}
    values["resnet_conv"] = conv if resnets else 0
    attrs = (depth, self_attention, ffn_ratio, attention, head_dim)
    values.update(zip(ATTR_SUFFIXES, attrs if transformers else (0,) * len(attrs), strict=True))
    return values


def _sd_like(counts: dict[str, tuple[int, int]]) -> Config:
    head_dims = {0: 40, 1: 80, 2: 160, 3: 160}
    stages = {
        stage: _stage(r, t, head_dim=head_dims[stage_level(stage, 4)]) for stage, (r, t) in counts.items()
    }
    return _ref(4, (320, 640, 1280, 1280), stages)


_SD15_COUNTS = {
    "down0": (2, 2), "down1": (2, 2), "down2": (2, 2), "down3": (2, 0), "mid": (2, 1),
    "up3": (3, 0), "up2": (3, 3), "up1": (3, 3), "up0": (3, 3),
}  # fmt: skip
# SnapFusion's table (ARCHITECTURES.md section 2). Its "Mid" stage (SD's down3, mid and up3: 7 ResNets
# -> 4) is split 1 / 1 / 2, which keeps level 3's skip tensors (1 + 1) equal to up3's ResNets.
_SNAPFUSION_COUNTS = {
    "down0": (2, 0), "down1": (2, 2), "down2": (1, 2), "down3": (1, 0), "mid": (1, 1),
    "up3": (2, 0), "up2": (2, 6), "up1": (3, 3), "up0": (3, 0),
}  # fmt: skip


def _snapgen() -> Config:
    """SnapGen's reported choices (section 3), our reading of what the paper leaves open: 3 levels of
    256/512/896 channels; transformer depth 1/2/4 (the first level's former ResNet is a transformer
    without self-attention); self-attention only at the lowest level; separable ResNet convs; FFN
    ratio 3; multi-query attention with 64-wide heads; SDXL's ResNet counts otherwise."""

    def stage(resnets: int, transformers: int, depth: int, self_attention: str) -> dict[str, Any]:
        return _stage(resnets, transformers, "separable", depth, self_attention, 3, "mqa", 64)

    stages = {
        "down0": stage(1, 1, 1, "off"), "down1": stage(2, 2, 2, "off"), "down2": stage(2, 2, 4, "on"),
        "mid": stage(2, 1, 4, "on"), "up2": stage(3, 3, 4, "on"), "up1": stage(3, 3, 2, "off"),
        "up0": stage(2, 1, 1, "off"),
    }  # fmt: skip
    return _ref(3, (256, 512, 896), stages)


@register_space
class UNetSpace(SearchSpace):
    """Text-to-image diffusion UNets: levels and widths, and per stage the ResNet and transformer
    counts, ResNet conv, transformer depth, self-attention, FFN ratio, attention kind and head size."""

    name = "unet"
    description = (
        "Diffusion UNets (SD-v1.5, SnapFusion, SnapGen): per stage ResNet and transformer counts, "
        "widths, transformer depth, self-attention, separable convs, FFN ratio, MQA, head size."
    )

    levels_options: ClassVar[tuple[int, ...]] = (3, 4)
    channel_options: ClassVar[tuple[tuple[int, ...], ...]] = (
        (256, 320),
        (512, 640),
        (896, 1280),
        (896, 1280),
    )
    resnet_options: ClassVar[dict[str, tuple[int, ...]]] = {
        "down": (0, 1, 2, 3),
        "mid": (0, 1, 2),
        "up": (0, 1, 2, 3, 4),
    }
    transformer_options: ClassVar[dict[str, tuple[int, ...]]] = {
        "down": (0, 1, 2, 3), "mid": (0, 1, 2), "up": (0, 1, 2, 3, 4, 5, 6),
    }  # fmt: skip
    conv_options: ClassVar[tuple[str, ...]] = ("separable", "full")
    depth_options: ClassVar[tuple[int, ...]] = (1, 2, 3, 4)
    self_attention_options: ClassVar[tuple[str, ...]] = ("off", "on")
    ffn_ratio_options: ClassVar[tuple[int, ...]] = (2, 3, 4)
    attention_options: ClassVar[tuple[str, ...]] = ("mqa", "mha")
    head_dim_options: ClassVar[tuple[int, ...]] = (40, 64, 80, 160)

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options["latent_size"] % LATENT_STEP:
            raise OptionError(
                f"option 'latent_size' = {self.options['latent_size']} must be a multiple of {LATENT_STEP} "
                "(the lowest of 4 levels runs at 1/8 of it)",
                field="latent_size",
                allowed=f"int multiple of {LATENT_STEP} in [8, 256]",
            )

    # ----------------------------------------------------------------- declarations
    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        return [
            OptionSpec(
                "latent_size", 64, int, minimum=8, maximum=256, help="latent side (64: 512 px, 128: 1024 px)"
            ),
            OptionSpec("text_tokens", 77, int, minimum=1, maximum=1024, help="text tokens of the condition"),
            OptionSpec("cross_attention_dim", 768, int, minimum=1, maximum=8192, help="text embedding width"),
            OptionSpec(
                "width_scale",
                1.0,
                float,
                minimum=0.0625,
                maximum=1.0,
                help="channels are scaled by it and rounded to a multiple of 32 (small test instances)",
            ),
            OptionSpec("dtype", "fp32", str, allowed=tuple(DTYPES), help="numeric type of every block"),
        ]

    @property
    def max_levels(self) -> int:
        return max(self.levels_options)

    def stage_options(self, stage: str) -> dict[str, tuple[Any, ...]]:
        """The options of every per-stage choice, by suffix."""
        kind = STAGE_KINDS[stage]
        attrs = (
            self.depth_options,
            self.self_attention_options,
            self.ffn_ratio_options,
            self.attention_options,
            self.head_dim_options,
        )
        return {
            "resnets": self.resnet_options[kind],
            "transformers": self.transformer_options[kind],
            "resnet_conv": self.conv_options,
            **dict(zip(ATTR_SUFFIXES, attrs, strict=True)),
        }

    def choices(self) -> list[Choice]:
        out = [Choice("levels", self.levels_options, "resolution levels (SD: 4, SnapGen: 3)")]
        for level in range(self.max_levels):
            out.append(
                Choice(f"level{level}.channels", self.channel_options[level], f"width of level {level}")
            )
        for stage in stage_names(self.max_levels):
            for suffix, options in self.stage_options(stage).items():
                out.append(Choice(f"{stage}.{suffix}", options, f"{suffix} of stage {stage}"))
        return out

    @classmethod
    def reference_configs(cls) -> dict[str, Config]:
        return {
            "sd15": _sd_like(_SD15_COUNTS),
            "snapfusion": _sd_like(_SNAPFUSION_COUNTS),
            "snapgen": _snapgen(),
        }

    def minimum_resnets(self, stage: str, config: Mapping[str, Any]) -> int:
        """0, or the smallest positive ResNet count where the stage must change the width."""
        level = stage_level(stage, config["levels"])
        entering = entry_channels(stage, config["levels"], lambda lv: config[f"level{lv}.channels"])
        if entering == config[f"level{level}.channels"]:
            return 0
        return min(r for r in self.stage_options(stage)["resnets"] if r > 0)

    def _canonicalize(self, config: Config) -> Config:
        out = dict(config)
        self._require_nonzero(out, "levels")
        levels = out["levels"]
        for level in range(self.max_levels):
            name = f"level{level}.channels"
            if level >= levels:
                out[name] = 0
            else:
                self._require_nonzero(out, name)
        present = set(stage_names(levels))
        for stage in stage_names(self.max_levels):
            options = self.stage_options(stage)
            if stage not in present:
                out.update({f"{stage}.{suffix}": 0 for suffix in options})
                continue
            resnets = f"{stage}.resnets"
            out[resnets] = max(out[resnets], self.minimum_resnets(stage, out))
            if out[resnets] == 0:
                out[f"{stage}.resnet_conv"] = 0
            else:
                self._require_nonzero(out, f"{stage}.resnet_conv", f"{stage} has {out[resnets]} ResNets")
            for suffix in ATTR_SUFFIXES:
                name = f"{stage}.{suffix}"
                if out[f"{stage}.transformers"] == 0:
                    out[name] = 0
                else:
                    self._require_nonzero(
                        out, name, f"{stage} has {out[f'{stage}.transformers']} transformers"
                    )
        return out

    def _require_nonzero(self, config: Config, name: str, reason: str = "") -> None:
        if config[name] == 0:
            options = list(self.choice_map[name].options)
            because = f" ({reason})" if reason else ""
            raise ConfigError(
                f"choice {name!r} may not be 0{because}; options: {options}", field=name, allowed=options
            )

    def _stage_variants(self, stage: str, config: Mapping[str, Any]) -> int:
        """Distinct canonical settings of one present stage, given the levels and widths."""
        options = self.stage_options(stage)
        minimum = self.minimum_resnets(stage, config)
        resnet_part = sum(len(self.conv_options) if r else 1 for r in options["resnets"] if r >= minimum)
        attrs = math.prod(len(options[suffix]) for suffix in ATTR_SUFFIXES)
        transformer_part = sum(attrs if t else 1 for t in options["transformers"])
        return resnet_part * transformer_part

    @property
    def cardinality(self) -> int:
        total = 0
        for config in self.width_configs():
            total += math.prod(self._stage_variants(stage, config) for stage in stage_names(config["levels"]))
        return total

    def width_configs(self) -> Iterator[dict[str, int]]:
        """Every (levels, widths) combination, as a partial config."""
        for levels in self.levels_options:
            for widths in itertools.product(*self.channel_options[:levels]):
                yield {"levels": levels, **{f"level{lv}.channels": w for lv, w in enumerate(widths)}}

    # ----------------------------------------------------------------- blocks
    def width(self, channels: int) -> int:
        """Scaled width: `channels * width_scale` rounded to a multiple of the GroupNorm groups."""
        return max(GROUPS, GROUPS * math.floor(channels * self.options["width_scale"] / GROUPS + 0.5))

    def spec(self, kind: str, batch: int = 1, **args: int | str) -> BlockSpec:
        """The spec of one block at these options (its parameter count computed once per key)."""
        spec = BlockSpec.make(kind, batch=batch, dtype=self.options["dtype"], **args)
        params = _PARAMS_BY_KEY.get(spec.key)
        if params is None:
            params = _PARAMS_BY_KEY[spec.key] = self._count_params(spec)
        return BlockSpec(kind=spec.kind, args=spec.args, params=params)

    def _count_params(self, spec: BlockSpec) -> int:
        """Parameters of the block of `spec`, counted on the meta device (exact shapes, no memory).

        A transformer's are its shell's (norm, projections) plus `depth` times one layer's, each
        counted once per distinct shape: the space has over a thousand transformer keys, and building
        each whole would take seconds.
        """
        args = validate_spec(spec, self.name)
        with torch.device("meta"):
            if spec.kind != "unet.transformer":
                return count_params(self._module(spec, cast=False))
            dim, context, head_dim = int(args["dim"]), int(args["context"]), int(args["head_dim"])
            heads, multi_query = heads_for(dim, head_dim), args["attention"] == "mqa"
            hidden, self_attention = dim * int(args["ffn_ratio"]), args["self_attention"] == "on"
            shape = (dim, context, heads * head_dim, head_dim if multi_query else heads * head_dim, hidden)
            layer_key = (*shape, self_attention)
            if layer_key not in _LAYER_PARAMS:
                layer = TransformerLayer(dim, context, heads, head_dim, multi_query, hidden, self_attention)
                _LAYER_PARAMS[layer_key] = count_params(layer)
            if dim not in _SHELL_PARAMS:
                _SHELL_PARAMS[dim] = count_params(Transformer(dim, context, 0, head_dim, 1))
        return _SHELL_PARAMS[dim] + int(args["depth"]) * _LAYER_PARAMS[layer_key]

    def layout(self, config: Mapping[str, Any], batch: int = 1) -> Layout:
        """The subnet's blocks in execution order with how the runner calls them (see `Layout`)."""
        return build_layout(self, self.canonicalize(config), batch)

    def blocks(self, config: Mapping[str, Any]) -> list[BlockSpec]:
        return [entry.spec for entry in self.layout(config).entries]

    def all_blocks(self) -> list[BlockSpec]:
        """Exact: for every levels and widths, every block any stage setting can put there."""
        seen: dict[str, BlockSpec] = {}
        for spec in enumerate_blocks(self):
            seen.setdefault(spec.key, spec)
        return list(seen.values())

    def _module(self, spec: BlockSpec, cast: bool = True) -> nn.Module:
        """The module of `spec`, built from its args alone (so any key can be built anywhere)."""
        args = validate_spec(spec, self.name)
        dim = int(args.get("dim", 0))
        kind = spec.kind
        if kind == "unet.time_embed":
            module: nn.Module = TimeEmbedding(dim, int(args["emb"]))
        elif kind == "unet.conv_in":
            module = ConvIn(dim)
        elif kind == "unet.resnet":
            module = ResnetBlock(
                int(args["in_dim"]), int(args["skip_dim"]), dim, int(args["emb"]), (str(args["conv"]),)
            )
        elif kind == "unet.transformer":
            module = Transformer(
                dim,
                int(args["context"]),
                int(args["depth"]),
                int(args["head_dim"]),
                int(args["ffn_ratio"]),
                multi_query=args["attention"] == "mqa",
                self_attention=args["self_attention"] == "on",
            )
        elif kind == "unet.down":
            module = Downsample(dim)
        elif kind == "unet.up":
            module = Upsample(dim)
        else:
            module = ConvOut(dim)
        dtype = DTYPES[str(args["dtype"])]
        return module.to(dtype) if cast and dtype != torch.float32 else module

    def block_inputs(self, spec: BlockSpec, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """Inputs of the block of `spec` (random on a real device, empty on meta)."""
        args = validate_spec(spec, self.name)
        batch, dtype = int(args["batch"]), DTYPES[str(args["dtype"])]
        generator = torch.Generator().manual_seed(0)

        def tensor(*shape: int, float32: bool = False) -> torch.Tensor:
            kind = torch.float32 if float32 else dtype
            if torch.device(device).type == "meta":
                return torch.empty(shape, dtype=kind, device="meta")
            return torch.randn(shape, generator=generator).to(device=device, dtype=kind)

        if spec.kind == "unet.time_embed":
            return (tensor(batch, float32=True).abs() * 300,)
        side = parse_side(spec)
        if spec.kind == "unet.conv_in":
            return (tensor(batch, 4, side, side),)
        if spec.kind == "unet.resnet":
            x = tensor(batch, int(args["in_dim"]), side, side)
            emb = tensor(batch, int(args["emb"]))
            skip = int(args["skip_dim"])
            return (x, emb, tensor(batch, skip, side, side)) if skip else (x, emb)
        x = tensor(batch, int(args["dim"]), side, side)
        if spec.kind == "unet.transformer":
            return (x, tensor(batch, int(args["tokens"]), int(args["context"])))
        return (x,)

    def build_block(self, spec: BlockSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        return self._module(spec), self.block_inputs(spec)

    def build(self, config: Mapping[str, Any]) -> UNet:
        entries = self.layout(config).entries
        return UNet([self._module(entry.spec) for entry in entries], [entry.step for entry in entries])

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        side, dtype = self.options["latent_size"], DTYPES[self.options["dtype"]]
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(batch, 4, side, side, generator=generator).to(dtype)
        timestep = torch.randint(0, 1000, (batch,), generator=generator).float()
        context = torch.randn(
            batch, self.options["text_tokens"], self.options["cross_attention_dim"], generator=generator
        )
        return sample, timestep, context.to(dtype)

    def block_memory(self, spec: BlockSpec) -> BlockMemory:
        """Peak and output bytes of one block, measured on the meta device once per key."""
        memory = _MEMORY_BY_KEY.get(spec.key)
        if memory is None:
            with torch.device("meta"):
                memory = block_memory(self._module(spec), self.block_inputs(spec, "meta"))
            _MEMORY_BY_KEY[spec.key] = memory
        return memory

    def memory(self, config: Mapping[str, Any]) -> int:
        """Peak activation memory (bytes) of one forward pass at batch 1: the most bytes of
        activations alive at once, the inputs included and the parameters not (see `_memory.py`)."""
        entries = self.layout(config).entries
        resident = sum(t.nelement() * t.element_size() for t in self.example_inputs())
        return compose_peak(
            [entry.step for entry in entries], [self.block_memory(entry.spec) for entry in entries], resident
        )

    def supernet(self) -> UNetSupernet:
        return UNetSupernet(self)


__all__ = ["UNetSpace", "UNetSupernet"]
