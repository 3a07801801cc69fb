"""Training tasks: what a space's supernet learns, from which generated data, with which loss.

A task is registered under its space's name (like the spaces themselves), so adding a task makes
`nas supernet train --space NAME` work. A task draws the training batch of step `k` from
`(seed, k, rank)` alone and holds one fixed held-out batch; `loss(model, batch)` is a pure function of
the model and the batch (all randomness, such as diffusion noise and timesteps, lives in the batch).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from nas.training.data import (
    HELD_OUT_STREAM,
    TRAIN_STREAM,
    Batch,
    NoiseSchedule,
    PatternImages,
    SyntheticLatents,
    batch_generator,
)
from nas.training.errors import TrainingConfigError
from search_spaces import Registry, SearchSpace, Supernet

#: Training tasks by the name of the space they train.
TASKS: Registry[type[TrainingTask]] = Registry(
    "training task",
    field="space",
    error=TrainingConfigError,
    key=lambda cls: cls.space_name,
    unknown="no {kind} for space {name!r}",
    known="spaces that can be trained",
)


def register_task(cls: type[TrainingTask]) -> type[TrainingTask]:
    """Class decorator: make `cls` the training task of the space `cls.space_name`."""
    return TASKS.register(cls)


def trainable_spaces() -> list[str]:
    return TASKS.names()


def task_class(space_name: str) -> type[TrainingTask]:
    """The task of the space `space_name`; `TrainingConfigError` naming the trainable spaces if none."""
    return TASKS.get(space_name)


class TrainingTask(abc.ABC):
    """Data and loss of one space's supernet training.

    `rules` lists the training rules that make sense for the space, the default first;
    `min_batch_size` is the smallest batch the space's layers accept in train mode.
    """

    space_name: ClassVar[str]
    rules: ClassVar[tuple[str, ...]]
    min_batch_size: ClassVar[int] = 1

    def __init__(self, space: SearchSpace, seed: int = 0):
        dtype = space.options.get("dtype", "fp32")
        if dtype != "fp32":
            raise TrainingConfigError(
                f"training runs in fp32; space option dtype={dtype!r} is not supported for training",
                field="options.dtype",
                allowed=["fp32"],
            )
        self.space = space
        self.seed = seed

    @abc.abstractmethod
    def draw(self, generator: torch.Generator, batch_size: int, held_out: bool) -> Batch:
        """A batch drawn with `generator`; `held_out` batches may spread their randomness evenly."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The scalar training loss of `model` (an activated supernet or a subnet) on `batch`."""

    def predict(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """`model`'s output on `batch` (what distillation compares); tasks that distill override it,
        together with `loss_of` and `distill_loss`."""
        raise TrainingConfigError(
            f"the task of space {self.space.name!r} does not support distillation",
            field="distill_subnets",
            allowed=[0],
        )

    def loss_of(self, prediction: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The task loss of a `predict` output: `loss_of(predict(model, batch), batch)` is `loss`."""
        raise NotImplementedError

    def distill_loss(self, prediction: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """How far a student's `predict` output is from the teacher's."""
        raise NotImplementedError

    def train_batch(self, step: int, batch_size: int, rank: int = 0) -> Batch:
        """The batch of training step `step` (0-based) for data rank `rank`."""
        return self.draw(batch_generator(self.seed, TRAIN_STREAM, step, rank), batch_size, held_out=False)

    def held_out_batch(self, batch_size: int) -> Batch:
        """The fixed evaluation batch (never trained on: it comes from a stream of its own)."""
        return self.draw(batch_generator(self.seed, HELD_OUT_STREAM, 0), batch_size, held_out=True)

    def warm_start(self, supernet: Supernet, checkpoint: Mapping[str, Any]) -> None:
        """Start `supernet` from a checkpoint's weights (`init_from`): by default one of the same space
        and options (the optimizer starts afresh)."""
        _check_same_space(self.space, checkpoint)
        supernet.load_state_dict(checkpoint["model"])

    @contextlib.contextmanager
    def evaluating(self, model: nn.Module) -> Iterator[None]:
        """Inference mode for the held-out loss: eval mode, no gradients; the previous mode comes back."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            model.train(was_training)


def _check_same_space(space: SearchSpace, checkpoint: Mapping[str, Any]) -> None:
    if checkpoint["space"] != space.name or checkpoint["options"] != space.options:
        raise TrainingConfigError(
            f"init_from holds a supernet of space {checkpoint['space']!r} with options "
            f"{checkpoint['options']}; this run trains space {space.name!r} with options {space.options}",
            field="init_from",
            allowed=f"a checkpoint of space {space.name!r} with the same options",
        )


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics and leave their running statistics untouched.

    The EfficientFormerV2 supernet shares one set of running statistics between all widths, so before
    a recalibration they describe no single subnet; batch statistics of a large held-out batch are
    the fair measure of a subnet's weights during supernet training.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.training, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
        for m in norms
    ]
    for norm in norms:
        norm.train()
        # Momentum 0 keeps the running statistics exactly as they are while still using batch statistics.
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (training, momentum, tracked) in zip(norms, saved, strict=True):
            norm.train(training)
            norm.momentum = momentum
            if tracked is not None:
                norm.num_batches_tracked.copy_(tracked)


@register_task
class ImageClassificationTask(TrainingTask):
    """EfficientFormerV2: classify generated coloured gratings (`PatternImages`) with cross-entropy.

    The number of classes is the space's `num_classes` option; in train mode the two heads
    (classifier and distillation) are both trained on the labels, as without a teacher.
    """

    space_name = "efficientformerv2"
    rules = ("sandwich",)
    # BatchNorm in the last stage sees a 1x1 map at small resolutions: one sample gives no variance.
    min_batch_size = 2

    def __init__(self, space: SearchSpace, seed: int = 0):
        super().__init__(space, seed)
        if space.options.get("heads") == "none":
            raise TrainingConfigError(
                "training a classifier needs a head; space option heads='none' gives pooled features",
                field="options.heads",
                allowed=["both", "classifier"],
            )
        if space.options["num_classes"] < 2:
            raise TrainingConfigError(
                f"the generated dataset needs at least 2 classes; space option "
                f"num_classes={space.options['num_classes']}",
                field="options.num_classes",
                allowed="int >= 2",
            )
        self.data = PatternImages(space.options["num_classes"], space.options["resolution"], seed=seed)

    def draw(self, generator: torch.Generator, batch_size: int, held_out: bool) -> Batch:
        return self.data.batch(generator, batch_size)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch["images"])
        heads = logits if isinstance(logits, tuple) else (logits,)
        return sum(F.cross_entropy(head, batch["labels"]) for head in heads) / len(heads)

    @contextlib.contextmanager
    def evaluating(self, model: nn.Module) -> Iterator[None]:
        with super().evaluating(model), batch_statistics(model):
            yield


class DenoisingTask(TrainingTask):
    """Epsilon-prediction MSE of a latent diffusion denoiser on generated latents (`SyntheticLatents`).

    The model is called as `model(noisy_latents, timesteps, text_embeddings)`, shapes and dtypes
    taken from `space.example_inputs`. Training timesteps are uniform over the DDPM schedule; the
    held-out batch spreads them evenly, so its loss weighs every noise level alike.
    """

    def __init__(self, space: SearchSpace, seed: int = 0):
        super().__init__(space, seed)
        sample, timestep, text = space.example_inputs(1)
        self.timestep_dtype = timestep.dtype
        self.schedule = NoiseSchedule()
        frames = self.frames(sample)
        latent_shape = tuple(sample.shape[2:] if frames else sample.shape[1:])
        self.data = SyntheticLatents(latent_shape, tuple(text.shape[1:]), frames=frames, seed=seed)

    def frames(self, sample: torch.Tensor) -> int | None:
        """Frames per sample for video spaces (`[B, F, C, H, W]` inputs); None for images."""
        return None

    def draw(self, generator: torch.Generator, batch_size: int, held_out: bool) -> Batch:
        batch = self.data.batch(generator, batch_size)
        if held_out:
            timesteps = self.schedule.spread(batch_size)
        else:
            timesteps = torch.randint(self.schedule.num_steps, (batch_size,), generator=generator)
        batch["timesteps"] = timesteps
        batch["noise"] = torch.randn(batch["latents"].shape, generator=generator)
        return batch

    def predict(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The predicted noise of the batch's noisy latents."""
        noisy = self.schedule.add_noise(batch["latents"], batch["noise"], batch["timesteps"])
        return model(noisy, batch["timesteps"].to(self.timestep_dtype), batch["text"])

    def loss_of(self, prediction: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.mse_loss(prediction, batch["noise"])

    def distill_loss(self, prediction: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction, teacher)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.loss_of(self.predict(model, batch), batch)


@register_task
class UNetDenoisingTask(DenoisingTask):
    """The diffusion UNet: robust training (SnapFusion) by default, the sandwich rule on request."""

    space_name = "unet"
    rules = ("robust", "sandwich")


@register_task
class TemporalDenoisingTask(DenoisingTask):
    """Video latents `[B, F, 4, H, W]` whose content drifts across frames; temporal layers train."""

    space_name = "temporal"
    rules = ("temporal",)

    def frames(self, sample: torch.Tensor) -> int | None:
        return int(sample.shape[1])

    def warm_start(self, supernet: Supernet, checkpoint: Mapping[str, Any]) -> None:
        """From a temporal checkpoint as usual, or the frozen image UNet from a `unet` run's checkpoint:
        the base subnet is extracted from the trained UNet supernet (SnapGen-V trains its temporal
        layers on a trained image model)."""
        if checkpoint["space"] != "unet":
            super().warm_start(supernet, checkpoint)
            return
        unet_space = self.space.unet
        if checkpoint["options"] != unet_space.options:
            raise TrainingConfigError(
                f"init_from holds a UNet supernet with options {checkpoint['options']}; the temporal "
                f"space's image UNet has options {unet_space.options}",
                field="init_from",
                allowed="a unet checkpoint with the same latent_size, text_tokens, cross_attention_dim, "
                "width_scale and dtype",
            )
        image_supernet = unet_space.supernet()
        image_supernet.load_state_dict(checkpoint["model"])
        supernet.load_image_unet(image_supernet.extract(self.space.base_config))


@register_task
class EfficientFormerV2BitsTask(ImageClassificationTask):
    """EfficientFormerV2 with per-layer weight bits: the same data and loss as its base space."""

    space_name = "efficientformerv2_bits"
    rules = ("sandwich",)


@register_task
class UNetBitsDenoisingTask(DenoisingTask):
    """A UNet with per-layer weight bits: the same data and loss as its base space."""

    space_name = "unet_bits"
    rules = ("sandwich",)


def make_task(space: SearchSpace, seed: int = 0) -> TrainingTask:
    """The training task of `space` (by its name), bound to `seed`."""
    return task_class(space.name)(space, seed)


__all__ = [
    "TASKS",
    "DenoisingTask",
    "ImageClassificationTask",
    "TemporalDenoisingTask",
    "TrainingTask",
    "UNetDenoisingTask",
    "batch_statistics",
    "make_task",
    "register_task",
    "task_class",
    "trainable_spaces",
]
