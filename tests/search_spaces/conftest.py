"""Shared set-up of the search-space tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every search-space test runs its small models on one intra-op thread (see `one_torch_thread`)."""
