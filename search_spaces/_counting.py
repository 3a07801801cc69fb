"""MAC counting with fvcore, per block and cached by block key."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from search_spaces._base import SearchSpace
    from search_spaces._blocks import BlockSpec

_CACHE: dict[tuple[str, str], int] = {}
_LOCK = threading.Lock()


def count_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one forward pass as fvcore counts them (conv, linear, matmul, ...).

    fvcore calls its unit "flops" but counts one fused multiply-add as one, i.e. MACs.
    """
    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    module.eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(module, inputs)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return int(analysis.total())


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_macs(space: SearchSpace, spec: BlockSpec) -> int:
    """MACs of one block, counted once per (space, key) and process."""
    cache_key = (space.name, spec.key)
    with _LOCK:
        if cache_key in _CACHE:
            return _CACHE[cache_key]
    module, inputs = space.build_block(spec)
    macs = count_macs(module, inputs)
    with _LOCK:
        _CACHE[cache_key] = macs
    return macs
