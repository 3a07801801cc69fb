"""The dashboard's JSON (`/v1/dashboard/...`), its page and its files, over real HTTP on the live server,
and its per-search trial columns on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nas import Trial, TrialState
from nas.pareto import HV_REFERENCE, Normalizer, hypervolume, non_dominated
from services.core.dashboard_data import TrialColumnsCache, hypervolume_curve
from services.core.demo_search import LATENCY, PARAMS_BOUND, insert_synthetic_search
from services.core.trial_store import SqlTrialStore

BIG = 20_000


@pytest.fixture(scope="module")
def synthetic(server) -> str:
    return insert_synthetic_search(server.app.state.engine, trials=BIG, seed=5, name="synthetic-api")


def every_trial(http, search_id: str) -> list[dict]:
    items, offset = [], 0
    while True:
        page = http.get(f"/v1/searches/{search_id}/trials", params={"offset": offset, "limit": 1000}).json()
        items += page["items"]
        offset += 1000
        if offset >= page["total"]:
            return items


def front_of(trials: list[dict], names: list[str]) -> set[int]:
    ok = [t for t in trials if t["state"] == "complete" and t["feasible"]]
    return {ok[i]["number"] for i in non_dominated(np.array([[t["values"][n] for n in names] for t in ok]))}


# ----------------------------------------------------------------------------- page and files
def test_page_and_plotting_library_are_served_locally(http):
    page = http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/vendor/plotly.min.js"' in page.text
    assert "https://" not in page.text and "cdn" not in page.text.lower()
    plotly = http.get("/vendor/plotly.min.js")
    assert plotly.status_code == 200 and "javascript" in plotly.headers["content-type"]
    assert len(plotly.content) > 1_000_000 and b"plotly" in plotly.content[:2000].lower()
    for path in ("/static/js/main.js", "/static/js/search.js", "/static/dashboard.css"):
        assert http.get(path).status_code == 200, path
    assert http.get("/static/../services/app.py").status_code == 404


def test_capabilities_follow_the_servers_routes(http, server):
    caps = http.get("/v1/dashboard/capabilities").json()
    # The OpenAPI paths: included routers may stay nested in `app.routes` (what the router reads too).
    paths = set(server.app.openapi()["paths"])
    assert caps["plotting_library"] is True
    has_export = "/v1/searches/{search_id}/trials/{number}/export" in paths
    assert has_export  # served by the searches router
    assert caps["export_formats"] == (["json", "onnx", "coreml"] if has_export else ["json"])
    assert caps["device_accuracy"] == ("/v1/devices/{device}/accuracy" in paths)


# ----------------------------------------------------------------------------- searches list
def test_search_list_has_progress_best_values_and_filters(http, finished_search, synthetic):
    page = http.get("/v1/dashboard/searches", params={"q": "synthetic-api"}).json()
    assert [s["id"] for s in page["items"]] == [synthetic] and page["total"] == 1
    item = page["items"][0]
    assert item["trials_done"] == item["budget_trials"] == BIG
    front = http.get(f"/v1/searches/{synthetic}/pareto").json()["items"]
    assert item["best"] == {
        LATENCY: min(t["values"][LATENCY] for t in front),
        "params": min(t["values"]["params"] for t in front),
    }
    by_status = http.get("/v1/dashboard/searches", params={"status": ["failed", "cancelled"]}).json()
    assert all(s["status"] in ("failed", "cancelled") for s in by_status["items"])
    assert synthetic not in {s["id"] for s in by_status["items"]}
    bad = http.get("/v1/dashboard/searches", params={"status": "done"})
    assert bad.status_code == 422 and "succeeded" in bad.json()["detail"][0]["allowed"]


# ----------------------------------------------------------------------------- the plot
def test_plot_front_matches_the_stored_front_and_counts_add_up(http, finished_search):
    search_id = finished_search["id"]
    names = finished_search["spec"]["objectives"]
    plot = http.get(f"/v1/dashboard/searches/{search_id}/plot", params={"objectives": names}).json()
    stored = {t["number"] for t in http.get(f"/v1/searches/{search_id}/pareto").json()["items"]}
    assert set(plot["front"]["numbers"]) == stored
    counts = plot["counts"]
    series = [plot[s]["numbers"] for s in ("front", "feasible", "infeasible")]
    assert (
        sum(len(s) for s in series)
        == counts["shown"]
        == counts["plottable"]
        == counts["trials"] - counts["failed"]
    )
    assert not plot["thinned"]
    trials = {t["number"]: t for t in every_trial(http, search_id)}
    for i, number in enumerate(plot["feasible"]["numbers"]):
        assert plot["feasible"]["x"][i] == trials[number]["values"][names[0]]


def test_plot_thins_the_rest_but_keeps_the_front_and_outliers(http, synthetic):
    names = [LATENCY, "params"]
    trials = every_trial(http, synthetic)
    plot = http.get(
        f"/v1/dashboard/searches/{synthetic}/plot", params={"objectives": names, "max_points": 2000}
    ).json()
    assert set(plot["front"]["numbers"]) == front_of(trials, names)
    assert plot["thinned"] and plot["counts"]["shown"] == 2000
    shown = set().union(*(plot[s]["numbers"] for s in ("front", "feasible", "infeasible")))
    assert len(shown) == 2000
    # Stratified, not uniform: the trial with the highest params sits alone in its grid cell and is
    # kept, where a uniform 10% sample would drop it nine times out of ten.
    complete = [t for t in trials if t["state"] == "complete"]
    assert max(complete, key=lambda t: t["values"]["params"])["number"] in shown
    infeasible = set(plot["infeasible"]["numbers"])
    assert all(not trials[n]["feasible"] for n in infeasible)
    assert all(trials[n]["values"]["params"] > PARAMS_BOUND for n in infeasible)


@pytest.mark.parametrize(
    ("objectives", "message"),
    [
        (["params"], "pick 2 or 3"),
        (["params", "params"], "must differ"),
        (["params", "latency:nowhere"], "no objective 'latency:nowhere'"),
    ],
)
def test_plot_refuses_bad_objectives_naming_the_allowed(http, finished_search, objectives, message):
    response = http.get(
        f"/v1/dashboard/searches/{finished_search['id']}/plot", params={"objectives": objectives}
    )
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["field"] == "objectives" and message in detail["message"]
    assert detail["allowed"] == finished_search["spec"]["objectives"]


def test_unknown_search_and_trial_are_404(http, finished_search):
    assert http.get("/v1/dashboard/searches/nope/plot").status_code == 404
    missing = http.get(f"/v1/dashboard/searches/{finished_search['id']}/trials/99999")
    assert missing.status_code == 404 and missing.json()["detail"][0]["field"] == "number"


# ----------------------------------------------------------------------------- hypervolume
def test_hypervolume_curve_grows_to_the_fronts_hypervolume(http, synthetic):
    curve = http.get(f"/v1/dashboard/searches/{synthetic}/hypervolume", params={"max_points": 50}).json()
    assert len(curve["evaluations"]) == 50 and curve["evaluations"][-1] == BIG
    values = curve["hypervolume"]
    assert all(b >= a for a, b in itertools.pairwise(values))
    trials = every_trial(http, synthetic)
    complete = [t for t in trials if t["state"] == "complete"]
    points = np.array([[t["values"][LATENCY], t["values"]["params"]] for t in complete])
    feasible = np.array([t["feasible"] for t in complete])
    normalized = Normalizer.from_points(points)(points[feasible])
    assert values[-1] == pytest.approx(hypervolume(normalized, [HV_REFERENCE] * 2))
    assert curve["reference"] == HV_REFERENCE and curve["live_hypervolume"] is None


def test_hypervolume_curve_is_empty_with_a_reason_beyond_three_objectives():
    from services.core.dashboard_data import TrialColumns

    columns = TrialColumns()
    columns.extend([{"number": 0, "state": "complete", "feasible": True, "values": {"a": 1, "b": 2}}])
    curve = hypervolume_curve(columns, ["a", "b", "c", "d"], max_points=10)
    assert curve["evaluations"] == [] and "1 to 3" in curve["reason"]


# ----------------------------------------------------------------------------- the trial table
def test_trials_sort_by_objective_page_and_filter(http, synthetic):
    url = f"/v1/dashboard/searches/{synthetic}/trials"
    first = http.get(url, params={"sort": "params", "limit": 100}).json()
    second = http.get(url, params={"sort": "params", "limit": 100, "offset": 100}).json()
    params = [t["values"]["params"] for t in first["items"] + second["items"]]
    assert params == sorted(params) and first["total"] == BIG
    trials = every_trial(http, synthetic)
    assert params[0] == min(t["values"]["params"] for t in trials if t["state"] == "complete")
    desc = http.get(url, params={"sort": "params", "order": "desc", "limit": 5}).json()
    assert [t["values"]["params"] for t in desc["items"]] == sorted(
        (t["values"]["params"] for t in trials if t["state"] == "complete"), reverse=True
    )[:5]
    failed = http.get(url, params={"state": "failed", "limit": 500}).json()
    assert failed["total"] == sum(t["state"] == "failed" for t in trials)
    assert all(t["state"] == "failed" for t in failed["items"])
    infeasible = http.get(url, params={"feasible": "false", "state": "complete", "limit": 10}).json()
    assert all(not t["feasible"] for t in infeasible["items"])
    newest = http.get(url, params={"sort": "number", "order": "desc", "limit": 3}).json()
    assert [t["number"] for t in newest["items"]] == [BIG - 1, BIG - 2, BIG - 3]
    stored_front = {t["number"] for t in http.get(f"/v1/searches/{synthetic}/pareto").json()["items"]}
    by_params = http.get(url, params={"sort": "params", "limit": 500}).json()
    assert set(by_params["front_numbers"]) == stored_front & {t["number"] for t in by_params["items"]}


def test_trials_refuse_an_unknown_sort_naming_the_sortable(http, synthetic):
    response = http.get(f"/v1/dashboard/searches/{synthetic}/trials", params={"sort": "accuracy"})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["field"] == "sort"
    assert detail["allowed"] == ["number", "state", "feasible", LATENCY, "params"]


# ----------------------------------------------------------------------------- one trial
def test_trial_detail_groups_the_config_stage_by_stage(http, finished_search):
    search_id = finished_search["id"]
    detail = http.get(f"/v1/dashboard/searches/{search_id}/trials/0").json()
    config = detail["trial"]["config"]
    stages = {s["name"]: s for s in detail["stages"]}
    assert list(stages) == ["stage0", "stage1", "stage2", "stage3"]
    grouped = {
        setting["key"]
        for stage in detail["stages"]
        for setting in stage["settings"] + [a for b in stage["blocks"] for a in b["attrs"]]
    }
    assert grouped == set(config)
    for name, stage in stages.items():
        active = [b["index"] for b in stage["blocks"] if b["active"]]
        assert active == list(range(config[f"{name}.depth"]))
        width = next(s for s in stage["settings"] if s["name"] == "width")
        assert width["value"] == config[f"{name}.width"] and width["value"] in width["options"]
    front = {t["number"] for t in http.get(f"/v1/searches/{search_id}/pareto").json()["items"]}
    assert detail["on_front"] == (0 in front)


# ----------------------------------------------------------------------------- devices
def test_lut_coverage_counts_the_measured_blocks(http, finished_search):
    rows = http.get("/v1/dashboard/devices/coverage").json()["items"]
    options = finished_search["spec"]["space_options"]
    row = next(
        r
        for r in rows
        if r["device"] == "host-cpu-torch" and r["space"] == "efficientformerv2" and r["options"] == options
    )
    # The scheduler measured every block of the space at these options before the search ran.
    assert row["blocks"] > 0 and row["covered"] == row["blocks"] and row["share"] == 1.0
    defaults = {(r["device"], r["space"]) for r in rows if r["options"] == {}}
    assert ("host-cpu-torch", "unet") in defaults and ("host-cpu-torch", "temporal") in defaults


# ----------------------------------------------------------------------------- trial columns
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_trial_columns_extend_with_new_trials(request, backend):
    engine = request.getfixturevalue("sqlite_engine" if backend == "sqlite" else "postgres_isolated_engine")
    search_id = insert_synthetic_search(engine, trials=300, seed=1)
    cache = TrialColumnsCache(engine)
    assert len(cache.get(search_id)) == 300
    store = SqlTrialStore(engine)
    for number in range(300, 310):
        store.add(
            search_id, Trial(number=number, config={}, config_id="x", values={"params": 1.0, "new": 2.0})
        )
    store.add(search_id, Trial(number=310, config={}, config_id="y", state=TrialState.FAILED, error="boom"))
    columns = cache.get(search_id)
    fresh = TrialColumnsCache(engine).get(search_id)
    assert len(columns) == len(fresh) == 311
    np.testing.assert_array_equal(columns.numbers, np.arange(311))
    for name in ("params", LATENCY, "new"):
        np.testing.assert_array_equal(columns.column(name), fresh.column(name))
    assert np.isnan(columns.column("new")[:300]).all() and columns.column("new")[305] == 2.0
    assert not columns.complete[310] and columns.complete[:310].all()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_hypervolume_curve_is_the_runners_and_ends_at_its_figure(request, backend):
    """The curve plots what the runner stored with each trial (bounds from the space's anchors), so
    its last point is the search's own hypervolume, the figure the dashboard's header shows."""
    from nas import SearchSpec, resolve
    from nas.runner import Runner
    from services.core.search_queue import SearchQueue

    engine = request.getfixturevalue("sqlite_engine" if backend == "sqlite" else "postgres_isolated_engine")
    spec = SearchSpec(
        space="efficientformerv2",
        space_options={"resolution": 32, "num_classes": 10},
        objectives=["params", "proxy:macs"],
        strategy="random",
        budget={"trials": 12, "parallelism": 1},
    )
    search_id = SearchQueue(engine).submit(spec).id
    result = Runner(resolve(spec, []), search_id, SqlTrialStore(engine), {}, use_ray=False).run()
    assert result.state == "succeeded" and result.hypervolume is not None
    curve = hypervolume_curve(TrialColumnsCache(engine).get(search_id), spec.objectives, max_points=5)
    assert curve["normalized_by"] == "anchors" and curve["evaluations"][-1] == 12
    assert curve["hypervolume"][-1] == pytest.approx(result.hypervolume)
    assert all(0 <= v <= HV_REFERENCE**2 for v in curve["hypervolume"])
    assert all(b >= a for a, b in itertools.pairwise(curve["hypervolume"]))
