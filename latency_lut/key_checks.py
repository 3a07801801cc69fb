"""Which table keys can exist: a key names a block of a registered space (with a timing prefix, see
`latency_lut.timings`), and at a space's options exactly the blocks the space enumerates.

Uploads of samples (which name their space and options) accept only the exact keys of that space;
table files accept, row by row, the exact keys of the space and options the row's provenance names
(what a farm's upload recorded), and otherwise keys whose kind and argument names are those of a
registered space's blocks. `MAX_KEY_CHARS` bounds every key on every backend.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latency_lut.timings import split_timing_key
from search_spaces import BlockSpec, SpaceError, get_space, list_spaces

#: The longest key a table holds (the width of the key column; the same limit on SQLite).
MAX_KEY_CHARS = 1024


@dataclass(frozen=True)
class KeyProblem:
    """Why a key cannot be in a table, and what would be accepted."""

    message: str
    allowed: Any = None


@dataclass(frozen=True)
class SpaceBlocks:
    """A space's block keys at some options, and per kind the argument names its blocks have."""

    space: str
    options: dict[str, Any]
    keys: frozenset[str]
    signatures: dict[str, frozenset[frozenset[str]]]


@functools.lru_cache(maxsize=64)
def _space_blocks(space_name: str, options_json: str) -> SpaceBlocks:
    space = get_space(space_name, **json.loads(options_json))
    signatures: dict[str, set[frozenset[str]]] = {}
    keys = set()
    for spec in space.all_blocks():
        keys.add(spec.key)
        signatures.setdefault(spec.kind, set()).add(frozenset(name for name, _ in spec.args))
    return SpaceBlocks(
        space.name,
        dict(space.options),
        frozenset(keys),
        {kind: frozenset(names) for kind, names in signatures.items()},
    )


def space_blocks(space_name: str, options: Mapping[str, Any]) -> SpaceBlocks:
    """The blocks of `space_name` at `options` (cached); raises `SpaceError` for an unknown space or
    bad options."""
    return _space_blocks(space_name, json.dumps(dict(options), sort_keys=True))


@functools.lru_cache(maxsize=1)
def _registered_signatures() -> dict[str, frozenset[frozenset[str]]]:
    """kind -> argument-name sets, over every registered space at its default options."""
    out: dict[str, set[frozenset[str]]] = {}
    for name in list_spaces():
        for kind, names in space_blocks(name, {}).signatures.items():
            out.setdefault(kind, set()).update(names)
    return {kind: frozenset(names) for kind, names in out.items()}


def _parsed(key: str) -> tuple[BlockSpec | None, KeyProblem | None]:
    if not key or len(key) > MAX_KEY_CHARS:
        return None, KeyProblem(
            f"key of {len(key)} characters; keys have 1 to {MAX_KEY_CHARS}",
            f"1 to {MAX_KEY_CHARS} characters",
        )
    if any(ord(c) < 32 or c == "\x7f" for c in key):
        return None, KeyProblem(f"key {key[:80]!r} holds control characters", "kind|name=value|...")
    block_key = split_timing_key(key)[1]
    try:
        spec = BlockSpec.from_key(block_key)
    except (ValueError, TypeError) as exc:
        return None, KeyProblem(str(exc), "[ctx@|call@]kind|name=value|...")
    if spec.key != block_key:
        return None, KeyProblem(
            f"key {key[:80]!r} is not in canonical form (arguments sorted by name): {spec.key!r}", spec.key
        )
    return spec, None


def key_problem(key: str, space: SpaceBlocks | None = None) -> KeyProblem | None:
    """Why `key` cannot be a table key (of `space`, when given), or None when it can.

    With a space: the block must be one the space enumerates at its options. Without: the key's kind
    and argument names must be those of a block of a registered space.
    """
    spec, problem = _parsed(key)
    if problem is not None or spec is None:
        return problem
    signatures = space.signatures if space is not None else _registered_signatures()
    where = f"space {space.space!r}" if space is not None else "any registered space"
    if spec.kind not in signatures:
        return KeyProblem(
            f"unknown key {key[:120]!r}: kind {spec.kind!r} is not a block kind of {where}",
            sorted(signatures),
        )
    names = frozenset(name for name, _ in spec.args)
    if names not in signatures[spec.kind]:
        allowed = sorted(",".join(sorted(s)) for s in signatures[spec.kind])
        return KeyProblem(
            f"unknown key {key[:120]!r}: a {spec.kind} block of {where} takes the arguments {allowed[0]}",
            allowed,
        )
    if space is not None and spec.key not in space.keys:
        return KeyProblem(
            f"unknown key {key[:120]!r}: no block of space {space.space!r} at its options {space.options} "
            "has these arguments (the device's work list names the keys a space needs)",
            f"the block keys of space {space.space!r} at options {space.options}",
        )
    return None


def provenance_space(provenance: Mapping[str, Any]) -> SpaceBlocks | None:
    """The space and options a provenance names (`space`, `space_options`, as uploads record them),
    None when it names none or names one that does not exist."""
    name, options = provenance.get("space"), provenance.get("space_options", {})
    if not isinstance(name, str) or not isinstance(options, dict):
        return None
    try:
        return space_blocks(name, options)
    except (SpaceError, TypeError, ValueError):
        return None


def table_row_problem(key: str, provenance: Mapping[str, Any]) -> str | None:
    """`read_entries`' key check for files from outside: the key against the space its provenance
    names, else against every registered space (see the module docstring)."""
    problem = key_problem(key, provenance_space(provenance))
    return None if problem is None else problem.message
