"""Proxy quality metrics: scores that stand in for a subnet's trained quality.

Importing the package registers the built-in proxies: the zero-cost scores `synflow`, `snip`,
`grad_norm`, `naswot`, `jacob_cov` and `zico`, the short-training `train_speed`, the baselines
`params` and `macs`, the supernet-inherited `supernet_loss`, `supernet_accuracy` and
`teacher_distance`, the learned `predicted`, and BitsFusion's `quant_sensitivity` (spaces with
per-layer bit widths). Specs name them as objectives `proxy:<name>`; how well each ranks subnets on
our spaces is measured by `benchmarks/proxy_correlation.py` and recorded in docs/proxies.md.
"""

# The built-in proxies register themselves (`register_proxy`) when imported.
from nas.proxies import predictor, quant_sensitivity, supernet, training_speed, zero_cost  # noqa: F401
from nas.proxies._base import Proxy, ProxyCost, ProxyNeeds
from nas.proxies.context import DEFAULT_BATCH_SIZE, ProxyContext
from nas.proxies.correlation import kendall, spearman
from nas.proxies.errors import ProxyError, UnknownProxyError
from nas.proxies.predictor import QualityPredictor, find_predictor, fit_for_checkpoint, fit_predictor
from nas.proxies.registry import (
    DEFAULT_PROXY,
    available_proxies,
    default_proxy,
    get_proxy,
    list_proxies,
    register_proxy,
)
from nas.proxies.supernet_checkpoints import (
    DEFAULT_SUPERNET_DIR,
    LoadedSupernet,
    find_checkpoint,
    load_supernet,
    predictor_path,
    supernet_run_dir,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PROXY",
    "DEFAULT_SUPERNET_DIR",
    "LoadedSupernet",
    "Proxy",
    "ProxyContext",
    "ProxyCost",
    "ProxyError",
    "ProxyNeeds",
    "QualityPredictor",
    "UnknownProxyError",
    "available_proxies",
    "default_proxy",
    "find_checkpoint",
    "find_predictor",
    "fit_for_checkpoint",
    "fit_predictor",
    "get_proxy",
    "kendall",
    "list_proxies",
    "load_supernet",
    "predictor_path",
    "register_proxy",
    "spearman",
    "supernet_run_dir",
]
