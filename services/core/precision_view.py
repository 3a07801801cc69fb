"""The readable view of a bit-width config (hundreds of per-layer widths) that the API, the CLI and
the dashboard show: `search_spaces.precision.MixedPrecisionSpace.precision_view`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search_spaces import SearchSpace
from search_spaces.precision import MixedPrecisionSpace


def precision_view(space: SearchSpace, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config per stage, as a histogram of widths and layer by layer; None for a space without
    per-layer bit widths."""
    if not isinstance(space, MixedPrecisionSpace):
        return None
    return space.precision_view(config)


__all__ = ["precision_view"]
