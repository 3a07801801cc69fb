"""Stepwise strategies over real HTTP: the submit answer warns when the budget cannot reach the
strategy's latency target (with the budget that would), the search keeps the warning, and
`GET /v1/searches/{id}/steps` serves the step log in the list envelope."""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from svc_helpers import SMALL_SPEC, throwaway_server

from search_spaces import get_space

SPACE = "efficientformerv2"
OPTIONS = {"resolution": 32, "num_classes": 10}
DEVICE = "steps-farm"
LATENCY = f"latency:{DEVICE}"


def block_ms(params: int) -> float:
    """A made-up latency that grows with a block's size, so every slimming action saves time."""
    return 0.01 + params / 1e5


@pytest.fixture(scope="module")
def http(tmp_path_factory) -> Iterator[httpx.Client]:
    """A server without a scheduler (searches stay queued) whose device `steps-farm` has a table entry
    for every block of the space, uploaded as a farm would."""
    with (
        throwaway_server(tmp_path_factory.mktemp("steps"), auth_disabled=True) as live,
        httpx.Client(base_url=live.url, timeout=60) as client,
    ):
        register = {"name": DEVICE, "runtime": "onnxruntime", "hardware": "test cpu"}
        assert client.post("/v1/devices", json=register).status_code == 201
        rows = [
            {"key": spec.key, "samples_ms": [block_ms(spec.params)] * 3}
            for spec in get_space(SPACE, **OPTIONS).all_blocks()
        ]
        body = {
            "run_id": uuid.uuid4().hex,
            "space": SPACE,
            "space_options": OPTIONS,
            "provenance": {"backend": "onnxruntime-cpu", "runtime": "onnxruntime"},
            "measurements": rows,
        }
        uploaded = client.post(f"/v1/devices/{DEVICE}/measurements", json=body)
        assert uploaded.status_code == 201, uploaded.text
        yield client


def target_ms() -> float:
    """70% of the largest subnet's latency: several slimming steps away."""
    space = get_space(SPACE, **OPTIONS)
    return round(0.7 * sum(block_ms(b.params) for b in space.blocks(space.largest())), 3)


def submit(http: httpx.Client, trials: int, **fields) -> dict:
    body = copy.deepcopy(SMALL_SPEC)
    body.update(
        objectives=[LATENCY, "params", "proxy:params"],
        strategy="slimming",
        strategy_params={"target_ms": target_ms()},
        budget={"trials": trials, "parallelism": 1},
    )
    body.update(fields)
    created = http.post("/v1/searches", json=body)
    assert created.status_code == 202, created.text
    return created.json()


def test_a_budget_short_of_the_target_is_warned_with_the_budget_that_reaches_it(http: httpx.Client) -> None:
    created = submit(http, 60)
    (warning,) = created["warnings"]
    found = re.search(r"budget 60 trials buys about (\d+) steps? of (\d+) evaluations", warning)
    assert found, warning
    bought, per_step = int(found[1]), int(found[2])
    assert bought == (60 - 1) // per_step >= 1
    assert f"latency target of {target_ms():g} ms" in warning
    needed = int(re.search(r"about (\d+) trials would reach it", warning)[1])
    assert needed > 60 and (needed - 1) % per_step == 0
    # The search keeps what its submit said.
    assert http.get(f"/v1/searches/{created['id']}").json()["warnings"] == [warning]

    # The budget the warning names is enough: no warning.
    assert submit(http, needed)["warnings"] == []


def test_a_budget_that_buys_no_step_and_other_strategies(http: httpx.Client) -> None:
    (warning,) = submit(http, 2)["warnings"]
    assert "budget 2 trials buys no step of `slimming`" in warning and "at least" in warning
    # Without a target there is nothing to reach: only a budget below one step is warned.
    assert submit(http, 60, strategy_params={})["warnings"] == []
    plain = submit(http, 8, strategy="nsga2", strategy_params={"population_size": 4})
    assert plain["warnings"] == []


def test_steps_of_a_search_in_the_list_envelope(http: httpx.Client) -> None:
    created = submit(http, 60)
    assert created["links"]["steps"] == f"/v1/searches/{created['id']}/steps"
    page = http.get(created["links"]["steps"]).json()
    # Written when the run ends: a queued search has none yet.
    assert page == {
        "items": [],
        "total": 0,
        "offset": 0,
        "limit": 1000,
        "search_id": created["id"],
        "strategy": "slimming",
        "final": False,
    }
    missing = http.get(f"/v1/searches/{'0' * 32}/steps")
    assert missing.status_code == 404 and missing.json()["detail"][0]["field"]
    bad = http.get(created["links"]["steps"], params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "limit"
