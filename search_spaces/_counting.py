"""MAC counting with fvcore, per block and cached by block key.

Convention of every `macs` figure in this project: one fused multiply-add counts as one MAC, and the
count covers convolutions, linear layers, matrix products (`matmul`, `bmm`, `einsum`) *including the
attention matmuls* QK^T and AV, whether a module writes them as `q @ k` or calls
`torch.nn.functional.scaled_dot_product_attention` (which fvcore has no handle for: `sdpa_macs` is
ours), plus fvcore's own figures for normalisations and upsampling. Element-wise operations
(activations, additions, softmax, pooling, shape changes) carry no MACs by this convention
(`NO_MAC_OPS`). Any other operation fvcore cannot count is *reported*, never silently dropped: it is
listed in `MacCount.skipped` (and so in `SearchSpace.mac_count`) and logged once per process.

For SD-v1.5 at a 64x64 latent with 77 tokens this gives ~401.6 GMACs: the ~338.6 GMACs of the conv
and linear layers that fvcore and thop report, plus ~63 GMACs of attention matmuls.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search_spaces._blocks import BlockSpec

logger = logging.getLogger(__name__)

#: Operations that carry no multiply-accumulate by the convention above (element-wise arithmetic,
#: activations, softmax, pooling, shape and positional-encoding arithmetic). Skipped without a warning;
#: still listed in `MacCount.skipped`.
NO_MAC_OPS = frozenset(
    f"aten::{op}"
    for op in (
        "add", "sub", "mul", "div", "reciprocal", "neg", "exp", "sin", "cos", "sqrt", "rsqrt", "pow",
        "gelu", "silu", "relu", "sigmoid", "tanh", "hardswish", "softmax", "mean", "sum",
        "avg_pool2d", "max_pool2d", "unflatten", "flatten", "reshape", "view", "permute", "transpose",
        "contiguous", "expand", "repeat_interleave", "cat", "chunk", "split", "pad", "constant_pad_nd",
        "arange", "zeros", "ones", "fill_", "copy_", "clone", "dropout",
    )
)  # fmt: skip

_CACHE: dict[tuple[str, str], MacCount] = {}
_LOCK = threading.Lock()
_WARNED: set[str] = set()


@dataclass(frozen=True)
class MacCount:
    """MACs of one forward pass, and the operations fvcore had no handle for (name -> calls), which
    contributed nothing to `macs`."""

    macs: int
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def uncounted(self) -> list[str]:
        """Skipped operations that may carry MACs (not in `NO_MAC_OPS`): what the count may miss."""
        return sorted(op for op in self.skipped if op not in NO_MAC_OPS)

    def __add__(self, other: MacCount) -> MacCount:
        return MacCount(self.macs + other.macs, dict(Counter(self.skipped) + Counter(other.skipped)))


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle of `aten::scaled_dot_product_attention(q, k, v, ...)`: QK^T and AV.

    With q [..., L, E], k [..., S, E], v [..., S, Ev]: L*S*E MACs for the scores and L*S*Ev for the
    weighted sum, per leading (batch, head) index. Softmax, scaling and masks are element-wise.
    """
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(value) for value in inputs[:3])
    batch = math.prod(q[:-2])
    length, source = q[-2], k[-2]
    return batch * length * source * (q[-1] + v[-1])


def count_mac_details(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> MacCount:
    """MACs of one forward pass of `module` on `inputs` (see the module docstring for what counts),
    with the operations that were skipped; warns once per process about a skipped operation that
    may carry MACs."""
    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    module.eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(module, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_macs)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        count = MacCount(int(analysis.total()), dict(analysis.unsupported_ops()))
    for op in count.uncounted:
        if op not in _WARNED:
            _WARNED.add(op)
            logger.warning(
                "MAC counting: fvcore has no handle for %s (in %s); its MACs are not counted",
                op,
                type(module).__name__,
            )
    return count


def count_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one forward pass (see `count_mac_details` and the module docstring).

    fvcore calls its unit "flops" but counts one fused multiply-add as one, i.e. MACs.
    """
    return count_mac_details(module, inputs).macs


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


#: How a space builds a block: `SearchSpace.build_block`.
BlockBuilder = Callable[[BlockSpec], tuple[nn.Module, tuple[torch.Tensor, ...]]]


def block_mac_count(space_name: str, spec: BlockSpec, build_block: BlockBuilder) -> MacCount:
    """MACs (and skipped operations) of one block of the space `space_name` (built by `build_block`),
    counted once per (space, key) and process."""
    cache_key = (space_name, spec.key)
    with _LOCK:
        if cache_key in _CACHE:
            return _CACHE[cache_key]
    module, inputs = build_block(spec)
    count = count_mac_details(module, inputs)
    with _LOCK:
        _CACHE[cache_key] = count
    return count
