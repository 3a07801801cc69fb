"""Proxies by name (`register_proxy`, `get_proxy`), which of them a space offers, and the measured
default proxy per space."""

from __future__ import annotations

from pathlib import Path

from nas.directions import Direction
from nas.proxies._base import Proxy
from nas.proxies.errors import UnknownProxyError
from nas.proxies.supernet_checkpoints import DEFAULT_SUPERNET_DIR, find_checkpoint
from nas.proxies.task_data import has_task
from search_spaces import Registry, SearchSpace

PROXIES: Registry[type[Proxy]] = Registry(
    "proxy", field="proxy", error=UnknownProxyError, known="known proxies"
)

#: The proxy each space's searches should use for quality, chosen from the correlation benchmark
#: (docs/proxies.md); spaces not listed fall back to `params`.
#: Measured by `benchmarks/proxy_correlation.py` on 30 subnets per space (docs/proxies.md, 2026-11-23):
#: EfficientFormerV2: synflow rho +0.25 vs accuracy / +0.66 vs loss (params -0.01 / +0.13), tied with
#: jacob_cov, snip and grad_norm on the mean of both and the cheapest of them; UNet: naswot rho +0.51
#: vs denoising loss (params +0.39; the `macs` baseline, +0.57, is a cost and not offered as quality).
DEFAULT_PROXY: dict[str, str] = {"efficientformerv2": "synflow", "unet": "naswot"}


def register_proxy(cls: type[Proxy]) -> type[Proxy]:
    """Class decorator: make a proxy available by its `name`."""
    return PROXIES.register(cls)


def list_proxies() -> list[str]:
    """Every registered proxy, whatever space it suits."""
    return PROXIES.names()


def get_proxy(name: str) -> Proxy:
    """The proxy `name`; `UnknownProxyError` naming the known proxies if there is none."""
    return PROXIES.get(name)()


def default_proxy(space_name: str) -> str:
    """The measured best proxy of `space_name` (see docs/proxies.md), `params` where none beat it."""
    return DEFAULT_PROXY.get(space_name, "params")


def available_proxies(
    space: SearchSpace, *, supernet: bool | None = None, supernet_dir: str | Path = DEFAULT_SUPERNET_DIR
) -> dict[str, Direction]:
    """The proxies that can score subnets of `space`, with their directions.

    Proxies that need a batch need a task for the space (`nas.proxies.task_data.has_task`); proxies
    that need a supernet also need a trained checkpoint of it. `supernet` says whether one is
    available; by default `find_checkpoint` looks for one under `supernet_dir`.
    """
    with_task = has_task(space)
    if supernet is None:
        supernet = with_task and find_checkpoint(space, supernet_dir) is not None
    out: dict[str, Direction] = {}
    for name in list_proxies():
        proxy = get_proxy(name)
        if proxy.needs == "batch" and not with_task:
            continue
        if proxy.needs == "supernet" and not (with_task and supernet):
            continue
        if proxy.supports(space):
            out[name] = proxy.direction
    return out
