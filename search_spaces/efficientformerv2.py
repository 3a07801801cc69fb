"""EfficientFormerV2 search space (arXiv 2212.08059): depth, width, per-block FFN expansion and the
number of attention blocks of every stage, with S0, S1, S2 and L as reference configs.

A subnet is a stem, four stages of residual blocks (stages 0 and 1: FFN blocks; stages 2 and 3: FFN
blocks followed by `vit` attention + FFN blocks, the stage-2 attention strided), a downsampling
between stages (the last one with attention) and a classifier head. At 224 px with both heads, the
reference configs have exactly the parameter counts of the public reference models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from search_spaces._base import Choice, Config, ConfigError, OptionError, OptionSpec, SearchSpace, Supernet
from search_spaces._blocks import BlockSpec
from search_spaces._counting import count_params
from search_spaces._effv2_modules import (
    Attention4D,
    AttentionDownsampleBlock,
    Block,
    Downsample,
    EfficientFormerV2,
    Head,
    Stem,
)
from search_spaces._space_registry import register_space

NUM_STAGES = 4
#: Stages whose last `vit` blocks are attention + FFN.
ATTENTION_STAGES = (2, 3)
#: Stage whose attention runs on a stride-2 map.
STRIDED_ATTENTION_STAGE = 2
RESOLUTION_STEP = 32
KIND_PREFIX = "effv2."
HEAD_VARIANTS = ("both", "classifier", "none")

# (widths, depths, vit, expansion ratios per stage), from the public reference models.
_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int, tuple[tuple[int, ...], ...]]] = {
    "s0": ((32, 48, 96, 176), (2, 2, 6, 4), 2, ((4,) * 2, (4,) * 2, (4, 3, 3, 3, 4, 4), (4, 3, 3, 4))),
    "s1": (
        (32, 48, 120, 224),
        (3, 3, 9, 6),
        2,
        ((4,) * 3, (4,) * 3, (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)),
    ),
    "s2": (
        (32, 64, 144, 288),
        (4, 4, 12, 8),
        4,
        ((4,) * 4, (4,) * 4, (4, 4) + (3,) * 6 + (4,) * 4, (4, 4, 3, 3, 3, 3, 4, 4)),
    ),
    "l": (
        (40, 80, 192, 384),
        (5, 5, 15, 10),
        6,
        ((4,) * 5, (4,) * 5, (4,) * 4 + (3,) * 7 + (4,) * 4, (4, 4, 4) + (3,) * 4 + (4,) * 3),
    ),
}

# Required arguments of each block kind (besides `batch` and `dtype`, which every kind takes).
_KIND_ARGS: dict[str, tuple[str, ...]] = {
    "effv2.stem": ("dim", "hw"),
    "effv2.ffn": ("dim", "ratio", "hw"),
    "effv2.attn_ffn": ("dim", "ratio", "hw", "stride"),
    "effv2.downsample": ("in_dim", "out_dim", "hw"),
    "effv2.attn_downsample": ("in_dim", "out_dim", "hw"),
    "effv2.head": ("dim", "hw", "heads"),
}

_POSITIVE_ARGS = ("dim", "in_dim", "out_dim", "ratio", "stride", "batch", "num_classes")

_PARAMS_BY_KEY: dict[str, int] = {}


def _depth(stage: int) -> str:
    return f"stage{stage}.depth"


def _width(stage: int) -> str:
    return f"stage{stage}.width"


def _vit(stage: int) -> str:
    return f"stage{stage}.vit"


def _ratio(stage: int, block: int) -> str:
    return f"stage{stage}.block{block}.ratio"


def _parse_hw(spec: BlockSpec) -> int:
    text = str(spec["hw"])
    height, sep, width = text.partition("x")
    if not (sep and height.isdigit() and width.isdigit() and height == width and int(height) > 0):
        raise ValueError(f"block {spec.key!r}: hw must be a square 'NxN' with N > 0, got {text!r}")
    return int(height)


@register_space
class EfficientFormerV2Space(SearchSpace):
    """EfficientFormerV2 backbones: per stage depth, width, FFN expansion ratio of every block and
    (stages 2 and 3) the number of trailing attention blocks, which is clamped to the depth."""

    name = "efficientformerv2"
    description = (
        "EfficientFormerV2 image classifiers (S0..L): depth, width, per-block FFN expansion and "
        "attention blocks per stage."
    )

    depth_options: ClassVar[tuple[tuple[int, ...], ...]] = (
        tuple(range(1, 6)),
        tuple(range(1, 6)),
        tuple(range(1, 16)),
        tuple(range(1, 11)),
    )
    width_options: ClassVar[tuple[tuple[int, ...], ...]] = (
        (32, 40),
        (48, 64, 80),
        (96, 120, 144, 160, 192),
        (176, 224, 256, 288, 320, 384),
    )
    ratio_options: ClassVar[tuple[int, ...]] = (2, 3, 4)
    vit_options: ClassVar[tuple[int, ...]] = tuple(range(7))

    def __init__(self, **options: Any):
        super().__init__(**options)
        resolution = self.options["resolution"]
        if resolution % RESOLUTION_STEP:
            raise OptionError(
                f"option 'resolution' = {resolution} must be a multiple of {RESOLUTION_STEP} "
                f"(the last stage runs at 1/{RESOLUTION_STEP} of it)",
                field="resolution",
                allowed=self._resolution_allowed(),
            )

    # ----------------------------------------------------------------- declarations
    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        return [
            OptionSpec(
                "resolution", 224, int, minimum=32, maximum=1024, help="input side in pixels, multiple of 32"
            ),
            OptionSpec("num_classes", 1000, int, minimum=1, maximum=100_000, help="classifier outputs"),
            OptionSpec(
                "heads",
                "both",
                str,
                allowed=HEAD_VARIANTS,
                help="both: classifier + distillation head averaged at inference; none: pooled features",
            ),
            OptionSpec("dtype", "fp32", str, allowed=("fp32",), help="numeric type of every block"),
        ]

    @classmethod
    def _resolution_allowed(cls) -> str:
        spec = next(s for s in cls.option_specs() if s.name == "resolution")
        return f"int multiple of {RESOLUTION_STEP} in [{spec.minimum}, {spec.maximum}]"

    def choices(self) -> list[Choice]:
        out = []
        for stage in range(NUM_STAGES):
            depths = self.depth_options[stage]
            out.append(Choice(_depth(stage), depths, f"blocks in stage {stage}"))
            out.append(Choice(_width(stage), self.width_options[stage], f"channels of stage {stage}"))
            if stage in ATTENTION_STAGES:
                out.append(
                    Choice(
                        _vit(stage),
                        self.vit_options,
                        f"trailing attention + FFN blocks of stage {stage} (clamped to its depth)",
                    )
                )
            for block in range(max(depths)):
                out.append(
                    Choice(
                        _ratio(stage, block),
                        self.ratio_options,
                        f"FFN expansion of block {block} of stage {stage} (0 beyond the depth)",
                    )
                )
        return out

    @classmethod
    def reference_configs(cls) -> dict[str, Config]:
        configs: dict[str, Config] = {}
        for name, (widths, depths, vit, ratios) in _VARIANTS.items():
            config: Config = {}
            for stage in range(NUM_STAGES):
                config[_depth(stage)] = depths[stage]
                config[_width(stage)] = widths[stage]
                if stage in ATTENTION_STAGES:
                    config[_vit(stage)] = vit
                for block in range(max(cls.depth_options[stage])):
                    config[_ratio(stage, block)] = ratios[stage][block] if block < depths[stage] else 0
            configs[name] = config
        return configs

    @property
    def cardinality(self) -> int:
        total = 1
        for stage in range(NUM_STAGES):
            per_width = 0
            for depth in self.depth_options[stage]:
                vits = len({min(v, depth) for v in self.vit_options}) if stage in ATTENTION_STAGES else 1
                per_width += len(self.ratio_options) ** depth * vits
            total *= per_width * len(self.width_options[stage])
        return total

    def _canonicalize(self, config: Config) -> Config:
        out = {name: int(value) for name, value in config.items()}
        for stage in range(NUM_STAGES):
            for name in (_depth(stage), _width(stage)):
                if out[name] == 0:
                    options = list(self.choice_map[name].options)
                    raise ConfigError(
                        f"choice {name!r} may not be 0; options: {options}", field=name, allowed=options
                    )
            depth = out[_depth(stage)]
            for block in range(max(self.depth_options[stage])):
                name = _ratio(stage, block)
                if block >= depth:
                    out[name] = 0
                elif out[name] == 0:
                    raise ConfigError(
                        f"choice {name!r} may not be 0: block {block} is within stage {stage}'s depth "
                        f"{depth}; options: {list(self.ratio_options)}",
                        field=name,
                        allowed=list(self.ratio_options),
                    )
            if stage in ATTENTION_STAGES:
                out[_vit(stage)] = min(out[_vit(stage)], depth)
        return out

    # ----------------------------------------------------------------- blocks
    def _side(self, stage: int) -> int:
        """Side of the feature map inside `stage` (the stem divides by 4, each stage after by 2)."""
        return self.options["resolution"] >> (stage + 2)

    def _spec(self, kind: str, hw: int, **args: int | str) -> BlockSpec:
        common = {"hw": f"{hw}x{hw}", "batch": 1, "dtype": self.options["dtype"]}
        spec = BlockSpec.make(kind, **common, **args)
        params = _PARAMS_BY_KEY.get(spec.key)
        if params is None:
            # Built on the meta device: exact shapes, no memory and no initialisation cost.
            with torch.device("meta"):
                params = count_params(self._module(spec))
            _PARAMS_BY_KEY[spec.key] = params
        return BlockSpec.make(kind, params=params, **common, **args)

    def _head_spec(self, dim: int) -> BlockSpec:
        heads = self.options["heads"]
        extra = {} if heads == "none" else {"num_classes": self.options["num_classes"]}
        return self._spec("effv2.head", self._side(NUM_STAGES - 1), dim=dim, heads=heads, **extra)

    def blocks(self, config: Mapping[str, Any]) -> list[BlockSpec]:
        c = self.canonicalize(config)
        widths = [c[_width(stage)] for stage in range(NUM_STAGES)]
        specs = [self._spec("effv2.stem", self.options["resolution"], dim=widths[0])]
        for stage in range(NUM_STAGES):
            side, dim, depth = self._side(stage), widths[stage], c[_depth(stage)]
            first_attention = depth - c.get(_vit(stage), 0)
            for block in range(depth):
                ratio = c[_ratio(stage, block)]
                if block >= first_attention:
                    stride = 2 if stage == STRIDED_ATTENTION_STAGE else 1
                    specs.append(self._spec("effv2.attn_ffn", side, dim=dim, ratio=ratio, stride=stride))
                else:
                    specs.append(self._spec("effv2.ffn", side, dim=dim, ratio=ratio))
            if stage + 1 < NUM_STAGES:
                kind = "effv2.attn_downsample" if stage + 1 == NUM_STAGES - 1 else "effv2.downsample"
                specs.append(self._spec(kind, side, in_dim=dim, out_dim=widths[stage + 1]))
        specs.append(self._head_spec(widths[-1]))
        return specs

    def all_blocks(self) -> list[BlockSpec]:
        """Exact: every (stage, width, ratio) FFN, every attention block of the attention stages,
        every pair of neighbouring widths for the downsamplings, the stem and head of every width."""
        specs = [self._spec("effv2.stem", self.options["resolution"], dim=w) for w in self.width_options[0]]
        for stage in range(NUM_STAGES):
            side = self._side(stage)
            for dim in self.width_options[stage]:
                for ratio in self.ratio_options:
                    specs.append(self._spec("effv2.ffn", side, dim=dim, ratio=ratio))
                    if stage in ATTENTION_STAGES and max(self.vit_options) > 0:
                        stride = 2 if stage == STRIDED_ATTENTION_STAGE else 1
                        specs.append(self._spec("effv2.attn_ffn", side, dim=dim, ratio=ratio, stride=stride))
            if stage + 1 < NUM_STAGES:
                kind = "effv2.attn_downsample" if stage + 1 == NUM_STAGES - 1 else "effv2.downsample"
                for dim in self.width_options[stage]:
                    for out_dim in self.width_options[stage + 1]:
                        specs.append(self._spec(kind, side, in_dim=dim, out_dim=out_dim))
        specs.extend(self._head_spec(dim) for dim in self.width_options[-1])
        return specs

    def _module(self, spec: BlockSpec) -> nn.Module:
        """The module of `spec`, built from its args alone (so any key can be built anywhere)."""
        if spec.kind not in _KIND_ARGS:
            raise ValueError(
                f"block kind {spec.kind!r} does not belong to space {self.name!r}; known kinds: "
                f"{sorted(_KIND_ARGS)}"
            )
        args = spec.arg_dict
        missing = [name for name in (*_KIND_ARGS[spec.kind], "batch", "dtype") if name not in args]
        if missing:
            raise ValueError(f"block {spec.key!r} lacks args {missing}")
        if args["dtype"] != "fp32":
            raise ValueError(f"block {spec.key!r}: dtype {args['dtype']!r} is not supported; allowed: fp32")
        for name in _POSITIVE_ARGS:
            if name in args and not (isinstance(args[name], int | float) and args[name] > 0):
                raise ValueError(f"block {spec.key!r}: {name} must be a positive number, got {args[name]!r}")
        side = _parse_hw(spec)
        if spec.kind == "effv2.stem":
            return Stem(int(args["dim"]))
        if spec.kind in ("effv2.ffn", "effv2.attn_ffn"):
            dim = int(args["dim"])
            hidden = int(dim * args["ratio"])
            if spec.kind == "effv2.ffn":
                return Block(dim, hidden)
            stride = int(args["stride"])
            if stride not in (1, 2) or side % stride:
                raise ValueError(f"block {spec.key!r}: stride must be 1 or 2 and divide the side {side}")
            return Block(dim, hidden, Attention4D(dim, side // stride, stride))
        if spec.kind == "effv2.downsample":
            return Downsample(int(args["in_dim"]), int(args["out_dim"]))
        if spec.kind == "effv2.attn_downsample":
            return AttentionDownsampleBlock(int(args["in_dim"]), int(args["out_dim"]), side)
        heads = str(args["heads"])
        if heads not in HEAD_VARIANTS:
            raise ValueError(f"block {spec.key!r}: heads must be one of {list(HEAD_VARIANTS)}")
        num_classes = int(args.get("num_classes", 0))
        if heads != "none" and num_classes < 1:
            raise ValueError(f"block {spec.key!r}: heads={heads} needs num_classes >= 1")
        return Head(int(args["dim"]), num_classes, heads)

    def build_block(self, spec: BlockSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        module = self._module(spec)
        args = spec.arg_dict
        channels = 3 if spec.kind == "effv2.stem" else int(args.get("in_dim", args.get("dim", 0)))
        side = _parse_hw(spec)
        generator = torch.Generator().manual_seed(0)
        return module, (torch.randn(int(args["batch"]), channels, side, side, generator=generator),)

    def build(self, config: Mapping[str, Any]) -> EfficientFormerV2:
        return EfficientFormerV2([self._module(spec) for spec in self.blocks(config)])

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        side = self.options["resolution"]
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(batch, 3, side, side, generator=generator),)

    def supernet(self) -> EfficientFormerV2Supernet:
        return EfficientFormerV2Supernet(self)


class EfficientFormerV2Supernet(Supernet):
    """Weight-sharing EfficientFormerV2 at the largest width, depth and ratio of every stage.

    A subnet uses the first `depth` blocks of each stage, the first `width` channels of every layer
    and the first `width * ratio` hidden channels of every FFN. Every block of stages 2 and 3 holds
    attention weights as well as its FFN, and runs its attention when it is among the stage's last
    `vit` active blocks.

    BatchNorm: one set of statistics shared by all widths (leading slices). In eval mode a subnet
    uses the leading slices of the running statistics, exactly as its extracted module does. In train
    mode normalisation uses batch statistics and updates the leading slices in place, so statistics
    mix across the widths trained; recalibrate them for a chosen subnet (reset, then run a few
    batches in train mode without gradients) before trusting its accuracy.
    """

    def __init__(self, space: EfficientFormerV2Space):
        super().__init__(space)
        widths = [max(options) for options in space.width_options]
        ratio = max(space.ratio_options)
        self.stem = Stem(widths[0])
        stages = []
        for stage, dim in enumerate(widths):
            blocks = []
            for _ in range(max(space.depth_options[stage])):
                attention = None
                if stage in ATTENTION_STAGES:
                    stride = 2 if stage == STRIDED_ATTENTION_STAGE else 1
                    attention = Attention4D(dim, space._side(stage) // stride, stride)
                blocks.append(Block(dim, int(dim * ratio), attention))
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        downsamples: list[nn.Module] = [Downsample(widths[i], widths[i + 1]) for i in range(NUM_STAGES - 2)]
        downsamples.append(
            AttentionDownsampleBlock(widths[-2], widths[-1], space._side(NUM_STAGES - 2)),
        )
        self.downsamples = nn.ModuleList(downsamples)
        self.head = Head(widths[-1], space.options["num_classes"], space.options["heads"])
        self.depths: list[int] = []
        self.activate(space.largest())

    def activate(self, config: Mapping[str, Any]) -> None:
        c = self.space.canonicalize(config)
        self.active_config = c
        self.depths = [c[_depth(stage)] for stage in range(NUM_STAGES)]
        self.stem.active_dim = c[_width(0)]
        for stage, blocks in enumerate(self.stages):
            dim, depth = c[_width(stage)], self.depths[stage]
            first_attention = depth - c.get(_vit(stage), 0)
            for index in range(depth):
                block = blocks[index]
                block.active_hidden = int(dim * c[_ratio(stage, index)])
                block.use_attention = stage in ATTENTION_STAGES and index >= first_attention
            if stage + 1 < NUM_STAGES:
                self.downsamples[stage].active_out = c[_width(stage + 1)]

    def _active_modules(self) -> list[nn.Module]:
        """The supernet's modules of the active subnet, in the order of `space.blocks`."""
        modules: list[nn.Module] = [self.stem]
        for stage, blocks in enumerate(self.stages):
            modules.extend(blocks[: self.depths[stage]])
            if stage + 1 < NUM_STAGES:
                modules.append(self.downsamples[stage])
        modules.append(self.head)
        return modules

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        for module in self._active_modules():
            x = module(x)
        return x

    def extract(self, config: Mapping[str, Any]) -> EfficientFormerV2:
        """A standalone subnet (the class `space.build` returns) holding the leading slices of the
        supernet's weights and statistics, in the supernet's train/eval mode."""
        previous = self.active_config
        self.activate(config)
        sources = self._active_modules()
        device = next(self.parameters()).device
        model = self.space.build(self.active_config).to(device)
        if previous is not None:
            self.activate(previous)
        with torch.no_grad():
            for target, source in zip(model.blocks, sources, strict=True):
                shared = source.state_dict()
                target.load_state_dict(
                    {
                        name: shared[name][tuple(slice(0, size) for size in tensor.shape)]
                        for name, tensor in target.state_dict().items()
                    }
                )
        return model.train(self.training)


__all__ = ["EfficientFormerV2Space", "EfficientFormerV2Supernet"]
