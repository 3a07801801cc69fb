"""`quant_sensitivity`: BitsFusion's per-layer sensitivity summed over a bit-width config.

For layer i at b bits, M(i, b) is the mean squared error the quantized layer alone causes in the
network's output on a fixed batch (the space's `example_inputs`: seeded latents, timesteps and text
embeddings for a UNet, images for EfficientFormerV2), and S(i, b) = M(i, b) * N_i^(-0.3) with N_i
the layer's weight count (arXiv 2406.04333). The proxy is the sum of S over the searched layers of a
config (16-bit layers add 0; the fixed layers add the same to every config and are left out).

The weights are the space's `weights` option when it names a checkpoint (see
`search_spaces.precision`), else the architecture initialised from the proxy seed
(`SensitivityTable.weights` says which). Values are computed on first use, many layers per forward
pass (the batch repeated once per layer and width), and cached per process.
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
#: Numbers of the repeated first input (the latent) one measuring pass may hold.
PASS_NUMBERS = 2**20

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
    """M(i, b) and S(i, b) of every searched layer of a space at its options, computed on demand.

    Layers are measured in groups: one forward pass carries the batch repeated once per (layer,
    width) of the group, each layer computing only its own copies with its quantized weight, so a
    pass costs one call of the network for many layers. A group holds at most `samples_per_pass`
    samples (default: what keeps the repeated latent under 2^20 numbers: the whole small UNet at
    once, a few layers per pass at SD size); 1 layer per pass gives the same values up to float
    rounding."""

    def __init__(self, space: MixedPrecisionSpace, seed: int = 0, samples_per_pass: int | None = None):
        self.space = space
        self.model, self.weights = reference_model(space, seed)
        self.inputs = space.example_inputs(batch=SENSITIVITY_BATCH)
        with torch.no_grad():
            self.reference = _flat(self.model(*self.inputs)).double()
        self.layers = {layer.name: layer for layer in space.searched_layers}
        self.widths = [b for b in BIT_OPTIONS if b < 16]
        per_layer = SENSITIVITY_BATCH * len(self.widths)
        limit = samples_per_pass or max(per_layer, PASS_NUMBERS // max(1, self.inputs[0][0].numel()))
        self.group_size = max(1, limit // per_layer)
        self._mse: dict[tuple[str, int], float] = {}

    def mse(self, name: str, bits: int) -> float:
        """M(i, b): the output's mean squared error with only layer `name` at `bits`."""
        if bits >= 16:
            return 0.0
        if (name, bits) not in self._mse:
            names = list(self.layers)
            pending = [n for n in names[names.index(name) :] if (n, self.widths[0]) not in self._mse]
            self._measure(pending[: self.group_size])
        return self._mse[(name, bits)]

    def _measure(self, names: list[str]) -> None:
        """M(name, b) for every width of every layer of `names` in one forward pass: the batch
        repeated once per (layer, width), copy k of layer g computed with g's weight at width k (the
        other layers see float weights; every operation of these networks treats samples
        independently)."""
        widths, batch = self.widths, SENSITIVITY_BATCH
        span = batch * len(widths)
        handles = []
        for g, name in enumerate(names):
            module = self.model.get_submodule(self.layers[name].path)
            quantized = [fake_quantize(module.weight, b) for b in widths]

            def own_copies(
                layer: nn.Module, args: tuple[Any, ...], output: torch.Tensor, g: int = g, weights=quantized
            ) -> torch.Tensor:
                parts = args[0][g * span : (g + 1) * span].chunk(len(widths))
                mine = torch.cat([_layer_output(layer, x, w) for x, w in zip(parts, weights, strict=True)])
                return torch.cat([output[: g * span], mine, output[(g + 1) * span :]])

            handles.append(module.register_forward_hook(own_copies))
        try:
            with torch.no_grad():
                copies = len(names) * len(widths)
                repeated = tuple(t.repeat(copies, *[1] * (t.dim() - 1)) for t in self.inputs)
                outputs = self.model(*repeated)
        finally:
            for handle in handles:
                handle.remove()
        chunks = outputs if isinstance(outputs, tuple | list) else (outputs,)
        per_output = [t.chunk(len(names) * len(widths)) for t in chunks]
        for g, name in enumerate(names):
            for k, bits in enumerate(widths):
                index = g * len(widths) + k
                out = torch.cat([parts[index].reshape(-1) for parts in per_output]).double()
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
