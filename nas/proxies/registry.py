"""Proxies by name (`register_proxy`, `get_proxy`), which of them a space offers, and the measured
default proxy per space."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nas.directions import Direction
from nas.proxies._base import Proxy
from nas.proxies.errors import UnknownProxyError
from nas.proxies.supernet_checkpoints import DEFAULT_SUPERNET_DIR, find_checkpoint, predictor_path
from nas.proxies.task_data import has_task
from search_spaces import Registry, SearchSpace

PROXIES: Registry[type[Proxy]] = Registry(
    "proxy", field="proxy", error=UnknownProxyError, known="known proxies"
)

#: The proxies each space's searches should use for quality, best first, chosen from the correlation
#: benchmark (docs/proxies.md): `proxy:default` is the first one the space offers at the search's
#: options (the supernet proxies only where a trained checkpoint is found); spaces not listed, or
#: offering none of their list, fall back to `params`.
#: Measured by `benchmarks/proxy_correlation.py` (docs/proxies.md, 30 subnets, 2-init truths).
#: EfficientFormerV2 (2026-12-06, truth with an annealed rate, inits agree at +0.92 on loss):
#: grad_norm +0.97 / +0.95 (loss; judged set / a second set of 30), synflow +0.93 / +0.81,
#: finetuned_loss +0.93 at ten times the cost (params +0.29 / +0.53); synflow is about 3x cheaper at
#: 224 px. UNet (2026-12-06, inits agree at +0.90): finetuned_loss +0.84 to +0.86, supernet_loss
#: +0.74 to +0.79, train_speed +0.65 to +0.69 without a supernet (macs +0.53, params +0.39).
#: Temporal (2026-12-06, temporal layers trained on the frozen image UNet, inits agree at +1.00):
#: train_speed_frozen +0.93, train_speed +0.62 without a supernet (macs +0.59, params +0.23).
DEFAULT_PROXY: dict[str, list[str]] = {
    "efficientformerv2": ["grad_norm"],
    "unet": ["finetuned_loss", "train_speed"],
    "temporal": ["train_speed_frozen", "train_speed"],
}


def register_proxy(cls: type[Proxy]) -> type[Proxy]:
    """Class decorator: make a proxy available by its `name`."""
    return PROXIES.register(cls)


def list_proxies() -> list[str]:
    """Every registered proxy, whatever space it suits."""
    return PROXIES.names()


def get_proxy(name: str) -> Proxy:
    """The proxy `name`; `UnknownProxyError` naming the known proxies if there is none."""
    return PROXIES.get(name)()


def default_proxy(space_name: str, offered: Iterable[str] | None = None) -> str:
    """The measured best proxy of `space_name` among `offered` (see docs/proxies.md): the first of
    its preference list that is offered (the first of the list when `offered` is None), `params`
    where none is."""
    preferred = DEFAULT_PROXY.get(space_name, [])
    if offered is None:
        return preferred[0] if preferred else "params"
    names = set(offered)
    return next((name for name in preferred if name in names), "params")


def available_proxies(
    space: SearchSpace,
    *,
    supernet: bool | None = None,
    supernet_dir: str | Path = DEFAULT_SUPERNET_DIR,
    predictor: bool | None = None,
) -> dict[str, Direction]:
    """The proxies that can score subnets of `space`, with their directions.

    Proxies that need a batch need a task for the space (`nas.proxies.task_data.has_task`); proxies
    that need a supernet also need a trained checkpoint of it, and `predicted` a quality predictor
    fitted next to that checkpoint. `supernet` and `predictor` say whether they are available; by
    default `find_checkpoint` looks under `supernet_dir` (and the predictor next to what it finds).
    """
    with_task = has_task(space)
    checkpoint = None
    if supernet is None or (predictor is None and supernet):
        checkpoint = find_checkpoint(space, supernet_dir) if with_task else None
    if supernet is None:
        supernet = checkpoint is not None
    if predictor is None:
        predictor = checkpoint is not None and predictor_path(checkpoint).is_file()
    out: dict[str, Direction] = {}
    for name in list_proxies():
        proxy = get_proxy(name)
        if proxy.needs == "batch" and not with_task:
            continue
        if proxy.needs == "supernet" and not (with_task and supernet):
            continue
        if proxy.needs == "predictor" and not (with_task and supernet and predictor):
            continue
        if proxy.supports(space):
            out[name] = proxy.direction
    return out
