"""Weight-sharing supernet of the UNet space, and the weight copy that extracts a subnet from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from search_spaces._base import Supernet
from search_spaces._unet_layout import LayoutEntry, entry_channels, stage_level, stage_names
from search_spaces._unet_modules import (
    ConvIn,
    ConvOut,
    Downsample,
    ResnetBlock,
    Step,
    TimeEmbedding,
    Transformer,
    UNet,
    Upsample,
    heads_for,
    run_blocks,
    take,
)

if TYPE_CHECKING:
    from search_spaces.unet import UNetSpace

SourceIndices = dict[str, dict[int, torch.Tensor]]


def copy_active(target: nn.Module, source: nn.Module, indices: SourceIndices | None = None) -> None:
    """Fill `target` (a standalone block) with its slices of `source` (the supernet's block): leading
    slices on every axis, except the (name, axis) pairs of `indices`."""
    shared = source.state_dict()
    indices = indices or {}
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            value = shared[name]
            for axis, size in enumerate(tensor.shape):
                value = take(value, axis, size, indices.get(name, {}).get(axis))
            tensor.copy_(value)


class UNetSupernet(Supernet):
    """Weight-sharing UNet holding, per stage, the most ResNets and transformers any subnet has, each at
    the widest width its place can take, with both ResNet conv variants, the deepest transformers, the
    widest FFN, multi-head key/value projections and self-attention everywhere.

    A subnet uses the first ResNets and transformers of each stage, leading channel slices (an up-path
    ResNet's skip channels start after its widest x), the first `depth` transformer layers, the first
    hidden units of each GEGLU half, the leading rows of the attention projections (multi-query takes
    the first head's keys and values; other head sizes regroup the same rows) and its conv variant.
    There are no running statistics (GroupNorm and LayerNorm only), so train and eval agree on that.

    `skip_prob`: in train mode every ResNet and transformer block of the active subnet is replaced by
    the identity with this probability (SnapFusion's robust training); ResNets that change the width
    always run (see `run_blocks`). Eval mode never skips. The weights are float32 whatever the space's
    dtype; `extract` returns the space's dtype.
    """

    def __init__(self, space: UNetSpace):
        super().__init__(space)
        self.skip_prob = 0.0
        levels = space.max_levels
        widest = [space.width(max(space.channel_options[lv])) for lv in range(levels)]
        emb = 4 * widest[0]
        context = space.options["cross_attention_dim"]
        self.time_embed = TimeEmbedding(widest[0], emb)
        self.conv_in = ConvIn(widest[0])
        self.downsamplers = nn.ModuleList(Downsample(widest[lv]) for lv in range(levels - 1))
        self.upsamplers = nn.ModuleList(Upsample(widest[lv]) for lv in range(1, levels))
        self.conv_out = ConvOut(widest[0])
        self.stages = nn.ModuleDict()
        for stage in stage_names(levels):
            present = [lv for lv in space.levels_options if stage in stage_names(lv)]
            level_of = {lv: stage_level(stage, lv) for lv in present}
            out = max(widest[level_of[lv]] for lv in present)
            entering = max(entry_channels(stage, lv, widest.__getitem__) for lv in present)
            skip = 0
            if stage.startswith("up"):
                level = level_of[present[0]]
                skip = max(widest[max(level - 1, 0)], widest[level])
            options = space.stage_options(stage)
            resnets = nn.ModuleList(
                ResnetBlock(max(entering, out), skip, out, emb, space.conv_options, shortcut=True)
                for _ in range(max(options["resnets"]))
            )
            scaled = {space.width(w) for lv in present for w in space.channel_options[level_of[lv]]}
            inner = max(heads_for(w, hd) * hd for w in scaled for hd in options["head_dim"])
            transformers = nn.ModuleList(
                Transformer(
                    out,
                    context,
                    max(options["transformer_depth"]),
                    inner,
                    max(options["ffn_ratio"]),
                    multi_query=False,
                    self_attention=True,
                    heads=1,
                )
                for _ in range(max(options["transformers"]))
            )
            self.stages[stage] = nn.ModuleDict({"resnets": resnets, "transformers": transformers})
        self._entries: tuple[LayoutEntry, ...] = ()
        self._modules_active: list[nn.Module] = []
        self.activate(space.largest())

    def _slot(self, entry: LayoutEntry) -> nn.Module:
        if entry.slot in ("time", "conv_in", "conv_out"):
            return {"time": self.time_embed, "conv_in": self.conv_in, "conv_out": self.conv_out}[entry.slot]
        if entry.slot == "down":
            return self.downsamplers[entry.index]
        if entry.slot == "up":
            return self.upsamplers[entry.index - 1]
        return self.stages[entry.stage][entry.slot + "s"][entry.index]

    def activate(self, config: Mapping[str, Any]) -> None:
        c = self.space.canonicalize(config)
        self.active_config = c
        self._entries = self.space.layout(c).entries
        modules = []
        for entry in self._entries:
            module = self._slot(entry)
            args = entry.spec.arg_dict
            if isinstance(module, TimeEmbedding):
                module.active_dim, module.active_emb = int(args["dim"]), int(args["emb"])
            elif isinstance(module, ConvIn):
                module.active_out = int(args["dim"])
            elif isinstance(module, ResnetBlock):
                module.active_out, module.active_conv = int(args["dim"]), str(args["conv"])
            elif isinstance(module, Transformer):
                module.set_active(
                    int(args["dim"]),
                    int(args["depth"]),
                    int(args["head_dim"]),
                    int(args["ffn_ratio"]),
                    multi_query=args["attention"] == "mqa",
                    self_attention=args["self_attention"] == "on",
                )
            modules.append(module)
        self._modules_active = modules

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(entry.step for entry in self._entries)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        skip_prob = self.skip_prob if self.training else 0.0
        return run_blocks(
            self._modules_active, self.steps, sample, timestep, encoder_hidden_states, skip_prob
        )

    def extract(self, config: Mapping[str, Any]) -> UNet:
        """A standalone subnet (the class `space.build` returns) holding the supernet's slices of the
        weights, in the supernet's train/eval mode."""
        previous = self.active_config
        self.activate(config)
        device = next(self.parameters()).device
        model = self.space.build(self.active_config).to(device)
        for target, source, entry in zip(model.blocks, self._modules_active, self._entries, strict=True):
            indices: SourceIndices = {}
            if isinstance(source, ResnetBlock):
                indices = source.source_indices(int(entry.spec["in_dim"]), int(entry.spec["skip_dim"]))
            elif isinstance(source, Transformer):
                indices = source.source_indices()
            copy_active(target, source, indices)
        if previous is not None:
            self.activate(previous)
        return model.train(self.training)
