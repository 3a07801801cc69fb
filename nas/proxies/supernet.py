"""Supernet-inherited proxies: a subnet takes its weights from a trained supernet checkpoint.

`supernet_loss` (minimise) and `supernet_accuracy` (maximise, classification spaces only) extract the
subnet from the supernet (`Supernet.extract`), recalibrate its BatchNorm running statistics on
training batches (reset, then forward passes in train mode without gradients: the supernet shares
one set of statistics between all widths, which describes no single subnet), then evaluate it in
eval mode on the task's held-out batch. Spaces without BatchNorm skip the recalibration.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.proxies._base import Proxy
from nas.proxies.context import ProxyContext
from nas.proxies.errors import ProxyError
from nas.proxies.registry import register_proxy
from nas.proxies.task_data import classification_output, is_classification, make_task
from nas.training.tasks import TrainingTask
from search_spaces import SearchSpace

#: Held-out samples the inherited subnet is scored on.
HELD_OUT_SIZE = 256
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
