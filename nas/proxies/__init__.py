"""Proxy quality metrics: scores that stand in for a subnet's trained quality.

Importing the package registers the built-in proxies: the zero-cost scores `synflow`, `snip`,
`grad_norm`, `naswot`, `jacob_cov` and `zico`, the baselines `params` and `macs`, and the
supernet-inherited `supernet_loss` and `supernet_accuracy`. Specs name them as objectives
`proxy:<name>`; how well each ranks subnets on our spaces is measured by
`benchmarks/proxy_correlation.py` and recorded in docs/proxies.md.
"""

from nas.proxies._base import (
    Proxy,
    ProxyCost,
    ProxyError,
    ProxyNeeds,
    UnknownProxyError,
    available_proxies,
    get_proxy,
    list_proxies,
    register_proxy,
)
from nas.proxies.context import DEFAULT_BATCH_SIZE, ProxyContext
from nas.proxies.correlation import kendall, spearman

# Built-in proxies register themselves on import.
from nas.proxies import zero_cost  # noqa: F401  isort: skip
from nas.proxies import supernet  # noqa: F401  isort: skip

#: The proxy each space's searches should use for quality, chosen from the correlation benchmark
#: (docs/proxies.md); spaces not listed fall back to `params`.
#: Measured by `benchmarks/proxy_correlation.py` on 30 subnets per space (docs/proxies.md, 2026-11-23):
#: EfficientFormerV2: synflow rho +0.25 vs accuracy / +0.66 vs loss (params -0.01 / +0.13), tied with
#: jacob_cov, snip and grad_norm on the mean of both and the cheapest of them; UNet: naswot rho +0.51
#: vs denoising loss (params +0.39; the `macs` baseline, +0.57, is a cost and not offered as quality).
DEFAULT_PROXY: dict[str, str] = {"efficientformerv2": "synflow", "unet": "naswot"}


def default_proxy(space_name: str) -> str:
    """The measured best proxy of `space_name` (see docs/proxies.md), `params` where none beat it."""
    return DEFAULT_PROXY.get(space_name, "params")


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PROXY",
    "Proxy",
    "ProxyContext",
    "ProxyCost",
    "ProxyError",
    "ProxyNeeds",
    "UnknownProxyError",
    "available_proxies",
    "default_proxy",
    "get_proxy",
    "kendall",
    "list_proxies",
    "register_proxy",
    "spearman",
]
