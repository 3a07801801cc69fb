"""The data and loss proxies use: the space's training task from `nas.training.tasks`.

Proxies and supernet training see the same generated data and the same loss (cross-entropy on
`PatternImages` for EfficientFormerV2; epsilon-prediction MSE on `SyntheticLatents` with text
embeddings for the diffusion spaces). Proxies draw their batch from a stream of their own, as a
held-out batch (for denoising: timesteps spread evenly over the whole schedule).

A task hides how a batch becomes the model's inputs (the denoising task noises the latents inside
`loss`); `model_inputs` recovers them by stopping the model's forward at its first call, which lets
every proxy work with every task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.proxies.errors import ProxyError
from nas.training.data import Batch, batch_generator
from nas.training.errors import TrainingConfigError
from nas.training.tasks import ImageClassificationTask, TrainingTask, trainable_spaces
from nas.training.tasks import make_task as make_training_task
from search_spaces import SearchSpace

#: Stream of the batches proxies see (apart from the training and held-out streams of a seed).
PROXY_STREAM = 3

ModelInputs = tuple[tuple[Any, ...], dict[str, Any]]


class _Stop(Exception):
    """Raised by the capturing hook to end a forward pass before it computes anything."""


def make_task(space: SearchSpace, seed: int = 0) -> TrainingTask:
    """The space's task; `ProxyError` naming the spaces with tasks if it has none at its options."""
    try:
        return make_training_task(space, seed)
    except TrainingConfigError as exc:
        raise ProxyError(
            f"space {space.name!r} at options {space.options} has no data and loss for proxies: {exc} "
            f"(spaces with a task: {trainable_spaces()})"
        ) from None


def has_task(space: SearchSpace) -> bool:
    """Whether batch-based proxies can run on `space` at its options."""
    if space.name not in trainable_spaces():
        return False
    try:
        make_training_task(space)
    except TrainingConfigError:
        return False
    return True


def is_classification(task: TrainingTask) -> bool:
    return isinstance(task, ImageClassificationTask)


def proxy_batch(task: TrainingTask, size: int) -> Batch:
    """The proxies' batch of `size` samples: a pure function of the task's seed."""
    return task.draw(batch_generator(task.seed, PROXY_STREAM, 0), size, held_out=True)


def merge_heads(output: Any) -> torch.Tensor:
    """One tensor from a model's output: several heads (a tuple) are averaged, as at inference."""
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    return torch.stack(list(output)).mean(0)


def model_inputs(task: TrainingTask, model: nn.Module, batch: Batch) -> ModelInputs:
    """The positional and keyword arguments `task.loss(model, batch)` calls `model` with."""
    captured: list[ModelInputs] = []

    def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((tuple(args), dict(kwargs)))
        raise _Stop

    hook = model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            task.loss(model, batch)
    except _Stop:
        pass
    finally:
        hook.remove()
    if not captured:
        raise RuntimeError(f"{type(task).__name__}.loss never called the model")
    return captured[0]


def classification_output(
    task: TrainingTask, model: nn.Module, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (heads averaged) and labels of a classification batch."""
    args, kwargs = model_inputs(task, model, batch)
    return merge_heads(model(*args, **kwargs)), batch["labels"]
