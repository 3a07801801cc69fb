"""Short-training proxies: `train_speed` (how fast a fresh subnet learns in its first few optimizer
steps) and `finetuned_loss` (the subnet inherited from the supernet after a few steps of its own).

Ru et al. (2021, "Speedy Performance Estimation for Neural Architecture Search") rank architectures by
the sum of their training losses over a short training run (TSE) and find it ranks final quality
better than early-stopped validation and than zero-cost scores. `train_speed`: a freshly initialised
subnet trains for `STEPS` AdamW steps of `BATCH_SIZE` samples of the space's task; the score is the
mean of those steps' training losses (TSE divided by the step count), smaller predicting better.

`finetuned_loss` starts from the weights the subnet inherits from the trained supernet instead (as
`supernet_loss` does), takes the same steps on the same batches, and scores the held-out loss after
them: the supernet's shared weights are a compromise between all its subnets, and a few steps of the
subnet's own training show how much of its inherited loss was the compromise's.

Nothing is shared with a truth that trains the same subnet: a fresh subnet's weights are initialised
from a seed stream of their own (not the context's seed, which the zero-cost proxies use) and the
batches come from a data stream of their own (not the task's training or held-out stream). The global
random state is left as it was.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from nas.proxies._base import Proxy
from nas.proxies.context import ProxyContext
from nas.proxies.errors import ProxyError
from nas.proxies.registry import register_proxy
from nas.proxies.supernet import HELD_OUT_SIZE, inherited_subnet
from nas.training.data import batch_generator
from nas.training.tasks import TrainingTask
from search_spaces import SearchSpace

#: Optimizer steps of the short run, samples per step, and AdamW's settings (those of the benchmark's
#: diffusion truth, docs/proxies.md); gradients are clipped to norm 1 as there.
STEPS = 10
BATCH_SIZE = 16
LR = 1e-3
WEIGHT_DECAY = 0.01
#: The data stream of the short run's batches (the task's own are 0-2, the proxy batch's 3).
TRAIN_SPEED_STREAM = 5
#: Mixed into the context's seed for the weight init, so it is not the zero-cost proxies' init.
INIT_SALT = 7_919


@contextlib.contextmanager
def own_random_state(context: ProxyContext) -> Iterator[None]:
    """The global random state seeded for the short run (from the context's seed and `INIT_SALT`),
    restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed * 1_000_003 + INIT_SALT)
        yield


def short_training(
    name: str, model: nn.Module, task: TrainingTask, steps: int = STEPS, batch_size: int = BATCH_SIZE
) -> list[float]:
    """Train `model` in place (train mode) for `steps` AdamW steps on the short run's batches; the
    training loss of each step. `ProxyError` naming proxy `name` if a loss is not finite."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=WEIGHT_DECAY)
    losses = []
    for step in range(steps):
        batch = task.draw(batch_generator(task.seed, TRAIN_SPEED_STREAM, step), batch_size, held_out=False)
        loss = task.loss(model, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ProxyError(f"{name}: the training loss is {value} at step {step}")
        losses.append(value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
    return losses


def training_losses(
    context: ProxyContext, config: dict[str, Any], steps: int = STEPS, batch_size: int = BATCH_SIZE
) -> list[float]:
    """The training loss of each of `steps` AdamW steps of a freshly initialised subnet."""
    with own_random_state(context):
        model = context.space.build(config).float()
        return short_training("train_speed", model, context.task, steps, batch_size)


def frozen_training_losses(
    context: ProxyContext, config: dict[str, Any], steps: int = STEPS, batch_size: int = BATCH_SIZE
) -> list[float]:
    """`training_losses` of a subnet that starts from the supernet's frozen part
    (`Supernet.frozen_start`), its other layers freshly initialised as there."""
    supernet = context.supernet().supernet
    with own_random_state(context):
        model = supernet.frozen_start(config)
        if model is None:
            raise ProxyError(
                f"train_speed_frozen: the supernet of space {context.space.name!r} keeps nothing frozen; "
                "use train_speed"
            )
        return short_training("train_speed_frozen", model.float(), context.task, steps, batch_size)


def finetuned_losses(
    context: ProxyContext, config: dict[str, Any], steps: int = STEPS, batch_size: int = BATCH_SIZE
) -> tuple[float, float]:
    """The held-out loss of the subnet inherited from the supernet before and after `steps` AdamW
    steps of fine-tuning on the short run's batches."""
    task = context.task
    held_out = task.held_out_batch(HELD_OUT_SIZE)
    with own_random_state(context):
        model = inherited_subnet(context, config)
        with torch.no_grad():
            before = float(task.loss(model, held_out))
        short_training("finetuned_loss", model, task, steps, batch_size)
        model.eval()
        with torch.no_grad():
            after = float(task.loss(model, held_out))
    if not math.isfinite(after):
        raise ProxyError(f"finetuned_loss: the held-out loss after fine-tuning is {after}")
    return before, after


@register_proxy
class TrainSpeed(Proxy):
    name = "train_speed"
    direction = "minimize"
    needs = "batch"
    cost = "training"
    description = (
        f"mean training loss over the first {STEPS} AdamW steps (batch {BATCH_SIZE}) of a freshly "
        "initialised subnet (training-speed estimation, Ru et al. 2021)"
    )

    def losses(self, context: ProxyContext, config: dict[str, Any]) -> list[float]:
        """The training loss of each step of the short run."""
        return training_losses(context, config)

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        losses = self.losses(context, config)
        return sum(losses) / len(losses)


@register_proxy
class TrainSpeedFrozen(TrainSpeed):
    name = "train_speed_frozen"
    needs = "supernet"
    description = (
        f"`train_speed` as the space trains a subnet: the mean training loss over the first {STEPS} "
        "AdamW steps of fresh layers on the part of the trained supernet that stays frozen (temporal: "
        "the image UNet, SnapGen-V's setting)"
    )

    def supports(self, space: SearchSpace) -> bool:
        return space.supernet_freezes

    def requirement(self) -> str:
        return f"{super().requirement()}, and a space whose supernet keeps a part frozen (temporal)"

    def losses(self, context: ProxyContext, config: dict[str, Any]) -> list[float]:
        return frozen_training_losses(context, config)


@register_proxy
class FinetunedLoss(Proxy):
    name = "finetuned_loss"
    direction = "minimize"
    needs = "supernet"
    cost = "training"
    description = (
        f"held-out task loss of the subnet inherited from the trained supernet after {STEPS} AdamW "
        f"steps (batch {BATCH_SIZE}) of fine-tuning"
    )

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        return finetuned_losses(context, config)[1]
