"""Datasets the project generates itself (nothing is downloaded), and the DDPM noise schedule.

Every batch is a pure function of `(seed, stream, index)`: the training batch of step `k` on data
rank `r` is the same whether a run goes straight through or resumes from a checkpoint, and several
workers of one distributed run draw disjoint batches without sharing a data loader.

- `PatternImages`: class-conditional images for classifiers. Each class owns a colour and an
  oriented sinusoidal grating (orientation and frequency); a sample adds a random phase, brightness
  and pixel noise, so the label is learnable from colour and texture but not from any single pixel.
- `SyntheticLatents`: stand-ins for VAE latents of captioned images. Each "prompt" owns a smooth
  random latent field (unit variance per channel, like scaled SD latents) and a text embedding
  sequence; a sample is its prompt's field shifted by a random offset plus a little noise, with the
  prompt's embedding plus noise. Video samples move the field by a per-prompt velocity from frame
  to frame, which only temporal layers can exploit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]

#: Streams keep the training and held-out batches apart for one seed.
TRAIN_STREAM = 0
HELD_OUT_STREAM = 1
_PROTOTYPE_STREAM = 2


def batch_generator(seed: int, stream: int, index: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded from its coordinates (mixed so that neighbouring coordinates differ)."""
    mixed = (seed * 1_000_003 + stream) * 1_000_033 + index
    mixed = mixed * 1_000_037 + rank
    return torch.Generator().manual_seed(mixed % (2**63 - 1))


class PatternImages:
    """Class-conditional coloured gratings of `size` x `size` pixels with `num_classes` classes."""

    def __init__(self, num_classes: int, size: int, seed: int = 0, noise: float = 0.5):
        if num_classes < 2:
            raise ValueError(f"a classification dataset needs num_classes >= 2, got {num_classes}")
        self.num_classes, self.size, self.seed, self.noise = num_classes, size, seed, noise
        generator = batch_generator(seed, _PROTOTYPE_STREAM, 0)
        self._colours = torch.rand(num_classes, 3, generator=generator) * 2 - 1
        # Orientations spread evenly (then shuffled) so no two classes share one by chance.
        order = torch.randperm(num_classes, generator=generator)
        self._angles = order.float() * math.pi / num_classes
        self._frequencies = 1.5 + 2.5 * torch.rand(num_classes, generator=generator)

    def batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """`{"images": [B, 3, S, S], "labels": [B]}` drawn with `generator`."""
        labels = torch.randint(self.num_classes, (batch_size,), generator=generator)
        axis = torch.linspace(0.0, 1.0, self.size)
        v, u = torch.meshgrid(axis, axis, indexing="ij")
        angle = self._angles[labels].view(-1, 1, 1)
        frequency = self._frequencies[labels].view(-1, 1, 1)
        phase = 2 * math.pi * torch.rand(batch_size, 1, 1, generator=generator)
        grating = torch.sin(2 * math.pi * frequency * (u * torch.cos(angle) + v * torch.sin(angle)) + phase)
        brightness = 1.0 + 0.2 * torch.randn(batch_size, 1, 1, 1, generator=generator)
        colour = self._colours[labels].view(-1, 3, 1, 1)
        images = brightness * (0.6 * colour + 0.8 * grating.unsqueeze(1))
        images = images + self.noise * torch.randn(images.shape, generator=generator)
        return {"images": images, "labels": labels}


class SyntheticLatents:
    """Latent fields of shape `latent_shape` ([C, H, W]) paired with text embeddings ([T, D]).

    With `frames` set, samples are videos `[F, C, H, W]` whose field drifts by the prompt's velocity
    (in latent pixels per frame).
    """

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        text_shape: tuple[int, int],
        *,
        num_prompts: int = 8,
        frames: int | None = None,
        seed: int = 0,
        noise: float = 0.1,
    ):
        self.latent_shape, self.text_shape = tuple(latent_shape), tuple(text_shape)
        self.num_prompts, self.frames, self.seed, self.noise = num_prompts, frames, seed, noise
        channels, height, width = self.latent_shape
        generator = batch_generator(seed, _PROTOTYPE_STREAM, 1)
        coarse = torch.randn(
            num_prompts, channels, max(2, height // 4), max(2, width // 4), generator=generator
        )
        fields = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        self._fields = (fields - fields.mean(dim=(2, 3), keepdim=True)) / fields.std(dim=(2, 3), keepdim=True)
        self._texts = torch.randn(num_prompts, *self.text_shape, generator=generator)
        self._velocities = torch.randint(-1, 2, (num_prompts, 2), generator=generator)

    def batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """`{"latents": [B, C, H, W] or [B, F, C, H, W], "text": [B, T, D], "prompts": [B]}`."""
        prompts = torch.randint(self.num_prompts, (batch_size,), generator=generator)
        _, height, width = self.latent_shape
        offsets = torch.stack(
            [
                torch.randint(height, (batch_size,), generator=generator),
                torch.randint(width, (batch_size,), generator=generator),
            ],
            dim=1,
        )
        frames = self.frames or 1
        samples = []
        for i, prompt in enumerate(prompts.tolist()):
            clip = [
                torch.roll(
                    self._fields[prompt],
                    shifts=tuple((offsets[i] + frame * self._velocities[prompt]).tolist()),
                    dims=(1, 2),
                )
                for frame in range(frames)
            ]
            samples.append(torch.stack(clip))
        latents = torch.stack(samples)
        latents = latents + self.noise * torch.randn(latents.shape, generator=generator)
        if self.frames is None:
            latents = latents[:, 0]
        text = self._texts[prompts] + 0.1 * torch.randn(batch_size, *self.text_shape, generator=generator)
        return {"latents": latents, "text": text, "prompts": prompts}


class NoiseSchedule:
    """DDPM forward process with Stable Diffusion's "scaled linear" betas (0.00085 to 0.012, 1000 steps).

    `add_noise(x0, noise, t)` gives `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`; the denoiser learns to
    predict `noise` (epsilon prediction).
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
        self.num_steps = num_steps
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod.to(x0.device)[timesteps]
        abar = abar.view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def spread(self, count: int) -> torch.Tensor:
        """`count` timesteps evenly over the whole schedule (for held-out evaluation)."""
        return torch.linspace(0, self.num_steps - 1, count).round().long()
