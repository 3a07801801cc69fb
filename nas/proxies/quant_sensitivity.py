"""`quant_sensitivity`: BitsFusion's per-layer sensitivity summed over a bit-width config.

For layer i at b bits, M(i, b) is the mean squared error the quantized layer alone causes in the
network's output on a fixed batch (the space's `example_inputs`: seeded latents, timesteps and text
embeddings for a UNet, images for EfficientFormerV2), and S(i, b) = M(i, b) * N_i^(-0.3) with N_i
the layer's weight count (arXiv 2406.04333). The proxy is the sum of S over the searched layers of a
config (16-bit layers add 0; the fixed layers add the same to every config and are left out).

The weights are the space's `weights` option when it names a checkpoint (see
`search_spaces.precision`), else the architecture initialised from the proxy seed
(`SensitivityTable.weights` says which). Values are computed on first use, one forward pass per
(layer, width), and cached per process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from nas.proxies._base import Proxy
from nas.proxies.context import ProxyContext
from nas.proxies.errors import ProxyError
from nas.proxies.registry import register_proxy
from search_spaces import SearchSpace
from search_spaces.precision import SENSITIVITY_ETA, MixedPrecisionSpace, fake_quantize

#: Samples in the fixed batch the sensitivity is measured on.
SENSITIVITY_BATCH = 4

_TABLES: dict[tuple[Any, ...], SensitivityTable] = {}


def _flat(output: Any) -> torch.Tensor:
    if isinstance(output, tuple | list):
        return torch.cat([t.reshape(-1) for t in output])
    return output.reshape(-1)


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
        key = (name, bits)
        if key not in self._mse:
            layer = self.layers[name]
            weight = self.model.get_submodule(layer.path).weight
            with torch.no_grad():
                output = functional_call(
                    self.model, {f"{layer.path}.weight": fake_quantize(weight, bits)}, self.inputs
                )
            self._mse[key] = float((_flat(output).double() - self.reference).pow(2).mean())
        return self._mse[key]

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
