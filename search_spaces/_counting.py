"""MAC counting with fvcore, per block and cached by block key."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch
from torch import nn

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


#: How a space builds a block: `SearchSpace.build_block`.
BlockBuilder = Callable[[BlockSpec], tuple[nn.Module, tuple[torch.Tensor, ...]]]


def block_macs(space_name: str, spec: BlockSpec, build_block: BlockBuilder) -> int:
    """MACs of one block of the space `space_name` (built by `build_block`), counted once per (space,
    key) and process."""
    cache_key = (space_name, spec.key)
    with _LOCK:
        if cache_key in _CACHE:
            return _CACHE[cache_key]
    module, inputs = build_block(spec)
    macs = count_macs(module, inputs)
    with _LOCK:
        _CACHE[cache_key] = macs
    return macs
