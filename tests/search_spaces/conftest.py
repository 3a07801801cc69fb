"""Shared set-up of the search-space tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Run these tests' small models on one intra-op thread, restoring the setting afterwards.

    On a few shared cores, extra threads mostly wait on each other; other directories (latency
    measurements) keep their own thread settings.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
