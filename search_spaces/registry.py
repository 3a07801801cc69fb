"""`Registry`: objects registered by name, one set of rules for spaces, strategies, proxies and tasks.

timm-style: an implementation registers itself with a decorator where it is defined, and the registry
drives the API, the CLI and the parametrized tests. The rules, the same for every registry:

- `register(obj)` (a decorator) files `obj` under its name; registering a *different* object under a
  taken name raises `ValueError`, registering the same object again changes nothing (so importing a
  module twice is harmless);
- `get(name)` returns the object; an unknown name raises the registry's `error`, a `FieldError` whose
  message names the kind and the known names and whose `field` and `allowed` (the known names) let
  the API answer 422 with `{field, message, allowed}`;
- `names()` lists the names, sorted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from search_spaces.errors import FieldError

T = TypeVar("T")


def _name_attribute(obj: Any) -> str:
    return obj.name


class Registry(Generic[T]):
    """Objects of one `kind` by name (see the module docstring for the rules).

    `key` gives an object's name (default: its `name` attribute). An unknown name raises
    `error(message, field=field, allowed=names())`; the message is `unknown` then `known`, formatted
    with `kind` and `name` (default: "unknown search space 'x'; known search spaces: [...]").
    """

    def __init__(
        self,
        kind: str,
        *,
        field: str,
        error: type[FieldError],
        key: Callable[[T], str] = _name_attribute,
        unknown: str = "unknown {kind} {name!r}",
        known: str = "known {kind}s",
    ):
        self.kind = kind
        self.field = field
        self.error = error
        self._key = key
        self._unknown = unknown
        self._known = known
        self._entries: dict[str, T] = {}

    def register(self, obj: T) -> T:
        """File `obj` under its name and return it (usable as a class decorator)."""
        name = self._key(obj)
        present = self._entries.get(name)
        if present is not None and present is not obj:
            by = getattr(present, "__qualname__", repr(present))
            raise ValueError(f"{self.kind} {name!r} is already registered by {by}")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered as `name`; the registry's `error` if there is none."""
        try:
            return self._entries[name]
        except KeyError:
            known = self.names()
            unknown = self._unknown.format(kind=self.kind, name=name)
            label = self._known.format(kind=self.kind)
            raise self.error(f"{unknown}; {label}: {known}", field=self.field, allowed=known) from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
