"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's small models on one intra-op thread, restoring the setting afterwards.

    On a few shared cores, extra threads mostly wait on each other. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`; latency measurements keep their own
    thread settings.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Settings are read from the environment once per process (`get_settings`); a test that changes
    the environment (monkeypatch.setenv) gets them read again, and the next test starts clean."""
    from services.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
