"""Every strategy through the REST API: real HTTP, the live server's scheduler, real Ray, measured
host latency. EfficientFormerV2 for all of them, and SnapFusion's evolving on the UNet space."""

from __future__ import annotations

import copy

import httpx
import pytest
from svc_helpers import SMALL_SPEC, wait_for

from nas.strategies.block_evolving import BLOCK_COUNT_SUFFIXES
from search_spaces import get_space

# Six real searches on the live server (Ray actors, LUT measurement): minutes, not seconds.
pytestmark = pytest.mark.slow

LATENCY = "latency:host-cpu-torch"
TRIALS = 6
UNET_OPTIONS = {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32}
EFFV2_RUNS = {
    "nsga3": ([LATENCY, "params"], [], {"population_size": 4}),
    "tpe": ([LATENCY, "params"], [], {"n_startup_trials": 4}),
    "evolution": ([LATENCY, "params"], [], {"population_size": 4}),
    "slimming": ([LATENCY, "params", "proxy:params"], [], {}),
    "evolving": ([LATENCY, "proxy:params"], [f"{LATENCY} <= 0.001"], {"group_size": 3}),
}


def submit(http: httpx.Client, **fields) -> str:
    body = copy.deepcopy(SMALL_SPEC)
    body.update(fields)
    created = http.post("/v1/searches", json=body)
    assert created.status_code == 202, created.text
    return created.json()["id"]


@pytest.fixture(scope="module")
def effv2_searches(http: httpx.Client) -> dict[str, dict]:
    ids = {
        name: submit(
            http,
            name=f"api-{name}",
            strategy=name,
            objectives=objectives,
            constraints=constraints,
            strategy_params=params,
            budget={"trials": TRIALS, "parallelism": 1},
        )
        for name, (objectives, constraints, params) in EFFV2_RUNS.items()
    }
    return {name: wait_for(http, sid, {"succeeded", "failed", "cancelled"}, 600) for name, sid in ids.items()}


@pytest.mark.parametrize("strategy", list(EFFV2_RUNS))
def test_strategy_runs_on_efficientformerv2(http: httpx.Client, effv2_searches: dict, strategy: str) -> None:
    search = effv2_searches[strategy]
    assert search["status"] == "succeeded", search
    assert search["spec"]["strategy"] == strategy
    trials = http.get(f"/v1/searches/{search['id']}/trials").json()["items"]
    assert len(trials) == search["trials_done"] == TRIALS
    assert len({t["config_id"] for t in trials}) == TRIALS
    assert all(t["state"] == "complete" for t in trials)
    space = get_space("efficientformerv2", resolution=32, num_classes=10)
    if strategy in ("slimming", "evolving"):
        # Both start from the largest subnet here; every probe is one option away from it.
        assert trials[0]["config"] == space.largest()
        for trial in trials[1:]:
            changed = [k for k in trial["config"] if trial["config"][k] != space.largest()[k]]
            assert len(changed) >= 1
    if strategy == "evolving":
        assert all(not t["feasible"] for t in trials)  # a 1 microsecond target: nothing meets it


def test_unknown_strategy_param_is_422_naming_the_field(http: httpx.Client) -> None:
    body = copy.deepcopy(SMALL_SPEC)
    body.update(strategy="evolution", strategy_params={"generations": 3})
    response = http.post("/v1/searches", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["field"] == "strategy_params.generations" and "population_size" in detail["allowed"]


def test_evolving_on_unet_starts_from_sd15_and_removes_blocks(http: httpx.Client) -> None:
    sid = submit(
        http,
        name="api-evolving-unet",
        space="unet",
        space_options=UNET_OPTIONS,
        objectives=[LATENCY, "proxy:params"],
        constraints=[f"{LATENCY} <= 0.001"],
        strategy="evolving",
        strategy_params={"base": "sd15", "group_size": 2},
        budget={"trials": 8, "parallelism": 1},
    )
    search = wait_for(http, sid, {"succeeded", "failed", "cancelled"}, 600)
    assert search["status"] == "succeeded", search
    trials = http.get(f"/v1/searches/{sid}/trials").json()["items"]
    space = get_space("unet", **UNET_OPTIONS)
    sd15 = space.canonicalize("sd15")
    assert trials[0]["config"] == sd15
    assert len(trials) == 8 and len({t["config_id"] for t in trials}) == 8
    # Over the target, every probe removes blocks: one block-count choice one option down, and
    # entries that this makes irrelevant (a stage's attention settings without transformers) zeroed.
    for trial in trials[1:]:
        changed = {k for k in sd15 if trial["config"][k] != sd15[k]}
        removed = [
            k for k in changed if k.rsplit(".", 1)[-1] in BLOCK_COUNT_SUFFIXES and trial["config"][k] != 0
        ]
        zeroed = {k for k in changed if trial["config"][k] == 0}
        assert len(removed) <= 1 and changed == set(removed) | zeroed and changed
        for name in removed:
            options = space.choice_map[name].options
            assert options.index(trial["config"][name]) == options.index(sd15[name]) - 1
        assert trial["values"][LATENCY] < trials[0]["values"][LATENCY]
