"""What keeps a state dict from loading into a model: missing, unexpected and other-shape keys."""

from __future__ import annotations

from collections.abc import Mapping

import torch

#: Keys named per kind of mismatch before `...`.
SHOWN = 5


def weights_mismatch(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor]) -> str | None:
    """None when `state` has exactly the keys of `expected` (name -> shape) with those shapes, else
    `2 missing: [...]; 1 unexpected: [...]; 1 of another shape: [...]` (the kinds that occur, at most
    `SHOWN` keys each; missing and other-shape keys in `expected`'s order, unexpected ones sorted)."""
    missing = [key for key in expected if key not in state]
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{key} {list(state[key].shape)} (expected {list(shape)})"
        for key, shape in expected.items()
        if key in state and state[key].shape != shape
    ]
    parts = [
        f"{len(keys)} {what}: {keys[:SHOWN]}{' ...' if len(keys) > SHOWN else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
        if keys
    ]
    return "; ".join(parts) or None
