"""Temporal layers of SnapGen-V-style video UNets, and the video UNet that runs them between the blocks
of a frozen image UNet.

The image blocks see a video batch as images: [B * F, C, H, W], the F frames of each video next to
each other. A temporal layer takes and returns that tensor and mixes information across frames. Every
temporal layer is residual and its output projection starts at zero, so a video UNet whose temporal
layers are untrained computes exactly the image UNet on every frame.

Layer types: `conv1d` (a 1-D convolution over frames at every pixel, kernel 3, as a 3 x 1 x 1
convolution), `conv3d` (3 x 3 x 3 over frames and space), `attn` (self-attention among the F frames
at every pixel) and `st_attn` (self-attention among all F * H * W positions of a video). Attention
layers add sinusoidal frame positions to their tokens and use 64-wide heads (one head below 64
channels). Like the UNet layers they run at an active width below their built one (leading slices)
for the supernet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces._unet_modules import GROUPS, Attention, Step, conv, group_norm, heads_for, run_blocks

TEMPORAL_TYPES = ("conv1d", "attn", "conv3d", "st_attn")
TEMPORAL_HEAD_DIM = 64
TEMPORAL_EPS = 1e-6


def _videos(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B * F, C, H, W] -> [B, C, F, H, W]."""
    return x.unflatten(0, (x.shape[0] // frames, frames)).transpose(1, 2)


def frame_positions(frames: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """Sinusoidal encoding [frames, dim] of the frame index (sines in the first half, cosines after)."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=like.device) * (-math.log(10000) / max(half, 1))
    angles = torch.arange(frames, dtype=torch.float32, device=like.device)[:, None] * exponent.exp()[None]
    encoding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if encoding.shape[1] < dim:
        encoding = F.pad(encoding, (0, dim - encoding.shape[1]))
    return encoding.to(like.dtype)


class TemporalConv(nn.Module):
    """GroupNorm -> SiLU -> 3-D convolution (zero-initialised), plus the input."""

    def __init__(self, dim: int, frames: int, spatial: bool):
        super().__init__()
        self.frames = frames
        kernel, padding = ((3, 3, 3), (1, 1, 1)) if spatial else ((3, 1, 1), (1, 0, 0))
        self.norm = nn.GroupNorm(GROUPS, dim, eps=TEMPORAL_EPS)
        self.conv = nn.Conv3d(dim, dim, kernel, padding=padding)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        videos = _videos(x, self.frames)
        hidden = conv(self.conv, F.silu(group_norm(self.norm, videos)), videos.shape[1])
        return x + hidden.transpose(1, 2).flatten(0, 1)


class TemporalAttention(nn.Module):
    """GroupNorm, + frame positions, self-attention across frames (per pixel) or across frames and
    space (per video), with a zero-initialised output projection, plus the input."""

    def __init__(self, dim: int, frames: int, spatial: bool):
        super().__init__()
        self.frames, self.spatial = frames, spatial
        self.norm = nn.GroupNorm(GROUPS, dim, eps=TEMPORAL_EPS)
        self.attn = Attention(dim, dim, heads_for(dim, TEMPORAL_HEAD_DIM), TEMPORAL_HEAD_DIM)
        nn.init.zeros_(self.attn.to_out.weight)
        nn.init.zeros_(self.attn.to_out.bias)

    def set_active(self, dim: int) -> None:
        """Run as the standalone layer of width `dim` (used by the supernet)."""
        self.attn.active_heads = heads_for(dim, TEMPORAL_HEAD_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.frames
        videos = _videos(group_norm(self.norm, x), frames)  # B, C, F, H, W
        batch, dim, _, height, width = videos.shape
        tokens = videos.permute(0, 3, 4, 2, 1)  # B, H, W, F, C
        tokens = tokens + frame_positions(frames, dim, tokens)
        if self.spatial:
            tokens = tokens.permute(0, 3, 1, 2, 4).reshape(batch, frames * height * width, dim)
            out = self.attn(tokens).unflatten(1, (frames, height, width))  # B, F, H, W, C
        else:
            out = self.attn(tokens.reshape(batch * height * width, frames, dim))
            out = out.unflatten(0, (batch, height, width)).permute(0, 3, 1, 2, 4)  # B, F, H, W, C
        return x + out.permute(0, 1, 4, 2, 3).flatten(0, 1)


def temporal_layer(kind: str, dim: int, frames: int) -> nn.Module:
    """A fresh (identity) temporal layer of type `kind`."""
    if kind in ("conv1d", "conv3d"):
        return TemporalConv(dim, frames, spatial=kind == "conv3d")
    if kind in ("attn", "st_attn"):
        return TemporalAttention(dim, frames, spatial=kind == "st_attn")
    raise ValueError(f"unknown temporal layer type {kind!r}; allowed: {list(TEMPORAL_TYPES)}")


def run_video(
    blocks: Sequence[nn.Module],
    steps: Sequence[Step],
    frames: int,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    skip_prob: float = 0.0,
) -> torch.Tensor:
    """Run a video UNet: frames become images, each video's timestep and text go to all its frames."""
    if sample.dim() != 5 or sample.shape[1] != frames:
        raise ValueError(f"expected video latents [B, {frames}, C, H, W], got {list(sample.shape)}")
    out = run_blocks(
        blocks,
        steps,
        sample.flatten(0, 1),
        timestep.repeat_interleave(frames),
        encoder_hidden_states.repeat_interleave(frames, dim=0),
        skip_prob,
    )
    return out.unflatten(0, (sample.shape[0], frames))


class VideoUNet(nn.Module):
    """A standalone video UNet subnet: image and temporal blocks run in order, nothing else.

    `forward(sample [B, F, 4, H, W], timestep [B], encoder_hidden_states [B, tokens, context])`
    returns the predicted noise [B, F, 4, H, W].
    """

    def __init__(self, blocks: Sequence[nn.Module], steps: Sequence[Step], frames: int):
        super().__init__()
        if len(blocks) != len(steps):
            raise ValueError(f"{len(blocks)} blocks but {len(steps)} steps")
        self.blocks = nn.ModuleList(blocks)
        self.steps = tuple(steps)
        self.frames = frames

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return run_video(self.blocks, self.steps, self.frames, sample, timestep, encoder_hidden_states)
