"""Zero-cost proxies: scores of a randomly initialised subnet, plus the `params` and `macs` baselines.

The gradient-based scores sum over the *weights of the prunable layers* (every `Conv1d/2d/3d` and
`Linear` weight), as the reference implementations of Abdelfattah et al. (2021) do; biases,
normalisation affines, layer scales and attention biases are left out.

- `synflow` (Tanaka et al. 2020): all parameters and buffers replaced by their absolute values, in
  float64 and eval mode, an all-ones input of batch 1 (a diffusion timestep keeps its value),
  R = sum of the outputs;
  score = log(sum |w * dR/dw|). Raw values span tens of orders of magnitude, hence the log.
- `snip` (Lee et al. 2019): sum |w * dL/dw| for the task loss L on the proxy batch.
- `grad_norm`: sum over the weights of ||dL/dw||_2.
- `naswot` (Mellor et al. 2021, v2): binary codes c (pre-activation > 0 at every unit of every
  ReLU/GELU/SiLU-like activation call, module or functional) of each sample; K[i, j] = number of
  units where samples i and j agree; score = log det K (from its eigenvalues; a singular K is a `ProxyError`).
- `jacob_cov` (Mellor et al., v1): the per-sample Jacobian of the summed output with respect to the
  first input; C = their correlation matrix with eigenvalues v; score = -sum(log(v + k) + 1 / (v + k)),
  k = 1e-5.
- `zico` (Li et al. 2023): the proxy batch split into two mini-batches and one gradient per
  mini-batch; per weight tensor s = sum over entries with non-zero std of mean|g| / std(g) (std over the
  mini-batches, population form); score = sum over tensors with s > 0 of log s.
- `params`, `macs`: the subnet's parameter and MAC counts, larger predicting better (the baselines
  every proxy must beat).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from nas.proxies._base import Proxy
from nas.proxies.context import ProxyContext
from nas.proxies.errors import ProxyError
from nas.proxies.registry import register_proxy
from nas.proxies.task_data import merge_heads, model_inputs
from nas.training.data import Batch

#: Activation functions whose sign pattern NASWOT reads (their input > 0 is a unit's code); modules
#: such as `nn.GELU` call these too.
ACTIVATIONS = frozenset(
    {
        F.relu,
        F.relu6,
        F.leaky_relu,
        F.gelu,
        F.silu,
        F.hardswish,
        F.mish,
        F.elu,
        torch.relu,
    }
)
PRUNABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
JACOB_COV_K = 1e-5
ZICO_SPLITS = 2


def prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight of every conv and linear layer, in module order."""
    return [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]


def _backward_loss(context: ProxyContext, model: nn.Module, batch: Batch) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    context.task.loss(model, batch).backward()
    weights = prunable_weights(model)
    if not weights:
        raise ProxyError(f"the subnet of space {context.space.name!r} has no conv or linear layers")
    return weights


def _ones(value: Any) -> Any:
    """SynFlow's input: all ones (float64) for data tensors; per-sample scalars such as diffusion
    timesteps (1-D tensors) keep their first sample's value, which conditions rather than carries signal."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point() and value.dim() > 1:
        return torch.ones_like(value[:1], dtype=torch.float64)
    return value[:1].double() if value.is_floating_point() else value[:1]


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ProxyError(f"{name} is not finite ({value}) for this subnet")
    return value


@register_proxy
class SynFlow(Proxy):
    name = "synflow"
    needs = "batch"
    cost = "backward"
    description = "log of sum |w * dR/dw|, R the summed output of the |w| network on an all-ones input"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        model = context.model(config).double().eval()
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.is_floating_point():
                    tensor.abs_()
        args, kwargs = model_inputs(context.task, model, context.batch())
        merge_heads(model(*map(_ones, args), **{k: _ones(v) for k, v in kwargs.items()})).sum().backward()
        weights = prunable_weights(model)
        total = sum(float((w.detach() * w.grad).abs().sum()) for w in weights if w.grad is not None)
        if total == 0.0:
            raise ProxyError("synflow is 0 for this subnet: no path carries signal from input to output")
        if not math.isfinite(total):
            raise ProxyError("synflow overflowed float64 for this subnet")
        return math.log(total)


@register_proxy
class Snip(Proxy):
    name = "snip"
    needs = "batch"
    cost = "backward"
    description = "sum |w * dL/dw| of the task loss on the proxy batch"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        weights = _backward_loss(context, context.model(config), context.batch())
        total = sum(float((w.detach() * w.grad).abs().sum()) for w in weights if w.grad is not None)
        return _finite(self.name, total)


@register_proxy
class GradNorm(Proxy):
    name = "grad_norm"
    needs = "batch"
    cost = "backward"
    description = "sum over conv/linear weights of the L2 norm of dL/dw on the proxy batch"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        weights = _backward_loss(context, context.model(config), context.batch())
        total = sum(float(w.grad.norm()) for w in weights if w.grad is not None)
        return _finite(self.name, total)


class _ActivationCodes(TorchFunctionMode):
    """Accumulates NASWOT's kernel over every activation function call in its scope.

    A function mode rather than module hooks: spaces call activations functionally (`F.silu`) as
    often as through modules. Calls whose leading dimension is not a multiple of the batch (nothing
    per-sample to compare) are skipped.
    """

    def __init__(self, batch_size: int):
        super().__init__()
        self.n = batch_size
        self.agree = torch.zeros(batch_size, batch_size, dtype=torch.float64)
        self.units = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in ACTIVATIONS and args and isinstance(args[0], torch.Tensor):
            x = args[0].detach()
            if x.dim() > 0 and x.shape[0] % self.n == 0 and x.numel() > 0:
                codes = (x > 0).reshape(self.n, -1).double()
                ones = codes.sum(1)
                # Agreements = both 1 + both 0 = c c^T + (1 - c)(1 - c)^T.
                self.agree.add_(2 * codes @ codes.T + codes.shape[1] - ones[:, None] - ones[None, :])
                self.units += codes.shape[1]
        return func(*args, **(kwargs or {}))


@register_proxy
class NasWot(Proxy):
    name = "naswot"
    needs = "batch"
    cost = "forward"
    description = "log det of the kernel counting the activation units where two samples agree"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        model = context.model(config)
        n = context.batch_size
        recorder = _ActivationCodes(n)
        with torch.no_grad(), recorder:
            context.task.loss(model, context.batch())
        if recorder.units == 0:
            raise ProxyError(f"the subnet of space {context.space.name!r} calls no activation function")
        agree = recorder.agree
        eigenvalues = torch.linalg.eigvalsh(agree)
        # K is a sum of Gram matrices, so positive semi-definite; "zero" is relative to its scale.
        if eigenvalues[0] <= eigenvalues[-1] * n * 1e-12:
            raise ProxyError(
                "naswot: the activation-pattern kernel is singular (the samples' codes are linearly "
                "dependent, e.g. two samples share every code); use a larger network or a smaller batch"
            )
        return float(eigenvalues.log().sum())


@register_proxy
class JacobCov(Proxy):
    name = "jacob_cov"
    needs = "batch"
    cost = "backward"
    description = "-sum(log(v + k) + 1/(v + k)) over eigenvalues v of the input-Jacobian correlations"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        model = context.model(config)
        args, kwargs = model_inputs(context.task, model, context.batch())
        first = args[0].detach().clone().requires_grad_(True)
        output = merge_heads(model(first, *args[1:], **kwargs))
        (gradient,) = torch.autograd.grad(output.sum(), first)
        jacobians = gradient.reshape(context.batch_size, -1).double().numpy()
        if np.any(jacobians.std(axis=1) == 0):
            raise ProxyError(
                "jacob_cov: a sample's input Jacobian is constant, so correlations are undefined"
            )
        eigenvalues = np.linalg.eigvalsh(np.corrcoef(jacobians))
        shifted = eigenvalues + JACOB_COV_K
        if np.any(shifted <= 0):
            raise ProxyError("jacob_cov: the Jacobian correlation matrix is numerically indefinite")
        return _finite(self.name, float(-np.sum(np.log(shifted) + 1.0 / shifted)))


@register_proxy
class Zico(Proxy):
    name = "zico"
    needs = "batch"
    cost = "backward"
    description = "sum over weight tensors of log sum(mean|g| / std(g)) across mini-batch gradients"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        model = context.model(config)
        grads: list[list[torch.Tensor]] = []
        for part in context.mini_batches(ZICO_SPLITS):
            weights = _backward_loss(context, model, part)
            grads.append(
                [torch.zeros_like(w) if w.grad is None else w.grad.detach().clone() for w in weights]
            )
        total = 0.0
        for per_batch in zip(*grads, strict=True):
            stacked = torch.stack(per_batch).double()
            std = stacked.std(0, correction=0)
            mask = std != 0
            ratio = float((stacked.abs().mean(0)[mask] / std[mask]).sum())
            if ratio > 0:
                total += math.log(ratio)
        return _finite(self.name, total)


@register_proxy
class Params(Proxy):
    name = "params"
    needs = "nothing"
    cost = "counting"
    description = "the subnet's parameter count (baseline: larger predicts better)"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        return float(sum(spec.params for spec in context.space.blocks(config)))


@register_proxy
class Macs(Proxy):
    name = "macs"
    needs = "nothing"
    cost = "counting"
    description = "the subnet's MACs per forward pass (baseline: larger predicts better)"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        return float(context.space.count(config)["macs"])
