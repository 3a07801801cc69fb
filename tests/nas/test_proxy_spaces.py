"""Every registered space with a task: each of its proxies gives a finite, repeatable value on a small
subnet at small options (the registry is the test matrix: a new space is covered once its small
options are in `nas_testing.SMALL_OPTIONS`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nas_testing import SMALL_OPTIONS

from nas.proxies import ProxyContext, available_proxies, get_proxy
from search_spaces import get_space, list_spaces

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("space_name", list_spaces())
def test_every_proxy_of_every_space_is_finite_and_repeatable(space_name: str) -> None:
    if space_name not in SMALL_OPTIONS:
        pytest.skip(f"no small options for space {space_name!r} in SMALL_OPTIONS of nas_testing.py")
    space = get_space(space_name, **SMALL_OPTIONS[space_name])
    offered = available_proxies(space, supernet=False)
    assert {"params", "macs"} <= set(offered)
    config = space.sample(np.random.default_rng(1))
    first = {name: get_proxy(name).compute(ProxyContext(space), config) for name in offered}
    assert all(math.isfinite(v) for v in first.values()), first
    again = ProxyContext(space)
    assert {name: get_proxy(name).compute(again, config) for name in ("naswot", "synflow")} == {
        name: first[name] for name in ("naswot", "synflow")
    }
