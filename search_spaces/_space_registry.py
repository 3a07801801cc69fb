"""The registry of search spaces, timm-style: registering a space puts it into the parametrized tests."""

from __future__ import annotations

from typing import Any

from search_spaces._base import SearchSpace, UnknownSpaceError
from search_spaces.registry import Registry

SPACES: Registry[type[SearchSpace]] = Registry(
    "search space", field="space", error=UnknownSpaceError, known="known spaces"
)


def register_space(cls: type[SearchSpace]) -> type[SearchSpace]:
    """Class decorator: make a space available by its `name` (to the API, the CLI and the tests)."""
    return SPACES.register(cls)


def list_spaces() -> list[str]:
    return SPACES.names()


def space_class(name: str) -> type[SearchSpace]:
    """The class of the space `name`; `UnknownSpaceError` naming the known spaces if there is none."""
    return SPACES.get(name)


def get_space(name: str, **options: Any) -> SearchSpace:
    """An instance of the space `name` bound to `options` (validated)."""
    return space_class(name)(**options)
