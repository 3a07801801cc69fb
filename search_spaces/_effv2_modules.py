"""The layers of EfficientFormerV2 subnets, written once for standalone subnets and for the supernet.

Every module holds its weights at the size it was built with and runs at an *active* size: input
channels follow the input tensor, output channels follow the module's `active_*` attributes, which
only the supernet changes. A standalone module's active size is its full size; then every layer is
called as it is, so no slicing appears in traces, exports or MAC counts. Slicing always takes the
first channels (weights, biases, BN affine and running statistics alike), which is what lets a
supernet hand its weights to a standalone subnet by copying leading slices.

Structure and parameter layout follow the public EfficientFormerV2 reference (snap-research); all
activations are GELU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KEY_DIM = 32
NUM_HEADS = 8
ATTN_RATIO = 4
DOWN_KEY_DIM = 16
LAYER_SCALE_INIT = 1e-5


def conv(layer: nn.Conv2d, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
    """`layer(x)` on the leading `x.shape[1]` input and `out` output channels (all when None).

    A depthwise layer keeps one filter per input channel, so its output follows the input.
    """
    cin = x.shape[1]
    depthwise = layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels
    out = cin if depthwise else (layer.out_channels if out is None else out)
    if cin == layer.in_channels and out == layer.out_channels:
        return layer(x)
    weight = layer.weight[:cin] if depthwise else layer.weight[:out, :cin]
    bias = None if layer.bias is None else layer.bias[:out]
    groups = cin if depthwise else 1
    return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, groups)


def batch_norm(layer: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` on the leading `x.shape[1]` channels of its affine parameters and running statistics.

    In train mode a sliced call normalises with batch statistics and updates the leading entries of
    the shared running statistics in place (one set of statistics for every width).
    """
    c = x.shape[1]
    if c == layer.num_features:
        return layer(x)
    assert layer.running_mean is not None and layer.running_var is not None
    return F.batch_norm(
        x,
        layer.running_mean[:c],
        layer.running_var[:c],
        layer.weight[:c],
        layer.bias[:c],
        layer.training,
        0.1 if layer.momentum is None else layer.momentum,
        layer.eps,
    )


def leading(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` entries of `tensor` along its first dimension."""
    return tensor if tensor.shape[0] == n else tensor[:n]


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` on the leading `x.shape[-1]` input features."""
    cin = x.shape[-1]
    if cin == layer.in_features:
        return layer(x)
    return F.linear(x, layer.weight[:, :cin], layer.bias)


class ConvBN(nn.Module):
    """Conv2d (with bias) followed by BatchNorm2d."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, depthwise: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(
            cin, cout, kernel, stride=stride, padding=kernel // 2, groups=cin if depthwise else 1
        )
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        return batch_norm(self.bn, conv(self.conv, x, out))


def relative_bias_index(query_side: int, key_side: int, step: int) -> tuple[int, torch.Tensor]:
    """Number of distinct query-key offsets and the (queries, keys) index of each pair's offset.

    Query (i, j) sits at key-grid position (i * step, j * step); an offset is (|dy|, |dx|). Offsets
    are numbered in order of first appearance (queries, then keys, row-major), as in the reference.
    """
    qy, qx = (
        a.ravel() * step for a in np.meshgrid(np.arange(query_side), np.arange(query_side), indexing="ij")
    )
    ky, kx = (a.ravel() for a in np.meshgrid(np.arange(key_side), np.arange(key_side), indexing="ij"))
    span = max(query_side * step, key_side) + 1
    codes = (np.abs(qy[:, None] - ky[None, :]) * span + np.abs(qx[:, None] - kx[None, :])).ravel()
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    table = torch.tensor(rank[inverse].reshape(len(qy), len(ky)), dtype=torch.long)
    return len(first), table


class Attention4D(nn.Module):
    """Multi-head self-attention on a (B, C, H, W) map with talking heads, a depthwise local branch on
    the values and a learned relative-position bias.

    With `stride=2` it attends on a map halved by a depthwise stride-2 conv and upsamples the result
    bilinearly. `side` is the side of the map the attention itself sees (after striding).
    """

    def __init__(self, dim: int, side: int, stride: int = 1):
        super().__init__()
        self.side = side
        self.scale = KEY_DIM**-0.5
        qk, v = KEY_DIM * NUM_HEADS, KEY_DIM * ATTN_RATIO * NUM_HEADS
        self.stride_conv = ConvBN(dim, dim, 3, stride=2, depthwise=True) if stride == 2 else None
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear") if stride == 2 else None
        self.q = ConvBN(dim, qk)
        self.k = ConvBN(dim, qk)
        self.v = ConvBN(dim, v)
        self.v_local = ConvBN(v, v, 3, depthwise=True)
        self.talking_head1 = nn.Conv2d(NUM_HEADS, NUM_HEADS, 1)
        self.talking_head2 = nn.Conv2d(NUM_HEADS, NUM_HEADS, 1)
        self.act = nn.GELU()
        self.proj = ConvBN(v, dim)
        num_offsets, index = relative_bias_index(side, side, 1)
        self.attention_biases = nn.Parameter(torch.zeros(NUM_HEADS, num_offsets))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, dim = x.shape[0], x.shape[1]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        n = self.side * self.side
        q = self.q(x).flatten(2).reshape(batch, NUM_HEADS, -1, n).permute(0, 1, 3, 2)
        k = self.k(x).flatten(2).reshape(batch, NUM_HEADS, -1, n)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.flatten(2).reshape(batch, NUM_HEADS, -1, n).permute(0, 1, 3, 2)
        attn = (q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        out = (attn @ v).transpose(2, 3).reshape(batch, -1, self.side, self.side) + v_local
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(self.act(out), out=dim)


class Mlp(nn.Module):
    """1x1 conv -> BN -> GELU -> depthwise 3x3 -> BN -> GELU -> 1x1 conv -> BN."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.mid_norm = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.act = nn.GELU()
        for layer in (self.fc1, self.fc2):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, hidden: int) -> torch.Tensor:
        dim = x.shape[1]
        x = self.act(batch_norm(self.norm1, conv(self.fc1, x, hidden)))
        x = self.act(batch_norm(self.mid_norm, conv(self.mid, x)))
        return batch_norm(self.norm2, conv(self.fc2, x, dim))


class Block(nn.Module):
    """One residual block of a stage: FFN (kind `ffn`), or attention then FFN (kind `attn_ffn`), each
    branch scaled by a learned per-channel layer scale.

    A block built with `attention` can also run as a plain FFN block (`use_attention = False`); the
    supernet relies on that, a standalone block never changes it.
    """

    def __init__(self, dim: int, hidden: int, attention: Attention4D | None = None):
        super().__init__()
        if attention is not None:
            self.token_mixer = attention
            self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), LAYER_SCALE_INIT))
        self.mlp = Mlp(dim, hidden)
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), LAYER_SCALE_INIT))
        self.use_attention = attention is not None
        self.active_hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = x.shape[1]
        if self.use_attention:
            x = x + leading(self.layer_scale_1, dim) * self.token_mixer(x)
        return x + leading(self.layer_scale_2, dim) * self.mlp(x, self.active_hidden)


class Stem(nn.Module):
    """Two 3x3 stride-2 Conv-BN-GELU layers with dim/2 and dim channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = ConvBN(3, dim // 2, 3, stride=2)
        self.conv2 = ConvBN(dim // 2, dim, 3, stride=2)
        self.act = nn.GELU()
        self.active_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x, out=self.active_dim // 2))
        return self.act(self.conv2(x, out=self.active_dim))


class Downsample(nn.Module):
    """3x3 stride-2 Conv-BN between stages."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = ConvBN(cin, cout, 3, stride=2)
        self.active_out = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x, out=self.active_out)


class LocalGlobalQuery(nn.Module):
    """Query of the attention downsampling: stride-2 subsampling plus a stride-2 depthwise conv, then
    a 1x1 Conv-BN."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.local = nn.Conv2d(cin, cin, 3, stride=2, padding=1, groups=cin)
        self.proj = ConvBN(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(conv(self.local, x) + self.pool(x))


class AttentionDownsample(nn.Module):
    """Attention from a map of side `side` to one of side ceil(side / 2), with a new channel count."""

    def __init__(self, cin: int, cout: int, side: int):
        super().__init__()
        self.side = side
        self.out_side = math.ceil(side / 2)
        self.scale = DOWN_KEY_DIM**-0.5
        qk, v = DOWN_KEY_DIM * NUM_HEADS, DOWN_KEY_DIM * ATTN_RATIO * NUM_HEADS
        self.q = LocalGlobalQuery(cin, qk)
        self.k = ConvBN(cin, qk)
        self.v = ConvBN(cin, v)
        self.v_local = ConvBN(v, v, 3, stride=2, depthwise=True)
        self.act = nn.GELU()
        self.proj = ConvBN(v, cout)
        num_offsets, index = relative_bias_index(self.out_side, side, math.ceil(side / self.out_side))
        self.attention_biases = nn.Parameter(torch.zeros(NUM_HEADS, num_offsets))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor, out: int) -> torch.Tensor:
        batch = x.shape[0]
        n, n_out = self.side * self.side, self.out_side * self.out_side
        q = self.q(x).flatten(2).reshape(batch, NUM_HEADS, -1, n_out).permute(0, 1, 3, 2)
        k = self.k(x).flatten(2).reshape(batch, NUM_HEADS, -1, n)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.flatten(2).reshape(batch, NUM_HEADS, -1, n).permute(0, 1, 3, 2)
        attn = ((q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]).softmax(dim=-1)
        y = (attn @ v).transpose(2, 3).reshape(batch, -1, self.out_side, self.out_side) + v_local
        return self.proj(self.act(y), out=out)


class AttentionDownsampleBlock(nn.Module):
    """Downsampling between stages 2 and 3: attention downsampling plus a 3x3 stride-2 Conv-BN."""

    def __init__(self, cin: int, cout: int, side: int):
        super().__init__()
        self.attn = AttentionDownsample(cin, cout, side)
        self.conv = ConvBN(cin, cout, 3, stride=2)
        self.active_out = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, self.active_out) + self.conv(x, out=self.active_out)


class Head(nn.Module):
    """BN, global average pooling, then the classifier heads.

    `heads="both"`: a classifier and a distillation head, averaged in eval mode and returned as a
    (classifier, distillation) pair in train mode; `"classifier"`: one head; `"none"`: the pooled
    features.
    """

    def __init__(self, dim: int, num_classes: int, heads: str):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.head = nn.Linear(dim, num_classes) if heads != "none" else None
        self.dist_head = nn.Linear(dim, num_classes) if heads == "both" else None
        for layer in (self.head, self.dist_head):
            if layer is not None:
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        pooled = batch_norm(self.norm, x).flatten(2).mean(-1)
        if self.head is None:
            return pooled
        logits = linear(self.head, pooled)
        if self.dist_head is None:
            return logits
        distilled = linear(self.dist_head, pooled)
        if self.training:
            return logits, distilled
        return (logits + distilled) / 2


class EfficientFormerV2(nn.Module):
    """A standalone subnet: its blocks run one after the other, nothing else."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        return x
