"""The `Proxy` contract (the registry of proxies is `nas.proxies.registry`).

A *proxy* scores the quality of a subnet without training it: cheaply enough to run once per trial
inside the runner's evaluator actors. Every proxy declares

- `name`: how specs name it (`proxy:<name>`),
- `direction`: whether larger (`maximize`) or smaller (`minimize`) values predict a better subnet,
- `needs`: what it consumes besides the config: `nothing` (counting only), `batch` (a batch of the
  space's task data, see `nas.proxies.task_data`), `supernet` (a trained supernet checkpoint) or
  `predictor` (a quality predictor fitted next to that checkpoint, `nas.proxies.predictor`),
- `cost`: what one evaluation runs: `counting` (no tensors), `forward` (forward passes), `backward`
  (forward and backward passes), `training` (a few optimizer steps) or `inherited` (a subnet extracted
  from a supernet, its BN statistics recalibrated, then forward passes). The seconds one evaluation
  really takes are measured by the evaluator (`proxy_seconds:<name>` in the trial's metrics) and
  tabulated in docs/proxies.md.

A proxy is deterministic: `compute` on the same config with the same `ProxyContext` settings gives the
same value (the context seeds the random init and generates the data from its seed).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from nas.directions import Direction
from search_spaces import SearchSpace

if TYPE_CHECKING:
    from nas.proxies.context import ProxyContext

ProxyNeeds = Literal["nothing", "batch", "supernet", "predictor"]
ProxyCost = Literal["counting", "forward", "backward", "training", "inherited"]


class Proxy(abc.ABC):
    """A quality score of a subnet; see the module docstring for what each attribute promises."""

    name: ClassVar[str]
    direction: ClassVar[Direction] = "maximize"
    needs: ClassVar[ProxyNeeds]
    cost: ClassVar[ProxyCost]
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        """The proxy's value for the canonical `config` of `context.space`.

        Raises `ProxyError` when the value cannot be computed (e.g. it overflows).
        """

    def supports(self, space: SearchSpace) -> bool:
        """Whether the proxy applies to `space` at all, given what it `needs` is there (default: yes)."""
        return True

    def requirement(self) -> str:
        """What a space must offer for this proxy (said when a spec names it for a space without)."""
        if self.needs == "batch":
            return "it needs data and a loss for the space (a training task in nas.training.tasks)"
        if self.needs == "supernet":
            return (
                "it needs a trained supernet checkpoint of the space at these options "
                "(run `nas supernet train`)"
            )
        if self.needs == "predictor":
            return (
                "it needs a quality predictor fitted next to the space's supernet checkpoint at these "
                "options (run `nas supernet train`, then `nas supernet fit-predictor`)"
            )
        return "it does not apply to the space"

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "direction": self.direction,
            "needs": self.needs,
            "cost": self.cost,
            "description": self.description,
        }
