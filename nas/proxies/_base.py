"""The `Proxy` contract and the proxy registry.

A *proxy* scores the quality of a subnet without training it: cheaply enough to run once per trial
inside the runner's evaluator actors. Every proxy declares

- `name`: how specs name it (`proxy:<name>`),
- `direction`: whether larger (`maximize`) or smaller (`minimize`) values predict a better subnet,
- `needs`: what it consumes besides the config: `nothing` (counting only), `batch` (a batch of the
  space's task data, see `nas.proxies.tasks`) or `supernet` (a trained supernet checkpoint),
- `cost`: what one evaluation runs: `counting` (no tensors), `forward` (forward passes), `backward`
  (forward and backward passes) or `inherited` (a subnet extracted from a supernet, its BN statistics
  recalibrated, then forward passes). The seconds one evaluation really takes are measured by the
  evaluator (`proxy_seconds:<name>` in the trial's metrics) and tabulated in docs/proxies.md.

A proxy is deterministic: `compute` on the same config with the same `ProxyContext` settings gives the
same value (the context seeds the random init and generates the data from its seed).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from nas.objectives import Direction
from search_spaces import SearchSpace, SpaceError

if TYPE_CHECKING:
    from nas.proxies.context import ProxyContext

ProxyNeeds = Literal["nothing", "batch", "supernet"]
ProxyCost = Literal["counting", "forward", "backward", "inherited"]


class ProxyError(RuntimeError):
    """A proxy cannot be computed for this subnet or space (the message says why and what to do)."""


class UnknownProxyError(SpaceError):
    """No proxy of that name is registered, or it is not available for the chosen space."""


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
        return "it does not apply to the space"

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "direction": self.direction,
            "needs": self.needs,
            "cost": self.cost,
            "description": self.description,
        }


_PROXIES: dict[str, Proxy] = {}


def register_proxy(cls: type[Proxy]) -> type[Proxy]:
    """Class decorator: make a proxy available by its `name`."""
    if cls.name in _PROXIES and type(_PROXIES[cls.name]) is not cls:
        raise ValueError(
            f"proxy {cls.name!r} is already registered by {type(_PROXIES[cls.name]).__qualname__}"
        )
    _PROXIES[cls.name] = cls()
    return cls


def list_proxies() -> list[str]:
    """Every registered proxy, whatever space it suits."""
    return sorted(_PROXIES)


def get_proxy(name: str) -> Proxy:
    try:
        return _PROXIES[name]
    except KeyError:
        raise UnknownProxyError(
            f"unknown proxy {name!r}; known proxies: {list_proxies()}", field="proxy", allowed=list_proxies()
        ) from None


def available_proxies(space: SearchSpace, *, supernet: bool | None = None) -> dict[str, Direction]:
    """The proxies that can score subnets of `space`, with their directions.

    Proxies that need a batch need a task for the space (`nas.proxies.tasks.has_task`); proxies that
    need a supernet also need a trained checkpoint of it. `supernet` says whether one is available;
    by default `nas.proxies.supernet.find_checkpoint` looks for one (under `$NAS_SUPERNET_DIR`).
    """
    from nas.proxies.supernet import find_checkpoint
    from nas.proxies.tasks import has_task

    with_task = has_task(space)
    if supernet is None:
        supernet = with_task and find_checkpoint(space) is not None
    out: dict[str, Direction] = {}
    for name, proxy in sorted(_PROXIES.items()):
        if proxy.needs == "batch" and not with_task:
            continue
        if proxy.needs == "supernet" and not (with_task and supernet):
            continue
        if proxy.supports(space):
            out[name] = proxy.direction
    return out
