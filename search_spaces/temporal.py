"""SnapGen-V-style video search space (arXiv 2412.10494): temporal layers added to a frozen image UNet.

The image UNet is the option `base`: the name of a UNet-space reference config (`snapgen` by default)
or a UNet config as a JSON object. It runs every frame as an image (its blocks are the UNet space's
blocks at batch = `frames`). Per stage of the base (down0, ..., mid, ..., up0) a config chooses a
temporal layer type (`none`, `conv1d`, `attn`, `conv3d`, `st_attn`; see `_temporal_modules.py`), how
many (`temporal_count`, stacked one after the other) and where (`temporal_after` = k: after the
stage's k-th ResNet or transformer; 0 is the stage's start). `temporal_after` is clamped to the
number of blocks the base has in that stage, and stages the base lacks are zeroed. Where a skip
tensor is taken at that point, it is taken after the temporal layers.

Temporal layers start as the identity, so at initialisation the video model is the image model on
every frame. `memory(config)` is the peak activation memory in bytes of one forward pass on one video
(see `_memory.py`): attention across all frames and positions (`st_attn`) at high resolution is where
configs stop fitting a device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from search_spaces._base import (
    Choice,
    Config,
    ConfigError,
    OptionError,
    OptionSpec,
    SearchSpace,
    SpaceError,
    Supernet,
)
from search_spaces._blocks import BlockSpec
from search_spaces._counting import count_params
from search_spaces._memory import BlockMemory, block_memory, compose_peak
from search_spaces._space_registry import register_space
from search_spaces._temporal_modules import (
    TEMPORAL_TYPES,
    TemporalAttention,
    VideoUNet,
    run_video,
    temporal_layer,
)
from search_spaces._unet_layout import (
    DTYPES,
    STAGE_KINDS,
    LayoutEntry,
    parse_side,
    stage_level,
    stage_names,
    validate_spec,
)
from search_spaces._unet_layout import KIND_ARGS as UNET_KIND_ARGS
from search_spaces._unet_modules import Step
from search_spaces._unet_supernet import copy_active
from search_spaces.unet import UNetSpace

KIND_PREFIX = "temporal."
_KIND_ARGS = {f"{KIND_PREFIX}{kind}": ("dim", "frames", "hw") for kind in TEMPORAL_TYPES}
#: Every kind a video subnet contains: the image UNet's and the temporal layers'.
_ALL_KIND_ARGS = {**UNET_KIND_ARGS, **_KIND_ARGS}
#: What the option `base` accepts, for its description and its errors.
_BASE_ACCEPTS = (
    f"a UNet reference config {sorted(UNetSpace.reference_configs())} or a UNet config as a JSON object"
)
_PARAMS_BY_KEY: dict[str, int] = {}
_MEMORY_BY_KEY: dict[str, BlockMemory] = {}


def _type(stage: str) -> str:
    return f"{stage}.temporal"


def _count(stage: str) -> str:
    return f"{stage}.temporal_count"


def _after(stage: str) -> str:
    return f"{stage}.temporal_after"


@dataclass(frozen=True)
class VideoEntry:
    """One block of a video subnet: an image block (`base_index` into the base's layout) or the
    `index`-th temporal layer of type `kind` in `stage`."""

    spec: BlockSpec
    step: Step
    stage: str
    kind: str
    index: int
    base_index: int = -1


@register_space
class TemporalSpace(SearchSpace):
    """Temporal layers (type, count, placement per stage) on a frozen image UNet, SnapGen-V style."""

    name = "temporal"
    description = (
        "Video UNets: per stage of a frozen image UNet, the type, count and placement of temporal "
        "layers (1-D/3-D convolutions, temporal or spatio-temporal attention)."
    )

    supernet_freezes: ClassVar[bool] = True
    type_options: ClassVar[tuple[str, ...]] = ("none", *TEMPORAL_TYPES)
    count_options: ClassVar[tuple[int, ...]] = (1, 2, 3)

    def __init__(self, **options: Any):
        super().__init__(**options)
        unet_options = {
            name: self.options[name]
            for name in ("latent_size", "text_tokens", "cross_attention_dim", "width_scale", "dtype")
        }
        self.unet = UNetSpace(**unet_options)
        self.base_config = self._parse_base(self.options["base"])
        self.base_layout = self.unet.layout(self.base_config, batch=self.options["frames"])
        entries = self.base_layout.entries
        #: Per stage of the base, the indices (in its layout) of its ResNets and transformers.
        self.stage_blocks = {
            stage: [
                i for i, e in enumerate(entries) if e.stage == stage and e.slot in ("resnet", "transformer")
            ]
            for stage in stage_names(self.base_config["levels"])
        }

    def _parse_base(self, base: str) -> Config:
        allowed = _BASE_ACCEPTS
        if base in UNetSpace.reference_configs():
            return self.unet.canonicalize(base)
        try:
            value = json.loads(base)
        except ValueError:
            raise OptionError(
                f"option 'base' = {base!r} is neither {allowed}", field="base", allowed=allowed
            ) from None
        if not isinstance(value, dict):
            raise OptionError(f"option 'base' must be {allowed}, got {base!r}", field="base", allowed=allowed)
        try:
            return self.unet.canonicalize(value)
        except SpaceError as error:
            raise OptionError(
                f"option 'base' is not a valid UNet config: {error}", field="base", allowed=allowed
            ) from error

    # ----------------------------------------------------------------- declarations
    @classmethod
    def option_specs(cls) -> list[OptionSpec]:
        unet = {spec.name: spec for spec in UNetSpace.option_specs()}
        return [
            OptionSpec(
                "base",
                "snapgen",
                str,
                help="frozen image UNet: a UNet reference config name or a UNet config as JSON",
                accepts=_BASE_ACCEPTS,
            ),
            OptionSpec("frames", 16, int, minimum=2, maximum=64, help="frames per video"),
            unet["latent_size"],
            unet["text_tokens"],
            unet["cross_attention_dim"],
            unet["width_scale"],
            unet["dtype"],
        ]

    @classmethod
    def _after_options(cls, stage: str) -> tuple[int, ...]:
        kind = STAGE_KINDS[stage]
        most = max(UNetSpace.resnet_options[kind]) + max(UNetSpace.transformer_options[kind])
        return tuple(range(most + 1))

    def choices(self) -> list[Choice]:
        out = []
        for stage in stage_names(max(UNetSpace.levels_options)):
            out.append(Choice(_type(stage), self.type_options, f"temporal layer type in stage {stage}"))
            out.append(Choice(_count(stage), self.count_options, f"temporal layers stacked in stage {stage}"))
            out.append(
                Choice(
                    _after(stage),
                    self._after_options(stage),
                    f"temporal layers go after this block of {stage} (0: start)",
                )
            )
        return out

    @classmethod
    def reference_configs(cls) -> dict[str, Config]:
        stages = stage_names(max(UNetSpace.levels_options))

        def every(kind_of: Any) -> Config:
            config: Config = {}
            for stage in stages:
                kind = kind_of(stage)
                config[_type(stage)] = kind
                config[_count(stage)] = 1 if kind != "none" else 0
                config[_after(stage)] = max(cls._after_options(stage)) if kind != "none" else 0
            return config

        return {
            "image": every(lambda stage: "none"),
            "conv1d": every(lambda stage: "conv1d"),
            "attn": every(lambda stage: "attn"),
            # Convolutions where maps are large, attention across frames where they are small.
            "mixed": every(lambda stage: "conv1d" if stage_level(stage, 4) < 2 else "attn"),
        }

    def _canonicalize(self, config: Config) -> Config:
        out = dict(config)
        present = set(self.stage_blocks)
        for stage in stage_names(max(UNetSpace.levels_options)):
            names = (_type(stage), _count(stage), _after(stage))
            if stage not in present:
                out.update(dict.fromkeys(names, 0))
                continue
            kind = out[_type(stage)]
            if kind == 0 or (kind != "none" and out[_count(stage)] == 0):
                name = _type(stage) if kind == 0 else _count(stage)
                options = list(self.choice_map[name].options)
                raise ConfigError(
                    f"choice {name!r} may not be 0; options: {options}", field=name, allowed=options
                )
            if kind == "none":
                out[_count(stage)] = out[_after(stage)] = 0
            else:
                out[_after(stage)] = min(out[_after(stage)], len(self.stage_blocks[stage]))
        return out

    @property
    def cardinality(self) -> int:
        per_stage = (
            1 + (len(self.type_options) - 1) * len(self.count_options) * (len(blocks) + 1)
            for blocks in self.stage_blocks.values()
        )
        return math.prod(per_stage)

    # ----------------------------------------------------------------- blocks
    def position(self, stage: str, after: int) -> int:
        """Index in the base's layout before which temporal layers placed after block `after` go."""
        return self.base_layout.starts[stage] if after == 0 else self.stage_blocks[stage][after - 1] + 1

    def temporal_spec(self, kind: str, position: int) -> BlockSpec:
        """The spec of a temporal layer of type `kind` inserted before the base's entry `position`."""
        previous: LayoutEntry = self.base_layout.entries[position - 1]
        side = previous.out_side
        spec = BlockSpec.make(
            KIND_PREFIX + kind,
            batch=1,
            dim=previous.out_dim,
            frames=self.options["frames"],
            hw=f"{side}x{side}",
            dtype=self.options["dtype"],
        )
        params = _PARAMS_BY_KEY.get(spec.key)
        if params is None:
            with torch.device("meta"):
                params = _PARAMS_BY_KEY[spec.key] = count_params(self._module(spec, cast=False))
        return BlockSpec(kind=spec.kind, args=spec.args, params=params)

    def layout(self, config: Mapping[str, Any]) -> list[VideoEntry]:
        """The video subnet's blocks in execution order: the base's, with the temporal layers inserted."""
        c = self.canonicalize(config)
        inserted: dict[int, list[tuple[str, str]]] = {}
        for stage in self.stage_blocks:
            if c[_type(stage)] != "none":
                position = self.position(stage, c[_after(stage)])
                inserted.setdefault(position, []).extend([(stage, c[_type(stage)])] * c[_count(stage)])
        out: list[VideoEntry] = []
        for index, entry in enumerate(self.base_layout.entries):
            layers = inserted.get(index, [])
            pushed = bool(layers) and out[-1].step.push
            if pushed:
                # The skip tensor is taken after the temporal layers placed here.
                out[-1] = replace(out[-1], step=replace(out[-1].step, push=False))
            for number, (stage, kind) in enumerate(layers):
                step = Step("temporal", push=pushed and number == len(layers) - 1)
                slot = sum(1 for e in out if e.stage == stage and e.kind == kind)
                out.append(VideoEntry(self.temporal_spec(kind, index), step, stage, kind, slot))
            out.append(VideoEntry(entry.spec, entry.step, entry.stage, "image", 0, index))
        return out

    def blocks(self, config: Mapping[str, Any]) -> list[BlockSpec]:
        return [entry.spec for entry in self.layout(config)]

    def all_blocks(self) -> list[BlockSpec]:
        """Exact: the base's blocks and every temporal layer type at every place a stage allows."""
        seen = {entry.spec.key: entry.spec for entry in self.base_layout.entries}
        for stage, blocks in self.stage_blocks.items():
            for after in range(len(blocks) + 1):
                for kind in TEMPORAL_TYPES:
                    spec = self.temporal_spec(kind, self.position(stage, after))
                    seen.setdefault(spec.key, spec)
        return list(seen.values())

    def _module(self, spec: BlockSpec, cast: bool = True) -> nn.Module:
        if not spec.kind.startswith(KIND_PREFIX):
            return self.unet._module(spec, cast)
        args = validate_spec(spec, self.name, _KIND_ARGS)
        module = temporal_layer(spec.kind.removeprefix(KIND_PREFIX), int(args["dim"]), int(args["frames"]))
        dtype = DTYPES[str(args["dtype"])]
        return module.to(dtype) if cast and dtype != torch.float32 else module

    def block_inputs(self, spec: BlockSpec, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        if not spec.kind.startswith(KIND_PREFIX):
            return self.unet.block_inputs(spec, device)
        args = validate_spec(spec, self.name, _KIND_ARGS)
        side, dtype = parse_side(spec), DTYPES[str(args["dtype"])]
        shape = (int(args["batch"]) * int(args["frames"]), int(args["dim"]), side, side)
        if torch.device(device).type == "meta":
            return (torch.empty(shape, dtype=dtype, device="meta"),)
        return (
            torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype),
        )

    def build_block(self, spec: BlockSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        validate_spec(spec, self.name, _ALL_KIND_ARGS)
        return self._module(spec), self.block_inputs(spec)

    def build(self, config: Mapping[str, Any]) -> VideoUNet:
        entries = self.layout(config)
        return VideoUNet(
            [self._module(e.spec) for e in entries], [e.step for e in entries], self.options["frames"]
        )

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        sample, timestep, context = self.unet.example_inputs(batch * self.options["frames"])
        frames = self.options["frames"]
        return sample.unflatten(0, (batch, frames)), timestep[:batch], context[:batch]

    def memory(self, config: Mapping[str, Any]) -> int:
        """Peak activation memory (bytes) of one forward pass on one video: the most bytes of
        activations alive at once, the inputs and their per-frame copies included, the parameters not."""
        entries = self.layout(config)
        blocks = []
        for entry in entries:
            if entry.kind == "image":
                blocks.append(self.unet.block_memory(entry.spec))
                continue
            memory = _MEMORY_BY_KEY.get(entry.spec.key)
            if memory is None:
                with torch.device("meta"):
                    memory = block_memory(self._module(entry.spec), self.block_inputs(entry.spec, "meta"))
                _MEMORY_BY_KEY[entry.spec.key] = memory
            blocks.append(memory)
        sample, timestep, context = self.example_inputs()
        frames = self.options["frames"]
        resident = sum(t.nelement() * t.element_size() for t in (sample, timestep, context))
        resident += frames * (
            timestep.nelement() * timestep.element_size() + context.nelement() * context.element_size()
        )
        return compose_peak([entry.step for entry in entries], blocks, resident)

    def supernet(self) -> TemporalSupernet:
        return TemporalSupernet(self)


class TemporalSupernet(Supernet):
    """The frozen image UNet (the base, `requires_grad=False`) plus, per stage and temporal layer type,
    `max(count_options)` temporal layers at the widest width their places can take. A subnet uses the
    first `temporal_count` layers of its type in each stage, on leading channels, wherever it places
    them: placements share weights.

    `temporal_parameters()` are the trainable ones. `skip_prob` applies SnapFusion's robust training
    to the image blocks (see `UNetSupernet`); temporal layers always run. `load_image_unet` copies in
    the weights of a trained image UNet of the base's architecture.
    """

    def __init__(self, space: TemporalSpace):
        super().__init__(space)
        self.skip_prob = 0.0
        self.image = space.unet.build(space.base_config)
        self.image.requires_grad_(False)
        frames = space.options["frames"]
        self.temporal = nn.ModuleDict()
        for stage, blocks in space.stage_blocks.items():
            widest = max(
                space.base_layout.entries[space.position(stage, after) - 1].out_dim
                for after in range(len(blocks) + 1)
            )
            self.temporal[stage] = nn.ModuleDict(
                {
                    kind: nn.ModuleList(
                        temporal_layer(kind, widest, frames) for _ in range(max(space.count_options))
                    )
                    for kind in TEMPORAL_TYPES
                }
            )
        self._entries: list[VideoEntry] = []
        self._modules_active: list[nn.Module] = []
        self.activate(space.largest())

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        return self.temporal.parameters()

    def load_image_unet(self, unet: nn.Module) -> None:
        """Copy the weights of a standalone image UNet (e.g. extracted from a trained UNet supernet)."""
        self.image.load_state_dict(unet.state_dict())

    def activate(self, config: Mapping[str, Any]) -> None:
        c = self.space.canonicalize(config)
        self.active_config = c
        self._entries = self.space.layout(c)
        modules = []
        for entry in self._entries:
            if entry.kind == "image":
                modules.append(self.image.blocks[entry.base_index])
                continue
            module = self.temporal[entry.stage][entry.kind][entry.index]
            if isinstance(module, TemporalAttention):
                module.set_active(int(entry.spec["dim"]))
            modules.append(module)
        self._modules_active = modules

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        skip_prob = self.skip_prob if self.training else 0.0
        steps = [entry.step for entry in self._entries]
        return run_video(
            self._modules_active,
            steps,
            self.space.options["frames"],
            sample,
            timestep,
            encoder_hidden_states,
            skip_prob,
        )

    def frozen_start(self, config: Mapping[str, Any]) -> VideoUNet:
        """A video subnet as SnapGen-V trains one: this supernet's image UNet, frozen, with freshly
        initialised temporal layers (drawn from the global random state)."""
        c = self.space.canonicalize(config)
        model = self.space.build(c)
        for block, entry in zip(model.blocks, self.space.layout(c), strict=True):
            if entry.kind == "image":
                block.load_state_dict(self.image.blocks[entry.base_index].state_dict())
                block.requires_grad_(False)
        return model.to(next(self.temporal.parameters()).device)

    def extract(self, config: Mapping[str, Any]) -> VideoUNet:
        """A standalone video subnet (what `space.build` returns) with the supernet's weights."""
        previous = self.active_config
        self.activate(config)
        device = next(self.temporal.parameters()).device
        model = self.space.build(self.active_config).to(device)
        for target, source in zip(model.blocks, self._modules_active, strict=True):
            copy_active(target, source)
        if previous is not None:
            self.activate(previous)
        return model.train(self.training)


__all__ = ["TemporalSpace", "TemporalSupernet"]
