"""Supernet-inherited proxies: a subnet takes its weights from a trained supernet checkpoint.

`supernet_loss` (minimise) and `supernet_accuracy` (maximise, classification spaces only) extract the
subnet from the supernet (`Supernet.extract`), recalibrate its BatchNorm running statistics on
training batches (reset, then forward passes in train mode without gradients: the supernet shares
one set of statistics between all widths, which describes no single subnet), then evaluate it in
eval mode on the task's held-out batch. Spaces without BatchNorm skip the recalibration.

`teacher_distance` (minimise, diffusion spaces: a denoising task) needs no real data at all, as
Flexiffusion's "relative" FID: it compares the inherited subnet's noise predictions with the full
network's (the teacher: the supernet's largest subnet) on a fixed, seeded set of noisy latents,
timesteps spread over the whole schedule and text embeddings (the task's held-out batch of
`TEACHER_BATCH` samples), as the mean squared difference divided by the mean square of the teacher's
prediction. The teacher's predictions are computed once per context. A supernet trained with
distillation (`--distill-subnets`) teaches its subnets exactly this target.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.proxies._base import Proxy
from nas.proxies.context import ProxyContext
from nas.proxies.errors import ProxyError
from nas.proxies.registry import register_proxy
from nas.proxies.task_data import classification_output, has_task, is_classification, make_task
from nas.training.tasks import DenoisingTask, TrainingTask
from search_spaces import SearchSpace

#: Held-out samples the inherited subnet is scored on.
HELD_OUT_SIZE = 256
#: Noisy latents (with their timesteps and text embeddings) on which subnet and teacher are compared.
TEACHER_BATCH = 64
#: Training batches (of `RECALIBRATION_BATCH` samples) that re-estimate BatchNorm statistics.
RECALIBRATION_BATCHES = 4
RECALIBRATION_BATCH = 64


def recalibrate(model: nn.Module, task: TrainingTask) -> None:
    """Re-estimate every BatchNorm's running statistics of `model` on training batches (no gradients)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        # Cumulative average: every recalibration batch counts equally.
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for index in range(RECALIBRATION_BATCHES):
            task.loss(model, task.train_batch(index, RECALIBRATION_BATCH))


def inherited_subnet(context: ProxyContext, config: dict[str, Any]) -> nn.Module:
    """The subnet with inherited weights and recalibrated statistics, in eval mode."""
    loaded = context.supernet()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed)
        model = loaded.supernet.extract(config)
    recalibrate(model, context.task)
    return model.eval()


@register_proxy
class SupernetLoss(Proxy):
    name = "supernet_loss"
    direction = "minimize"
    needs = "supernet"
    cost = "inherited"
    description = "held-out task loss of the subnet inherited from the trained supernet (BN recalibrated)"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        model = inherited_subnet(context, config)
        with torch.no_grad():
            return float(context.task.loss(model, context.task.held_out_batch(HELD_OUT_SIZE)))


@register_proxy
class SupernetAccuracy(Proxy):
    name = "supernet_accuracy"
    needs = "supernet"
    cost = "inherited"
    description = "held-out accuracy of the subnet inherited from the trained supernet (classification)"

    def supports(self, space: SearchSpace) -> bool:
        return is_classification(make_task(space))

    def requirement(self) -> str:
        return f"{super().requirement()}, and a classification space"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        if not is_classification(context.task):
            raise ProxyError(f"supernet_accuracy needs a classification space; {context.space.name!r} is not")
        model = inherited_subnet(context, config)
        with torch.no_grad():
            logits, labels = classification_output(
                context.task, model, context.task.held_out_batch(HELD_OUT_SIZE)
            )
        return float((logits.argmax(-1) == labels).float().mean())


def teacher_prediction(context: ProxyContext) -> torch.Tensor:
    """The teacher's (the supernet's largest subnet's) noise predictions on the fixed batch, once."""
    if "teacher_prediction" not in context.memo:
        teacher = inherited_subnet(context, context.space.largest())
        with torch.no_grad():
            context.memo["teacher_prediction"] = context.task.predict(teacher, _teacher_batch(context))
    return context.memo["teacher_prediction"]


def _teacher_batch(context: ProxyContext) -> dict[str, torch.Tensor]:
    if "teacher_batch" not in context.memo:
        context.memo["teacher_batch"] = context.task.held_out_batch(TEACHER_BATCH)
    return context.memo["teacher_batch"]


@register_proxy
class TeacherDistance(Proxy):
    name = "teacher_distance"
    direction = "minimize"
    needs = "supernet"
    cost = "inherited"
    description = (
        "relative distance of the inherited subnet's noise predictions from the full (teacher) "
        "network's on fixed seeded latents, timesteps and text embeddings (diffusion spaces)"
    )

    def supports(self, space: SearchSpace) -> bool:
        return has_task(space) and isinstance(make_task(space), DenoisingTask)

    def requirement(self) -> str:
        return f"{super().requirement()}, and a diffusion (denoising) space"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        if not isinstance(context.task, DenoisingTask):
            raise ProxyError(f"teacher_distance needs a diffusion space; {context.space.name!r} is not")
        teacher = teacher_prediction(context)
        model = inherited_subnet(context, config)
        with torch.no_grad():
            prediction = context.task.predict(model, _teacher_batch(context))
        return float(((prediction - teacher) ** 2).mean() / (teacher**2).mean().clamp_min(1e-12))
