"""What a space offers for quality: every registered proxy that suits it, whether it can run now
(its task, its trained supernet, its fitted predictor), which one `proxy:default` picks, and what the
learned predictor was fitted on (`GET /v1/spaces/{name}` shows this)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.proxies.predictor import QualityPredictor, find_predictor
from nas.proxies.registry import available_proxies, default_proxy, get_proxy, list_proxies
from nas.proxies.supernet_checkpoints import DEFAULT_SUPERNET_DIR, find_checkpoint
from nas.proxies.task_data import has_task
from search_spaces import SearchSpace


def proxy_catalog(space: SearchSpace, supernet_dir: str | Path = DEFAULT_SUPERNET_DIR) -> dict[str, Any]:
    """`{"default", "supernet_checkpoint", "proxies": [...]}` for `space` at its options.

    Each proxy: its contract (`Proxy.to_dict`), `available` (whether a search can use it now) and,
    when not, `requirement` (what it still needs); `predicted` also carries `predictor`: its target,
    training size, features and held-out error, when fitted.
    """
    offered = available_proxies(space, supernet_dir=supernet_dir)
    checkpoint = find_checkpoint(space, supernet_dir) if has_task(space) else None
    predictor = find_predictor(space, supernet_dir) if checkpoint is not None else None
    proxies = []
    for name in list_proxies():
        proxy = get_proxy(name)
        if proxy.needs != "nothing" and not has_task(space):
            continue
        if not proxy.supports(space):
            continue
        entry: dict[str, Any] = {**proxy.to_dict(), "available": name in offered, "requirement": None}
        if name not in offered:
            entry["requirement"] = proxy.requirement()
        if proxy.needs == "predictor" and predictor is not None:
            fitted = QualityPredictor.load(predictor)
            entry["predictor"] = {
                "path": str(predictor),
                "target": fitted.target,
                "features": fitted.features,
                "samples": fitted.samples,
                "folds": fitted.folds,
                "held_out_rmse": fitted.cv_rmse,
                "held_out_spearman": fitted.cv_spearman,
                "held_out_kendall": fitted.cv_kendall,
                "checkpoint": fitted.checkpoint,
            }
        proxies.append(entry)
    return {
        "default": default_proxy(space.name, offered),
        "supernet_checkpoint": None if checkpoint is None else str(checkpoint),
        "proxies": proxies,
    }
