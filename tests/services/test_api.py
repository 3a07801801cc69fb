"""The REST API over real HTTP: uvicorn on a free port, a SQLite file, real Ray for the searches."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import httpx
import pytest
from svc_helpers import SMALL_SPEC, LiveServer, throwaway_server, wait_for

from latency_lut import LatencyEntry


def spec(**changes) -> dict:
    body = copy.deepcopy(SMALL_SPEC)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = body
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = value
    return body


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory) -> Iterator[LiveServer]:
    """A server without a scheduler: searches stay queued (validation and cancel-while-queued tests)."""
    with throwaway_server(tmp_path_factory.mktemp("idle")) as live:
        yield live


@pytest.fixture(scope="module")
def idle(idle_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=idle_server.url) as client:
        yield client


def only_error(response: httpx.Response, status: int = 422) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], list) and len(body["detail"]) >= 1
    return body["detail"][0]


# ----------------------------------------------------------------------------- service info
def test_health(idle: httpx.Client) -> None:
    body = idle.get("/v1/health").json()
    assert body["status"] == "ok"
    assert body["database"] == {"ok": True, "backend": "sqlite", "error": None}
    assert body["ray"] == {"mode": "local", "address": None}
    assert body["scheduler"] is False
    assert body["version"]


def test_openapi_docs_are_served(idle: httpx.Client) -> None:
    assert idle.get("/docs").status_code == 200
    paths = idle.get("/openapi.json").json()["paths"]
    assert {"/v1/searches", "/v1/searches/{search_id}/pareto", "/v1/spaces/{name}"} <= set(paths)


def test_spaces_list(idle: httpx.Client) -> None:
    spaces = idle.get("/v1/spaces").json()["items"]
    effv2 = next(s for s in spaces if s["name"] == "efficientformerv2")
    assert int(effv2["cardinality"]) > 10**6
    resolution = next(o for o in effv2["options"] if o["name"] == "resolution")
    assert resolution["default"] == 224


def test_space_detail_takes_options(idle: httpx.Client) -> None:
    body = idle.get("/v1/spaces/efficientformerv2", params={"resolution": 64, "num_classes": 10}).json()
    assert body["option_values"]["resolution"] == 64 and body["option_values"]["num_classes"] == 10
    assert {"s0", "s1", "s2", "l"} <= set(body["reference_configs"])
    assert any(c["name"] == "stage2.depth" for c in body["choices"])
    default = idle.get("/v1/spaces/efficientformerv2").json()
    assert default["option_values"]["resolution"] == 224


def test_space_detail_errors(idle: httpx.Client) -> None:
    missing = only_error(idle.get("/v1/spaces/nope"), 404)
    assert missing["field"] == "name" and "efficientformerv2" in missing["allowed"]
    bad_option = only_error(idle.get("/v1/spaces/efficientformerv2", params={"colour": "red"}))
    assert bad_option["field"] == "colour" and "resolution" in bad_option["allowed"]
    bad_value = only_error(idle.get("/v1/spaces/efficientformerv2", params={"heads": "three"}))
    assert bad_value["field"] == "heads" and bad_value["allowed"] == ["both", "classifier", "none"]


def test_devices_include_builtin_with_entry_counts(idle: httpx.Client) -> None:
    devices = {d["name"]: d for d in idle.get("/v1/devices").json()["items"]}
    host = devices["host-cpu-torch"]
    assert host["builtin"] is True and host["backend"] == "torch-cpu"
    assert host["entries"] == 0


def test_device_known_by_its_table_is_searchable(idle_server: LiveServer, idle: httpx.Client) -> None:
    body = spec(objectives=["latency:farm-phone", "params"])
    assert only_error(idle.post("/v1/searches", json=body))["field"] == "objectives[0]"
    # A farm uploaded a table for a device this host cannot measure: it becomes a known device.
    idle_server.app.state.lut.put_many(
        [LatencyEntry("farm-phone", f"effv2.stem|n={i}", 1.0, 0.9, 1.1, 5) for i in range(3)]
    )
    devices = {d["name"]: d for d in idle.get("/v1/devices").json()["items"]}
    assert devices["farm-phone"]["entries"] == 3
    assert devices["farm-phone"]["builtin"] is False and devices["farm-phone"]["backend"] is None
    assert idle.post("/v1/searches", json=body).status_code == 202


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("body", "field", "allowed_contains"),
    [
        (spec(space="nope"), "space", "efficientformerv2"),
        (spec(space_options__colour="red"), "space_options.colour", "resolution"),
        (spec(space_options__resolution=50), "space_options.resolution", "32"),
        (spec(objectives=["latency:host-cpu-torch", "accuracy"]), "objectives[1]", "params"),
        (spec(objectives=["latency:iphone99"]), "objectives[0]", "latency:host-cpu-torch"),
        (spec(constraints=["params < 5"]), "constraints[0]", "<objective> <= <number>"),
        (spec(strategy="annealing"), "strategy", "random"),
        (
            spec(strategy_params={"population_size": 0}),
            "strategy_params.population_size",
            "an int in [2, 1000000]",
        ),
        (spec(budget__trials=0), "budget.trials", "int in [1, 100000]"),
        (spec(budget__parallelism=10**6), "budget.parallelism", "int in [1, 256]"),
        (spec(budget__seconds=-1), "budget.seconds", "float in (0"),
        (spec(budget__trials="many"), "budget.trials", "int in [1, 100000]"),
        (spec(objectives=[]), "objectives", "length between 1 and 3"),
        (spec(colour="red"), "colour", "objectives"),
        (spec(budget__wall=3), "budget.wall", "trials"),
        # Non-finite and absurd numbers (issue 14, item 7): each was a 202 before.
        (spec(constraints=["latency:host-cpu-torch <= 1e309"]), "constraints[0]", "[-1e+15, 1e+15]"),
        (spec(constraints=["params >= -1e309"]), "constraints[0]", "[-1e+15, 1e+15]"),
        (spec(constraints=["params <= " + "9" * 10_000]), "constraints[0]", "[-1e+15, 1e+15]"),
        (spec(constraints=["params <= 1e300"]), "constraints[0]", "[-1e+15, 1e+15]"),
        (
            spec(strategy="nsga2", strategy_params={"population_size": 10**12}),
            "strategy_params.population_size",
            "an int in [2, 1000000]",
        ),
    ],
)
def test_invalid_spec_is_422_naming_field_and_allowed(
    idle: httpx.Client, body: dict, field: str, allowed_contains: str
) -> None:
    before = idle.get("/v1/searches").json()["total"]
    error = only_error(idle.post("/v1/searches", json=body))
    assert error["field"] == field
    assert allowed_contains in str(error["allowed"])
    assert error["message"]
    assert idle.get("/v1/searches").json()["total"] == before  # nothing was queued


def test_missing_required_field(idle: httpx.Client) -> None:
    body = spec()
    del body["space"]
    error = only_error(idle.post("/v1/searches", json=body))
    assert error["field"] == "space" and "required" in error["message"]


def test_malformed_json_is_422(idle: httpx.Client) -> None:
    truncated = b'{"space": "efficientformerv2",'
    response = idle.post("/v1/searches", content=truncated, headers={"content-type": "application/json"})
    error = only_error(response)
    assert error["field"] == "body" and "not valid JSON" in error["message"]
    wrong_type = only_error(idle.post("/v1/searches", json=["not", "an", "object"]))
    assert wrong_type["field"] == "body"


def test_bad_query_parameters(idle: httpx.Client) -> None:
    status = only_error(idle.get("/v1/searches", params={"status": "paused"}))
    assert status["field"] == "status" and "running" in status["allowed"]
    limit = only_error(idle.get("/v1/searches", params={"limit": 5000}))
    assert limit["field"] == "limit" and limit["allowed"] == "int in [1, 200]"


def test_unknown_search_is_404(idle: httpx.Client) -> None:
    for path in ["", "/trials", "/pareto"]:
        error = only_error(idle.get(f"/v1/searches/doesnotexist{path}"), 404)
        assert error["field"] == "search_id" and "doesnotexist" in error["message"]
    assert only_error(idle.post("/v1/searches/doesnotexist/cancel"), 404)["field"] == "search_id"


def test_queued_search_cancel_and_list(idle: httpx.Client) -> None:
    first = idle.post("/v1/searches", json=spec(name="first"))
    assert first.status_code == 202
    created = first.json()
    assert created["status"] == "queued"
    assert created["links"]["pareto"] == f"/v1/searches/{created['id']}/pareto"
    second = idle.post("/v1/searches", json=spec(name="second")).json()

    cancelled = idle.post(f"/v1/searches/{created['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = only_error(idle.post(f"/v1/searches/{created['id']}/cancel"), 409)
    assert again["field"] == "status" and again["allowed"] == ["queued", "running"]

    everything = idle.get("/v1/searches").json()
    assert everything["total"] >= 2
    queued = idle.get("/v1/searches", params={"status": "queued"}).json()
    assert second["id"] in [s["id"] for s in queued["items"]]
    assert created["id"] not in [s["id"] for s in queued["items"]]
    page = idle.get("/v1/searches", params={"limit": 1, "offset": 0}).json()
    assert len(page["items"]) == 1 and page["limit"] == 1
    detail = idle.get(f"/v1/searches/{second['id']}").json()
    assert detail["spec"]["name"] == "second" and detail["budget_trials"] == 8
    assert detail["trials_done"] == 0 and detail["started_at"] is None


# ----------------------------------------------------------------------------- a real search
def test_small_search_runs_to_success(http: httpx.Client, finished_search: dict) -> None:
    search = finished_search
    assert search["status"] == "succeeded", search
    assert search["trials_done"] == 8 and search["budget_trials"] == 8
    assert search["front_size"] >= 1
    assert search["hypervolume"] is not None and search["hypervolume"] > 0
    assert search["started_at"] and search["finished_at"] and search["elapsed_s"] > 0

    devices = {d["name"]: d for d in http.get("/v1/devices").json()["items"]}
    assert devices["host-cpu-torch"]["entries"] > 0  # measured by the scheduler before the run
    # Every trial says what priced its latency: the local device's table has in-context entries (the
    # scheduler times every block three ways) and no measured subnets, so the in-context sum.
    trials = http.get(f"/v1/searches/{search['id']}/trials").json()["items"]
    assert {t["metrics"]["latency_predictor:host-cpu-torch"] for t in trials} == {"in_context"}
    assert all("latency_expected_error:host-cpu-torch" not in t["metrics"] for t in trials)


def test_trials_are_paginated(http: httpx.Client, finished_search: dict) -> None:
    sid = finished_search["id"]
    everything = http.get(f"/v1/searches/{sid}/trials").json()
    assert everything["total"] == 8 and [t["number"] for t in everything["items"]] == list(range(8))
    assert len({t["config_id"] for t in everything["items"]}) == 8
    url = f"/v1/searches/{sid}/trials"
    pages = [http.get(url, params={"offset": o, "limit": 3}).json() for o in (0, 3, 6)]
    assert [[t["number"] for t in p["items"]] for p in pages] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert all(p["total"] == 8 and p["limit"] == 3 for p in pages)
    complete = everything["items"][0]
    assert set(complete["values"]) == {"latency:host-cpu-torch", "params"}
    too_big = only_error(http.get(f"/v1/searches/{sid}/trials", params={"limit": 1001}))
    assert too_big["field"] == "limit" and too_big["allowed"] == "int in [1, 1000]"


def test_pareto_front_is_non_dominated(http: httpx.Client, finished_search: dict) -> None:
    sid = finished_search["id"]
    front = http.get(f"/v1/searches/{sid}/pareto").json()
    assert front["objectives"] == [
        {"name": "latency:host-cpu-torch", "direction": "minimize"},
        {"name": "params", "direction": "minimize"},
    ]
    members = front["items"]
    assert len(members) == finished_search["front_size"] >= 1
    assert [t["number"] for t in members] == sorted(t["number"] for t in members)
    names = [o["name"] for o in front["objectives"]]
    trials = http.get(f"/v1/searches/{sid}/trials").json()["items"]
    points = [[t["values"][n] for n in names] for t in trials if t["state"] == "complete"]
    for member in members:
        mine = [member["values"][n] for n in names]
        dominated = any(all(o <= m for o, m in zip(p, mine, strict=True)) and p != mine for p in points)
        assert not dominated, member
        assert member["config"] and member["feasible"]


def test_cancel_running_search(http: httpx.Client, finished_search: dict) -> None:
    body = spec(name="to-cancel", budget__trials=500, seed=11)
    sid = http.post("/v1/searches", json=body).json()["id"]
    deadline_search = wait_for(http, sid, {"running"}, timeout_s=120)
    assert deadline_search["status"] == "running"
    requested = http.post(f"/v1/searches/{sid}/cancel").json()
    assert requested["cancel_requested"] is True
    final = wait_for(http, sid, {"cancelled", "succeeded", "failed"})
    assert final["status"] == "cancelled", final
    assert final["trials_done"] < 500
    stored = http.get(f"/v1/searches/{sid}/trials", params={"limit": 1000}).json()
    assert [t["number"] for t in stored["items"]] == list(range(stored["total"]))
    assert only_error(http.post(f"/v1/searches/{sid}/cancel"), 409)["field"] == "status"


def test_default_proxy_objective_is_stored_as_the_spaces_proxy(idle: httpx.Client) -> None:
    created = idle.post("/v1/searches", json=spec(objectives=["params", "proxy:default"]))
    assert created.status_code == 202, created.text
    stored = idle.get(f"/v1/searches/{created.json()['id']}").json()
    assert stored["spec"]["objectives"] == ["params", "proxy:grad_norm"]
    assert idle.post(f"/v1/searches/{created.json()['id']}/cancel").status_code == 200
