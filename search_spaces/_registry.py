"""Registry of search spaces, timm-style: registering a space puts it into the parametrized tests."""

from __future__ import annotations

from typing import Any

from search_spaces._base import SearchSpace, UnknownSpaceError

_SPACES: dict[str, type[SearchSpace]] = {}


def register_space(cls: type[SearchSpace]) -> type[SearchSpace]:
    """Class decorator: make a space available by its `name` (to the API, the CLI and the tests)."""
    name = cls.name
    if name in _SPACES and _SPACES[name] is not cls:
        raise ValueError(f"search space {name!r} is already registered by {_SPACES[name].__qualname__}")
    _SPACES[name] = cls
    return cls


def list_spaces() -> list[str]:
    return sorted(_SPACES)


def space_class(name: str) -> type[SearchSpace]:
    try:
        return _SPACES[name]
    except KeyError:
        raise UnknownSpaceError(
            f"unknown search space {name!r}; known spaces: {list_spaces()}",
            field="space",
            allowed=list_spaces(),
        ) from None


def get_space(name: str, **options: Any) -> SearchSpace:
    """An instance of the space `name` bound to `options` (validated)."""
    return space_class(name)(**options)
