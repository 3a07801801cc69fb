"""The four registries (spaces, strategies, proxies, training tasks) follow the rules of
`search_spaces.Registry`, each through its package's public functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from nas.proxies import UnknownProxyError, get_proxy, list_proxies, register_proxy
from nas.strategies import UnknownStrategyError, list_strategies, register_strategy, strategy_class
from nas.training import TrainingConfigError, register_task, task_class, trainable_spaces
from search_spaces import FieldError, UnknownSpaceError, list_spaces, register_space, space_class


@dataclass
class PublicRegistry:
    kind: str
    register: Callable[[Any], Any]
    lookup: Callable[[str], Any]
    names: Callable[[], list[str]]
    error: type[FieldError]
    field: str
    message: str


REGISTRIES = [
    PublicRegistry(
        "search space", register_space, space_class, list_spaces, UnknownSpaceError, "space",
        "unknown search space 'nope'; known spaces: ",
    ),
    PublicRegistry(
        "strategy", register_strategy, strategy_class, list_strategies, UnknownStrategyError, "strategy",
        "unknown strategy 'nope'; known strategies: ",
    ),
    PublicRegistry(
        "proxy", register_proxy, lambda name: type(get_proxy(name)), list_proxies, UnknownProxyError, "proxy",
        "unknown proxy 'nope'; known proxies: ",
    ),
    PublicRegistry(
        "training task", register_task, task_class, trainable_spaces, TrainingConfigError, "space",
        "no training task for space 'nope'; spaces that can be trained: ",
    ),
]  # fmt: skip


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.kind)
def test_registry_rules(registry: PublicRegistry) -> None:
    names = registry.names()
    assert names and names == sorted(names)
    for name in names:
        registered = registry.lookup(name)
        # Registering the same class again changes nothing.
        assert registry.register(registered) is registered
        assert registry.lookup(name) is registered

    # A different class under a taken name is refused, and the registry is unchanged.
    first = registry.lookup(names[0])
    impostor = type(f"Impostor{first.__name__}", (first,), {})
    with pytest.raises(ValueError, match=f"{registry.kind} '{names[0]}' is already registered by"):
        registry.register(impostor)
    assert registry.lookup(names[0]) is first
    assert registry.names() == names

    # An unknown name is the registry's own error, naming the kind and the known names, with the
    # `field` and `allowed` the API answers 422 with.
    with pytest.raises(registry.error) as info:
        registry.lookup("nope")
    error = info.value
    assert isinstance(error, FieldError)
    assert str(error) == f"{registry.message}{names}"
    assert error.field == registry.field and error.allowed == names
    assert error.to_dict() == {"field": registry.field, "message": str(error), "allowed": names}
