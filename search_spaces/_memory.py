"""Peak activation memory of a diffusion subnet, measured block by block on the meta device.

`block_memory(module, inputs)` runs one block on meta tensors (exact shapes, no memory, no compute)
under a dispatch mode that follows every tensor storage the block allocates and when its last tensor
dies. Its peak is the most bytes alive at once during the call, the block's output included and its
inputs and parameters excluded. Attention is measured as its reference computation in the tensors'
own dtype (scores, then probabilities, then their product with the values), which materialises the
score and probability matrices of every head, as mobile runtimes do; fused kernels (flash,
memory-efficient) would need less.

`compose_peak` turns the blocks' figures into the subnet's peak: while a block runs, the tensors the
runner holds (the running tensor, the time embedding, the skip tensors kept for the up path and the
subnet's inputs) are alive besides what the block allocates. The result equals what the same
tracking measures on the whole subnet, plus its inputs (the tests check this).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from search_spaces._unet_modules import Step


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that tensors created under it keep alive, and their peak.

    Storages of the `external` tensors (inputs, parameters) are not counted, views of them included.
    """

    def __init__(self, external: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}
        self._external = {tensor.untyped_storage()._cdata for tensor in external}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._external:
            return
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [storage.nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None, dropout_p: float = 0.0,
    is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
) -> torch.Tensor:  # fmt: skip
    """`F.scaled_dot_product_attention` without mask or dropout, computed step by step in the inputs'
    dtype (PyTorch's own math kernel computes half precision in float32 on the CPU)."""
    if attn_mask is not None or dropout_p or is_causal or enable_gqa:
        raise NotImplementedError("memory measurement covers plain attention only")
    scores = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
    return scores.softmax(dim=-1) @ v


class ReferenceAttention(TorchFunctionMode):
    """Runs `F.scaled_dot_product_attention` as `reference_attention`."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is F.scaled_dot_product_attention:
            return reference_attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def measure_call(function: Any, *inputs: Any) -> tuple[Any, int]:
    """`function(*inputs)` without gradients under `LiveBytes`: its output and peak bytes, not
    counting the inputs nor, when `function` is a module, its parameters and buffers."""
    external = [value for value in inputs if isinstance(value, torch.Tensor)]
    if isinstance(function, nn.Module):
        external += [*function.parameters(), *function.buffers()]
    with torch.no_grad(), ReferenceAttention(), LiveBytes(external) as tracker:
        out = function(*inputs)
    return out, tracker.peak


@dataclass(frozen=True)
class BlockMemory:
    """What one block allocates: its peak (output included) and its output."""

    peak: int
    output: int


def block_memory(module: nn.Module, inputs: Sequence[torch.Tensor]) -> BlockMemory:
    """Peak and output bytes of one block called on `inputs` (best on the meta device)."""
    out, peak = measure_call(module.eval(), *inputs)
    return BlockMemory(peak=peak, output=out.untyped_storage().nbytes())


def compose_peak(steps: Sequence[Step], blocks: Sequence[BlockMemory], resident: int) -> int:
    """Peak bytes of running `blocks` as `run_blocks` does, with `resident` bytes (the inputs and
    anything else alive throughout) held all along."""
    sizes: dict[int, int] = {0: 0}  # tensor id -> bytes; 0 is the sample, counted in `resident`
    x, emb = 0, -1
    skips: list[int] = []
    peak = 0
    for number, (step, block) in enumerate(zip(steps, blocks, strict=True), start=1):
        held = {x, emb, *skips} - {-1}
        peak = max(peak, resident + sum(sizes[t] for t in held) + block.peak)
        sizes[number] = block.output
        if step.role == "time":
            emb = number
            continue
        if step.pop:
            skips.pop()
        x = number
        if step.push:
            skips.append(x)
    return peak
