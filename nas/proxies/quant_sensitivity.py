"""`quant_sensitivity`: BitsFusion's per-layer sensitivity summed over a bit-width config.

For layer i at b bits, M(i, b) is the mean squared error the quantized layer alone causes in the
network's output on a fixed batch (the space's `example_inputs`: seeded latents, timesteps and text
embeddings for a UNet, images for EfficientFormerV2), and S(i, b) = M(i, b) * N_i^(-0.3) with N_i
the layer's weight count (arXiv 2406.04333). The proxy is the sum of S over the searched layers of a
config (16-bit layers add 0; the fixed layers add the same to every config and are left out).

The weights are the space's `weights` option when it names a checkpoint (see
`search_spaces.precision`), else the architecture initialised from the proxy seed
(`SensitivityTable.weights` says which). Values are computed on first use, one forward pass per layer
(the batch repeated once per width), and cached per process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.proxies._base import Proxy
from nas.proxies.context import ProxyContext
from nas.proxies.errors import ProxyError
from nas.proxies.registry import register_proxy
from search_spaces import SearchSpace
from search_spaces.precision import BIT_OPTIONS, SENSITIVITY_ETA, MixedPrecisionSpace, fake_quantize

#: Samples in the fixed batch the sensitivity is measured on.
SENSITIVITY_BATCH = 2

_TABLES: dict[tuple[Any, ...], SensitivityTable] = {}


def _flat(output: Any) -> torch.Tensor:
    if isinstance(output, tuple | list):
        return torch.cat([t.reshape(-1) for t in output])
    return output.reshape(-1)


def _layer_output(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight, module.bias)
    return F.linear(x, weight, module.bias)


class SensitivityTable:
    """M(i, b) and S(i, b) of every searched layer of a space at its options, computed on demand."""

    def __init__(self, space: MixedPrecisionSpace, seed: int = 0):
        self.space = space
        self.model, self.weights = reference_model(space, seed)
        self.inputs = space.example_inputs(batch=SENSITIVITY_BATCH)
        with torch.no_grad():
            self.reference = _flat(self.model(*self.inputs)).double()
        self.layers = {layer.name: layer for layer in space.searched_layers}
        self._mse: dict[tuple[str, int], float] = {}

    def mse(self, name: str, bits: int) -> float:
        """M(i, b): the output's mean squared error with only layer `name` at `bits`."""
        if bits >= 16:
            return 0.0
        if (name, bits) not in self._mse:
            self._measure(name)
        return self._mse[(name, bits)]

    def _measure(self, name: str) -> None:
        """M(name, b) for every width at once: one forward pass of the batch repeated once per width,
        the layer computing each copy with its weight at that width (the other layers see float
        weights; every operation of these networks treats samples independently)."""
        layer = self.layers[name]
        module = self.model.get_submodule(layer.path)
        widths = [b for b in BIT_OPTIONS if b < 16]
        weights = [fake_quantize(module.weight, b) for b in widths]

        def per_width(_module: nn.Module, args: tuple[Any, ...], _output: torch.Tensor) -> torch.Tensor:
            parts = args[0].chunk(len(widths))
            return torch.cat([_layer_output(module, x, w) for x, w in zip(parts, weights, strict=True)])

        handle = module.register_forward_hook(per_width)
        try:
            with torch.no_grad():
                repeated = tuple(t.repeat(len(widths), *[1] * (t.dim() - 1)) for t in self.inputs)
                outputs = self.model(*repeated)
        finally:
            handle.remove()
        chunks = outputs if isinstance(outputs, tuple | list) else (outputs,)
        per_output = [t.chunk(len(widths)) for t in chunks]
        for k, bits in enumerate(widths):
            out = torch.cat([parts[k].reshape(-1) for parts in per_output]).double()
            self._mse[(name, bits)] = float((out - self.reference).pow(2).mean())

    def sensitivity(self, name: str, bits: int) -> float:
        """S(i, b) = M(i, b) * N_i^(-0.3)."""
        return self.mse(name, bits) * self.layers[name].weights ** -SENSITIVITY_ETA

    def total(self, config: Mapping[str, Any]) -> float:
        """The sum of S over the searched layers of `config`."""
        canonical = self.space.canonicalize(config)
        return sum(self.sensitivity(name, int(canonical[f"bits.{name}"])) for name in self.layers)


def reference_model(space: MixedPrecisionSpace, seed: int) -> tuple[nn.Module, str]:
    """The float network (no layer quantized) and where its weights came from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = space.float_model()
    source = f"checkpoint {space.options['weights']}" if space.options["weights"] else f"init seed {seed}"
    return model.float().eval(), source


def sensitivity_table(space: SearchSpace, seed: int = 0) -> SensitivityTable:
    """The (cached) table of `space` at its options and `seed`."""
    if not isinstance(space, MixedPrecisionSpace):
        raise ProxyError(f"quant_sensitivity needs a mixed-precision space, not {space.name!r}")
    key = (space.name, tuple(sorted(space.options.items())), seed)
    if key not in _TABLES:
        _TABLES[key] = SensitivityTable(space, seed)
    return _TABLES[key]


@register_proxy
class QuantSensitivity(Proxy):
    name = "quant_sensitivity"
    direction = "minimize"
    needs = "nothing"
    cost = "forward"
    description = (
        "BitsFusion's sensitivity: sum over layers of M(i, b) * N_i^-0.3, M the output MSE with layer i "
        "alone quantized to b bits on a fixed batch (mixed-precision spaces)"
    )

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        return sensitivity_table(context.space, context.seed).total(config)

    def supports(self, space: SearchSpace) -> bool:
        return isinstance(space, MixedPrecisionSpace)

    def requirement(self) -> str:
        return "it needs a space with per-layer bit widths (unet_bits, efficientformerv2_bits)"
