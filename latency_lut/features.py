"""Cost features of a block, the inputs of the fallback model: MACs, parameters and bytes moved."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from search_spaces import BlockSpec, SearchSpace, count_macs, count_params

_CACHE: dict[tuple[str, str], BlockFeatures] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class BlockFeatures:
    """What a block costs before it runs anywhere.

    `bytes_moved` is the least memory traffic of one forward pass: the weights read once, the inputs
    read once and the outputs written once.
    """

    macs: int
    params: int
    bytes_moved: int

    def as_row(self) -> tuple[float, float, float]:
        return float(self.macs), float(self.params), float(self.bytes_moved)


def _tensor_bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    return 0


def block_features(space: SearchSpace, spec: BlockSpec | str) -> BlockFeatures:
    """The features of a block (or of a key), built with `space.build_block`; cached per process
    by (space name, key), since a key fixes everything that changes a block's cost."""
    spec = BlockSpec.from_key(spec) if isinstance(spec, str) else spec
    cache_key = (space.name, spec.key)
    with _LOCK:
        cached = _CACHE.get(cache_key)
    if cached is not None:
        return cached
    module, inputs = space.build_block(spec)
    module.eval()
    # One thread: these forward passes are tiny, and a busy host starves a thread pool's workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            output = module(*inputs)
        macs = count_macs(module, tuple(inputs))
    finally:
        torch.set_num_threads(threads)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    weight_bytes += sum(b.numel() * b.element_size() for b in module.buffers())
    features = BlockFeatures(
        macs=macs,
        params=count_params(module),
        bytes_moved=weight_bytes + _tensor_bytes(inputs) + _tensor_bytes(output),
    )
    with _LOCK:
        _CACHE[cache_key] = features
    return features
