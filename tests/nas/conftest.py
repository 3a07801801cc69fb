"""Fixtures of the nas tests: the tiny space, its synthetic LUT, a store, a real local Ray."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nas_testing import DEVICE, TinySpace, synthetic_lut

from nas import MemoryTrialStore
from search_spaces import SearchSpace, list_spaces


@pytest.fixture
def tiny_space() -> TinySpace:
    return TinySpace()


@pytest.fixture
def tiny_luts(tiny_space: TinySpace) -> dict[str, dict[str, float]]:
    return {DEVICE: synthetic_lut(tiny_space)}


@pytest.fixture
def store() -> MemoryTrialStore:
    return MemoryTrialStore()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray with 2 CPUs for the whole session."""
    import ray

    from nas.runner import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def effv2_space() -> SearchSpace:
    """The EfficientFormerV2 space at a tiny resolution (Ray workers import spaces by name)."""
    from search_spaces import get_space

    if "efficientformerv2" not in list_spaces():
        pytest.skip(
            "search space 'efficientformerv2' is not registered yet (search_spaces/efficientformerv2.py)"
        )
    return get_space("efficientformerv2", resolution=32, num_classes=10)
