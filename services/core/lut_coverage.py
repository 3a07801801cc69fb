"""LUT coverage for the devices page: how many of the blocks a space can contain each device has timed."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from latency_lut import LatencyTable, known_devices
from search_spaces import get_space, list_spaces


@functools.lru_cache(maxsize=64)
def _space_block_keys(space: str, options_json: str) -> frozenset[str]:
    # Enumerating a space's blocks builds no module but still takes up to a second (UNet): cached,
    # since it depends only on the space and its options.
    return frozenset(spec.key for spec in get_space(space, **json.loads(options_json)).all_blocks())


def space_targets(specs: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every registered space at its default options, then each (space, options) that a stored search
    spec uses, without repeats, in that order."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for name in list_spaces():
        seen[(name, "{}")] = {}
    registered = set(list_spaces())
    for spec in specs:
        name = spec.get("space")
        options = dict(spec.get("space_options") or {})
        if name in registered:
            seen.setdefault((name, json.dumps(options, sort_keys=True)), options)
    return [(name, options) for (name, _), options in seen.items()]


def coverage(table: LatencyTable, targets: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (device, space, options): entries present out of the space's distinct blocks.

    Options that a space refuses (a spec stored before the space changed) give a row with `error`
    instead of counts.
    """
    devices = known_devices(table.devices())
    keys = {device: set(table.keys(device)) for device in devices}
    rows = []
    for space, options in targets:
        try:
            blocks = _space_block_keys(space, json.dumps(dict(options), sort_keys=True))
            error = None
        except ValueError as exc:
            blocks, error = frozenset(), str(exc)
        for device in devices:
            covered = len(blocks & keys[device])
            rows.append(
                {
                    "device": device,
                    "space": space,
                    "options": dict(options),
                    "blocks": len(blocks),
                    "covered": covered,
                    "share": covered / len(blocks) if blocks else 0.0,
                    "error": error,
                }
            )
    return rows
