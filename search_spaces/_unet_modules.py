"""The layers of diffusion-UNet subnets, written once for standalone subnets and for the supernet.

Structure and parameter layout follow the Stable Diffusion v1.5 `UNet2DConditionModel` (diffusers):
ResNet blocks with a time-embedding projection, `Transformer2DModel` blocks (GroupNorm, 1x1 conv in,
self-attention, cross-attention, GEGLU feed-forward, 1x1 conv out), stride-2 conv downsampling,
nearest-neighbour upsampling followed by a 3x3 conv. On top of that, the searchable variants: ResNet
convolutions that are depthwise-separable, transformers without self-attention, multi-query attention,
other feed-forward ratios, head dimensions and transformer depths.

As in the EfficientFormerV2 modules, every module holds its weights at the size it was built with and
runs at an *active* size: input channels follow the input tensors, output channels and the other
choices follow `active_*` attributes, which only the supernet changes. A standalone module's active
size is its built size, so its layers are called as they are. Slices take leading channels, with two
exceptions that keep the weight layout of the largest subnet: the input of an up-path ResNet is the
concatenation [x, skip] (its skip part starts after the largest x), and a GEGLU projection is two
halves (value, gate). `source_indices` names those non-leading slices so the supernet can copy a
subnet's weights out with exactly the slices its forward uses.

Attention runs through `F.scaled_dot_product_attention`, which fvcore has no handle for; the MAC
counter adds one (`search_spaces._counting.sdpa_macs`), so MAC figures include the attention matmuls:
SD-v1.5 counts ~401.6 GMACs, of which ~338.6 are conv and linear layers (the published figure).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32
RESNET_EPS = 1e-5
TRANSFORMER_EPS = 1e-6
SEPARABLE_EXPANSION = 2
CONV_KINDS = ("separable", "full")


# ----------------------------------------------------------------- slicing helpers
def take(tensor: torch.Tensor, axis: int, size: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """`size` entries of `tensor` along `axis`: those of `index`, else the leading ones."""
    if index is not None:
        return tensor.index_select(axis, index)
    return tensor if tensor.shape[axis] == size else tensor.narrow(axis, 0, size)


def expand_index(index: torch.Tensor | None, factor: int) -> torch.Tensor | None:
    """Channel index of a depthwise conv's outputs (`factor` per input channel) for input `index`."""
    if index is None:
        return None
    return (index[:, None] * factor + torch.arange(factor, device=index.device)).flatten()


def conv(
    layer: nn.Conv2d | nn.Conv3d, x: torch.Tensor, out: int | None = None, index: torch.Tensor | None = None
) -> torch.Tensor:
    """`layer(x)` on the input channels of `x` (those of `index` when given) and `out` outputs.

    A depthwise layer keeps `out_channels // in_channels` filters per input channel, so its output
    follows the input.
    """
    cin = x.shape[1]
    depthwise = layer.groups > 1
    factor = layer.out_channels // layer.in_channels
    out = cin * factor if depthwise else (layer.out_channels if out is None else out)
    if cin == layer.in_channels and out == layer.out_channels:
        return layer(x)
    if depthwise:
        rows = expand_index(index, factor)
        weight, groups = take(layer.weight, 0, out, rows), cin
        bias = None if layer.bias is None else take(layer.bias, 0, out, rows)
    else:
        weight, groups = take(take(layer.weight, 0, out), 1, cin, index), 1
        bias = None if layer.bias is None else take(layer.bias, 0, out)
    function = F.conv3d if isinstance(layer, nn.Conv3d) else F.conv2d
    return function(x, weight, bias, layer.stride, layer.padding, layer.dilation, groups)


def group_norm(layer: nn.GroupNorm, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """`layer(x)` on the channels of `x` (those of `index` when given), always in `num_groups` groups."""
    c = x.shape[1]
    if c == layer.num_channels:
        return layer(x)
    return F.group_norm(
        x, layer.num_groups, take(layer.weight, 0, c, index), take(layer.bias, 0, c, index), layer.eps
    )


def layer_norm(layer: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    if c == layer.normalized_shape[0]:
        return layer(x)
    return F.layer_norm(x, (c,), take(layer.weight, 0, c), take(layer.bias, 0, c), layer.eps)


def linear(
    layer: nn.Linear, x: torch.Tensor, out: int | None = None, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """`layer(x)` on the leading `x.shape[-1]` input features and `out` outputs (those of `rows`)."""
    cin = x.shape[-1]
    out = layer.out_features if out is None else out
    if cin == layer.in_features and out == layer.out_features:
        return layer(x)
    weight = take(take(layer.weight, 0, out, rows), 1, cin)
    bias = None if layer.bias is None else take(layer.bias, 0, out, rows)
    return F.linear(x, weight, bias)


def heads_for(dim: int, head_dim: int) -> int:
    """Attention heads of a `dim`-wide transformer: as many whole heads as fit, at least one."""
    return max(1, dim // head_dim)


# ----------------------------------------------------------------- blocks
class TimeEmbedding(nn.Module):
    """Sinusoidal projection of the timestep (cos first, `dim` features) -> Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, emb: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, emb)
        self.linear_2 = nn.Linear(emb, emb)
        self.active_dim, self.active_emb = dim, emb

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        half = self.active_dim // 2
        exponent = torch.arange(half, dtype=torch.float32, device=timestep.device) * (-math.log(10000) / half)
        angles = timestep.float()[:, None] * exponent.exp()[None]
        # A dynamically quantized Linear (int8 latency kernels) has `weight()` as a method and float input.
        weight = self.linear_1.weight
        dtype = weight.dtype if isinstance(weight, torch.Tensor) else torch.float32
        features = torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)
        hidden = F.silu(linear(self.linear_1, features, self.active_emb))
        return linear(self.linear_2, hidden, self.active_emb)


class ConvIn(nn.Module):
    """3x3 conv from the 4 latent channels to the first level's width."""

    def __init__(self, dim: int, in_channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.active_out = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv(self.conv, x, self.active_out)


class ConvOut(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv back to the 4 latent channels."""

    def __init__(self, dim: int, out_channels: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, dim, eps=RESNET_EPS)
        self.conv = nn.Conv2d(dim, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv(self.conv, F.silu(group_norm(self.norm, x)))


class SeparableConv(nn.Module):
    """Depthwise 3x3 conv with `SEPARABLE_EXPANSION` filters per input channel, then a 1x1 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cin * SEPARABLE_EXPANSION
        self.depthwise = nn.Conv2d(cin, mid, 3, padding=1, groups=cin)
        self.pointwise = nn.Conv2d(mid, cout, 1)

    def forward(self, x: torch.Tensor, out: int, index: torch.Tensor | None = None) -> torch.Tensor:
        hidden = conv(self.depthwise, x, index=index)
        return conv(self.pointwise, hidden, out, expand_index(index, SEPARABLE_EXPANSION))


def _make_conv(kind: str, cin: int, cout: int) -> nn.Module:
    if kind == "full":
        return nn.Conv2d(cin, cout, 3, padding=1)
    if kind == "separable":
        return SeparableConv(cin, cout)
    raise ValueError(f"unknown ResNet conv {kind!r}; allowed: {list(CONV_KINDS)}")


def _run_conv(layer: nn.Module, x: torch.Tensor, out: int, index: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(layer, SeparableConv):
        return layer(x, out, index)
    assert isinstance(layer, nn.Conv2d)
    return conv(layer, x, out, index)


class ResnetBlock(nn.Module):
    """GroupNorm, SiLU, conv, + time-embedding projection, GroupNorm, SiLU, conv, + shortcut.

    The input is `x`, or the concatenation [x, skip] on the up path. The shortcut is a 1x1 conv when
    the input and output widths differ and the input itself otherwise. `convs` lists the conv variants
    the block holds (a standalone block one, the supernet's both), under `conv1.<kind>`/`conv2.<kind>`.
    """

    def __init__(
        self,
        in_dim: int,
        skip_dim: int,
        out_dim: int,
        emb_dim: int,
        convs: Sequence[str] = ("full",),
        shortcut: bool | None = None,
    ):
        super().__init__()
        total = in_dim + skip_dim
        self.in_dim = in_dim
        self.norm1 = nn.GroupNorm(GROUPS, total, eps=RESNET_EPS)
        self.conv1 = nn.ModuleDict({kind: _make_conv(kind, total, out_dim) for kind in convs})
        self.time_emb_proj = nn.Linear(emb_dim, out_dim)
        self.norm2 = nn.GroupNorm(GROUPS, out_dim, eps=RESNET_EPS)
        self.conv2 = nn.ModuleDict({kind: _make_conv(kind, out_dim, out_dim) for kind in convs})
        if (total != out_dim) if shortcut is None else shortcut:
            self.conv_shortcut = nn.Conv2d(total, out_dim, 1)
        self.active_out, self.active_conv = out_dim, convs[0]

    def input_index(self, x_dim: int, skip_dim: int) -> torch.Tensor | None:
        """Input channels of [x, skip] within the block's weights (None: the leading ones)."""
        if skip_dim == 0 or x_dim == self.in_dim:
            return None
        device = self.time_emb_proj.weight.device
        return torch.cat(
            [torch.arange(x_dim, device=device), self.in_dim + torch.arange(skip_dim, device=device)]
        )

    def source_indices(self, x_dim: int, skip_dim: int) -> dict[str, dict[int, torch.Tensor]]:
        """Non-leading slices (state-dict name -> {axis: index}) of a subnet block with these inputs."""
        index = self.input_index(x_dim, skip_dim)
        if index is None:
            return {}
        wide = expand_index(index, SEPARABLE_EXPANSION)
        assert wide is not None
        return {
            "norm1.weight": {0: index},
            "norm1.bias": {0: index},
            "conv1.full.weight": {1: index},
            "conv1.separable.depthwise.weight": {0: wide},
            "conv1.separable.depthwise.bias": {0: wide},
            "conv1.separable.pointwise.weight": {1: wide},
            "conv_shortcut.weight": {1: index},
        }

    def forward(self, x: torch.Tensor, emb: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.active_out
        index = self.input_index(x.shape[1], 0 if skip is None else skip.shape[1])
        inputs = x if skip is None else torch.cat([x, skip], dim=1)
        hidden = _run_conv(
            self.conv1[self.active_conv], F.silu(group_norm(self.norm1, inputs, index)), out, index
        )
        hidden = hidden + linear(self.time_emb_proj, F.silu(emb), out)[:, :, None, None]
        hidden = _run_conv(self.conv2[self.active_conv], F.silu(group_norm(self.norm2, hidden)), out)
        if inputs.shape[1] != out:
            inputs = conv(self.conv_shortcut, inputs, out, index)
        return inputs + hidden


class Attention(nn.Module):
    """Multi-head (or multi-query: one key/value head shared by all query heads) attention.

    Queries come from `x`; keys and values from `context` (cross-attention) or `x` (self-attention).
    The heads together are `heads * head_dim` wide, which need not equal the model width.
    """

    def __init__(self, query_dim: int, kv_dim: int, heads: int, head_dim: int, multi_query: bool = False):
        super().__init__()
        inner = heads * head_dim
        kv_inner = head_dim if multi_query else inner
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(kv_dim, kv_inner, bias=False)
        self.to_v = nn.Linear(kv_dim, kv_inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        self.active_heads, self.active_head_dim, self.active_multi_query = heads, head_dim, multi_query

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        heads, head_dim = self.active_heads, self.active_head_dim
        source = x if context is None else context
        kv_heads = 1 if self.active_multi_query else heads
        q = linear(self.to_q, x, heads * head_dim).unflatten(-1, (heads, head_dim)).transpose(1, 2)
        k = linear(self.to_k, source, kv_heads * head_dim).unflatten(-1, (kv_heads, head_dim)).transpose(1, 2)
        v = linear(self.to_v, source, kv_heads * head_dim).unflatten(-1, (kv_heads, head_dim)).transpose(1, 2)
        if kv_heads != heads:
            k, v = k.expand(-1, heads, -1, -1), v.expand(-1, heads, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return linear(self.to_out, out, x.shape[-1])


class FeedForward(nn.Module):
    """GEGLU: Linear to 2 x hidden (value, gate), value * GELU(gate), Linear back."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)
        self.out = nn.Linear(hidden, dim)
        self.active_hidden = hidden

    def rows(self) -> torch.Tensor | None:
        """Rows of `proj` that the active hidden width uses (None: all of them)."""
        hidden, built = self.active_hidden, self.out.in_features
        if hidden == built:
            return None
        half = torch.arange(hidden, device=self.proj.weight.device)
        return torch.cat([half, built + half])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = linear(self.proj, x, 2 * self.active_hidden, self.rows()).chunk(2, dim=-1)
        return linear(self.out, value * F.gelu(gate), x.shape[-1])


class TransformerLayer(nn.Module):
    """diffusers' `BasicTransformerBlock`: [LayerNorm, self-attention,] LayerNorm, cross-attention,
    LayerNorm, feed-forward, each residual."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        heads: int,
        head_dim: int,
        multi_query: bool,
        hidden: int,
        self_attention: bool,
    ):
        super().__init__()
        if self_attention:
            self.norm1 = nn.LayerNorm(dim)
            self.attn1 = Attention(dim, dim, heads, head_dim, multi_query)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, head_dim, multi_query)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, hidden)
        self.use_self_attention = self_attention

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.use_self_attention:
            x = x + self.attn1(layer_norm(self.norm1, x))
        x = x + self.attn2(layer_norm(self.norm2, x), context)
        return x + self.ff(layer_norm(self.norm3, x))


class Transformer(nn.Module):
    """diffusers' `Transformer2DModel` with 1x1 conv projections: GroupNorm, conv in, `depth`
    transformer layers on the H*W tokens, conv out, plus the input."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        depth: int,
        head_dim: int,
        ffn_ratio: int,
        multi_query: bool = False,
        self_attention: bool = True,
        heads: int | None = None,
    ):
        super().__init__()
        heads = heads_for(dim, head_dim) if heads is None else heads
        self.norm = nn.GroupNorm(GROUPS, dim, eps=TRANSFORMER_EPS)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.layers = nn.ModuleList(
            TransformerLayer(dim, context_dim, heads, head_dim, multi_query, dim * ffn_ratio, self_attention)
            for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.active_depth = depth

    def set_active(
        self, dim: int, depth: int, head_dim: int, ffn_ratio: int, multi_query: bool, self_attention: bool
    ) -> None:
        """Run as the standalone transformer with these settings (used by the supernet)."""
        self.active_depth = depth
        for layer in self.layers[:depth]:
            layer.use_self_attention = self_attention
            layer.ff.active_hidden = dim * ffn_ratio
            for attention in (layer.attn1, layer.attn2) if self_attention else (layer.attn2,):
                attention.active_heads = heads_for(dim, head_dim)
                attention.active_head_dim = head_dim
                attention.active_multi_query = multi_query

    def source_indices(self) -> dict[str, dict[int, torch.Tensor]]:
        """Non-leading slices (state-dict name -> {axis: index}) of the active subnet transformer."""
        out: dict[str, dict[int, torch.Tensor]] = {}
        for i, layer in enumerate(self.layers[: self.active_depth]):
            rows = layer.ff.rows()
            if rows is not None:
                out[f"layers.{i}.ff.proj.weight"] = {0: rows}
                out[f"layers.{i}.ff.proj.bias"] = {0: rows}
        return out

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, dim, height, width = x.shape
        hidden = conv(self.proj_in, group_norm(self.norm, x), dim)
        hidden = hidden.flatten(2).transpose(1, 2)
        for layer in self.layers[: self.active_depth]:
            hidden = layer(hidden, context)
        hidden = hidden.transpose(1, 2).reshape(batch, dim, height, width)
        return conv(self.proj_out, hidden, dim) + x


class Downsample(nn.Module):
    """3x3 stride-2 conv (same width)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv(self.conv, x, x.shape[1])


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling, then a 3x3 conv (same width)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv(self.conv, F.interpolate(x, scale_factor=2.0, mode="nearest"), x.shape[1])


# ----------------------------------------------------------------- running a subnet
@dataclass(frozen=True)
class Step:
    """How the runner calls one block: its `role`, whether it takes the newest skip tensor (`pop`,
    ResNets on the up path) and whether its output is kept as a skip tensor (`push`)."""

    role: str
    pop: bool = False
    push: bool = False


#: Roles whose blocks robust training may replace by the identity.
SKIPPABLE_ROLES = ("resnet", "transformer")


def run_blocks(
    blocks: Sequence[nn.Module],
    steps: Sequence[Step],
    sample: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    skip_prob: float = 0.0,
) -> torch.Tensor:
    """Run `blocks` in order: the time embedding, then every other block on the running tensor.

    With `skip_prob > 0` each ResNet and transformer block is replaced by the identity with that
    probability (SnapFusion's robust training). A ResNet whose output width differs from its input's
    cannot be the identity and always runs; a skipped up-path ResNet drops its skip tensor.
    """
    emb: torch.Tensor | None = None
    x = sample
    skips: list[torch.Tensor] = []
    for block, step in zip(blocks, steps, strict=True):
        if step.role == "time":
            emb = block(timestep)
            continue
        if (
            skip_prob > 0
            and step.role in SKIPPABLE_ROLES
            and (step.role == "transformer" or x.shape[1] == block.active_out)
            and float(torch.rand(())) < skip_prob
        ):
            if step.pop:
                skips.pop()
        elif step.role == "resnet":
            assert emb is not None, "the time embedding runs first"
            x = block(x, emb, skips.pop() if step.pop else None)
        elif step.role == "transformer":
            x = block(x, context)
        else:
            x = block(x)
        if step.push:
            skips.append(x)
    return x


class UNet(nn.Module):
    """A standalone UNet subnet: its blocks, run in order by `run_blocks`, and nothing else.

    `forward(sample [B, 4, H, W], timestep [B], encoder_hidden_states [B, tokens, context])` returns
    the predicted noise [B, 4, H, W].
    """

    def __init__(self, blocks: Sequence[nn.Module], steps: Sequence[Step]):
        super().__init__()
        if len(blocks) != len(steps):
            raise ValueError(f"{len(blocks)} blocks but {len(steps)} steps")
        self.blocks = nn.ModuleList(blocks)
        self.steps = tuple(steps)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return run_blocks(self.blocks, self.steps, sample, timestep, encoder_hidden_states)
