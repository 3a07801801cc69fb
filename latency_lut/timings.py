"""How a table entry was timed, and where each kind of entry lives in a device's table.

A block can be timed three ways (`MeasurementBackend.measure*`), and a device's table may hold all
three for the same block, under distinct keys:

- `isolated` (the block key itself, e.g. `effv2.ffn|...|ratio=3`): the block alone, again and again;
  its weights stay in the caches, as they never do in a network;
- `in_context` (`ctx@<block key>`): the block timed right after the block before it in a network
  (its *predecessor*), so it meets the caches as a network leaves them;
- `call_overhead` (`call@<block key>`): a module that passes the block's inputs through: one call of
  the runtime without the block's work (a network pays it once, a sum of isolated blocks once per
  block).

Every entry's provenance names its timing (`provenance["timing"]`), its clock and, for in-context
entries, the predecessor's key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from search_spaces import BlockSpec, SearchSpace

Timing = Literal["isolated", "in_context", "call_overhead"]
TIMINGS: tuple[Timing, ...] = ("isolated", "in_context", "call_overhead")
_PREFIXES: dict[str, str] = {"in_context": "ctx@", "call_overhead": "call@"}
#: Random subnets drawn at most when looking for predecessors.
_PREDECESSOR_DRAWS = 400


def check_timings(timings: Iterable[str]) -> tuple[Timing, ...]:
    """The timings, validated (a `ValueError` naming the allowed ones otherwise), without repeats."""
    chosen = tuple(dict.fromkeys(timings))
    bad = [t for t in chosen if t not in TIMINGS]
    if bad or not chosen:
        raise ValueError(f"timings must be among {list(TIMINGS)}, got {list(timings)}")
    return chosen  # type: ignore[return-value]


def timing_key(block_key: str, timing: str) -> str:
    """The table key of `block_key`'s entry of `timing`."""
    check_timings([timing])
    return _PREFIXES.get(timing, "") + block_key


def split_timing_key(key: str) -> tuple[Timing, str]:
    """(timing, block key) of a table key."""
    for timing, prefix in _PREFIXES.items():
        if key.startswith(prefix):
            return timing, key[len(prefix) :]  # type: ignore[return-value]
    return "isolated", key


def predecessors(
    space: SearchSpace,
    specs: Sequence[BlockSpec],
    configs: Iterable[Mapping[str, Any]] | None = None,
    *,
    seed: int = 0,
) -> dict[str, BlockSpec | None]:
    """For each block, the block before it in a subnet that contains it (None for a first block).

    The subnets are `configs` when given (the subnets a work list is for), then random subnets of the
    space until every block has been seen or the draws run out; a block never seen in a subnet gets
    the block before it in `specs` (same order as the space lists them). What an in-context timing
    needs is a realistic neighbour, not the only possible one: a block follows different blocks in
    different subnets.
    """
    wanted = {spec.key for spec in specs}
    found: dict[str, BlockSpec | None] = {}

    def walk(config: Mapping[str, Any]) -> None:
        blocks = space.blocks(space.canonicalize(config))
        for i, block in enumerate(blocks):
            if block.key in wanted and block.key not in found:
                found[block.key] = blocks[i - 1] if i > 0 else None

    for config in configs or ():
        walk(config)
    rng = np.random.default_rng(seed)
    draws = 0
    while len(found) < len(wanted) and draws < _PREDECESSOR_DRAWS:
        walk(space.sample(rng))
        draws += 1
    out: dict[str, BlockSpec | None] = {}
    for i, spec in enumerate(specs):
        out[spec.key] = found[spec.key] if spec.key in found else (specs[i - 1] if i > 0 else None)
    return out
