"""`BlockSpec`: one measurable block of a subnet, named by a canonical key.

A subnet is the sequence of its blocks and nothing hidden, so a latency lookup table indexed by block
keys can price any subnet of a space by summing. The key is the contract between search spaces and
device farms: it must be stable across runs, processes and machines, and readable by people.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

ArgValue = int | float | str

_KEY_SEP = "|"
_ARG_SEP = "="


def _format_value(value: ArgValue) -> str:
    if isinstance(value, bool):
        raise TypeError("BlockSpec args do not take bools; use 0/1 ints so keys stay unambiguous")
    if isinstance(value, float):
        # repr gives the shortest string that round-trips, so keys are stable.
        text = repr(value)
        return text
    text = str(value)
    if _KEY_SEP in text or _ARG_SEP in text or not text:
        raise ValueError(f"BlockSpec arg value {value!r} may not be empty or contain '|' or '='")
    return text


def _parse_value(text: str) -> ArgValue:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class BlockSpec:
    """One block of a subnet as a LUT sees it: a `kind` plus its arguments.

    `kind` is `<space prefix>.<block type>` (e.g. `effv2.ffn`). `args` holds everything that
    changes the block's cost, including the input shape (`hw=14x14`, `batch=1`) and `dtype`.
    Two specs with the same key build identical modules (up to random init).

    `params` is the block's parameter count (not part of the key: it follows from the args); the
    parameters of a subnet's blocks add up to the subnet's.
    """

    kind: str
    args: tuple[tuple[str, ArgValue], ...]
    params: int = field(default=0, compare=False)

    @classmethod
    def make(cls, kind: str, params: int = 0, **args: ArgValue) -> BlockSpec:
        """Build a spec from keyword args (sorted into canonical order)."""
        if not kind or _KEY_SEP in kind or _ARG_SEP in kind:
            raise ValueError(f"invalid block kind {kind!r}")
        for name, value in args.items():
            _format_value(value)
            if _KEY_SEP in name or _ARG_SEP in name:
                raise ValueError(f"invalid block arg name {name!r}")
        return cls(kind=kind, args=tuple(sorted(args.items())), params=params)

    @property
    def key(self) -> str:
        """Canonical key, e.g. `effv2.ffn|batch=1|dim=96|dtype=fp32|hw=14x14|ratio=3`."""
        parts = [self.kind] + [f"{name}{_ARG_SEP}{_format_value(value)}" for name, value in self.args]
        return _KEY_SEP.join(parts)

    @property
    def key_hash(self) -> str:
        """Stable 16-hex-digit hash of the key (sha256 prefix)."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:16]

    @property
    def arg_dict(self) -> dict[str, ArgValue]:
        return dict(self.args)

    def __getitem__(self, name: str) -> Any:
        return self.arg_dict[name]

    @classmethod
    def from_key(cls, key: str) -> BlockSpec:
        """Parse a key back into a spec (without `params`, which the space recomputes)."""
        kind, *parts = key.split(_KEY_SEP)
        args: dict[str, ArgValue] = {}
        for part in parts:
            name, sep, text = part.partition(_ARG_SEP)
            if not sep or not name:
                raise ValueError(f"malformed block key {key!r}: segment {part!r} is not name=value")
            args[name] = _parse_value(text)
        return cls.make(kind, **args)

    def __str__(self) -> str:
        return self.key
