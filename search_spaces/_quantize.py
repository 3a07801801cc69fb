"""Weight quantization as BitsFusion (arXiv 2406.04333) counts and applies it.

An n-bit layer (n < 16) stores, per output channel, a 16-bit scale s and integer codes q in
[-2^(n-1), 2^(n-1)]: 2^n + 1 symmetric levels (n = 1 is ternary: -s, 0, s), so a weight costs
log2(2^n + 1) bits as the paper counts it. The scale is max|w| / 2^(n-1) of the channel, rounded to
float16 (what is stored), so the fake-quantized weight `q * s` equals what the packed form decodes
to, bit for bit. 16 bits means the layer is not quantized (float16 storage, no scales).

`assign_bits` is the paper's assignment: each layer gets the smallest width whose sensitivity is
under a threshold, else the fallback width; the threshold is the one that meets a target mean of
bits per weight or a size budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

#: The widths a quantizable layer may take (16: not quantized).
BIT_OPTIONS: tuple[int, ...] = (1, 2, 3, 4, 8, 16)
#: The widths the paper's assignment chooses from, and the one a layer gets when none is good enough.
ASSIGNED_BITS: tuple[int, ...] = (1, 2, 3)
FALLBACK_BITS = 4
#: Exponent of the parameter-count weighting of the sensitivity, S(i, b) = M(i, b) * N_i^(-ETA).
SENSITIVITY_ETA = 0.3
SCALE_BITS = 16
UNQUANTIZED = 16


def counted_bits(bits: int) -> float:
    """Bits per weight of an n-bit layer as the paper counts it: log2(2^n + 1); 16 for float16."""
    return float(UNQUANTIZED) if bits >= UNQUANTIZED else math.log2(2**bits + 1)


def layer_bits(weights: int, channels: int, bits: int) -> float:
    """Storage of one layer's weight in bits: its weights at `counted_bits` plus 16-bit channel scales."""
    scales = 0 if bits >= UNQUANTIZED else channels * SCALE_BITS
    return weights * counted_bits(bits) + scales


def _levels(bits: int) -> int:
    return 2 ** (bits - 1)


def channel_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scales (float16 values, as float32) of `weight` at `bits`."""
    flat = weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1).float()
    scale = (flat / _levels(bits)).half().float()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_codes(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes in [-2^(n-1), 2^(n-1)] (int16) and the channel scales of `weight` at `bits`."""
    scale = channel_scales(weight, bits)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    limit = _levels(bits)
    codes = torch.clamp(torch.round(weight.detach().float() / scale.view(shape)), -limit, limit)
    return codes.to(torch.int16), scale


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """`weight` quantized to `bits` and decoded again (same dtype and shape); 16 bits: unchanged."""
    if bits >= UNQUANTIZED or weight.device.type == "meta":
        return weight
    codes, scale = quantize_codes(weight, bits)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (codes.float() * scale.view(shape)).to(weight.dtype)


def pack_codes(codes: torch.Tensor, bits: int) -> bytes:
    """Codes of an n-bit layer packed at n + 1 bits each (the 2^n + 1 levels need that many)."""
    width = bits + 1
    unsigned = (codes.reshape(-1).to(torch.int32) + _levels(bits)).numpy().astype(np.uint32)
    planes = (unsigned[:, None] >> np.arange(width, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_codes(data: bytes, bits: int, shape: Sequence[int]) -> torch.Tensor:
    """The inverse of `pack_codes`: int16 codes of `shape`."""
    width, count = bits + 1, math.prod(shape)
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * width]
    unsigned = (planes.reshape(count, width).astype(np.int32) << np.arange(width)).sum(axis=1)
    return torch.from_numpy((unsigned - _levels(bits)).astype(np.int16)).reshape(tuple(shape))


def mean_counted_bits(bits: Mapping[str, int], weights: Mapping[str, int]) -> float:
    """Mean bits per weight (as `counted_bits` counts them) over the layers of `bits`."""
    total = sum(weights[name] for name in bits)
    return sum(weights[name] * counted_bits(b) for name, b in bits.items()) / total


def _assignment(
    sensitivity: Mapping[str, Mapping[Any, float]], fallback: Mapping[str, Any], threshold: float
) -> dict[str, Any]:
    return {
        name: next((option for option, s in by_option.items() if s < threshold), fallback[name])
        for name, by_option in sensitivity.items()
    }


def assign_bits(
    sensitivity: Mapping[str, Mapping[Any, float]],
    cost: Mapping[str, Mapping[Any, float]],
    budget: float,
    fallback: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], float]:
    """The paper's assignment under a budget, and its threshold.

    `sensitivity[layer]` maps the widths tried, smallest first (by default `ASSIGNED_BITS`), to
    S(layer, b); a layer gets the first width whose sensitivity is under the threshold, else
    `fallback[layer]` (by default `FALLBACK_BITS`). `cost[layer][b]` is what the layer costs at width
    b (bits of storage, or weights x counted bits for a mean) for every width it may get; the
    assignment's cost is the sum. A larger threshold gives every layer the same or fewer bits, so the
    cost falls as the threshold grows: the threshold returned is the smallest candidate (an observed
    sensitivity, or above all of them) whose cost is within `budget`. Layers whose sensitivity equals
    the next smaller candidate then get their wider width one by one, most sensitive first, while
    the total stays within `budget` (identical layers share a sensitivity, so a threshold alone
    moves in coarse steps). When no threshold meets the budget, every layer gets its smallest width.
    """
    fallback = fallback if fallback is not None else dict.fromkeys(sensitivity, FALLBACK_BITS)
    candidates = sorted({s for by_option in sensitivity.values() for s in by_option.values()})
    candidates.append(math.inf)

    def total(assigned: Mapping[str, Any]) -> float:
        return sum(cost[name][b] for name, b in assigned.items())

    low, high = 0, len(candidates) - 1
    while low < high:
        middle = (low + high) // 2
        if total(_assignment(sensitivity, fallback, candidates[middle])) <= budget:
            high = middle
        else:
            low = middle + 1
    threshold = candidates[low]
    assigned = _assignment(sensitivity, fallback, threshold)
    if low > 0:
        wider = _assignment(sensitivity, fallback, candidates[low - 1])
        spent = total(assigned)
        gaining = [name for name in assigned if wider[name] != assigned[name]]
        gaining.sort(key=lambda name: -sensitivity[name][assigned[name]])
        for name in gaining:
            extra = cost[name][wider[name]] - cost[name][assigned[name]]
            if spent + extra <= budget:
                assigned[name] = wider[name]
                spent += extra
    return assigned, threshold


__all__ = [
    "ASSIGNED_BITS",
    "BIT_OPTIONS",
    "FALLBACK_BITS",
    "SENSITIVITY_ETA",
    "UNQUANTIZED",
    "assign_bits",
    "channel_scales",
    "counted_bits",
    "fake_quantize",
    "layer_bits",
    "mean_counted_bits",
    "pack_codes",
    "quantize_codes",
    "unpack_codes",
]
