"""The dashboard driven in headless Chromium against a live server: what a person sees and clicks.

Screenshots go to tests/_artifacts/dashboard-*.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from svc_helpers import wait_for

from nas.pareto import non_dominated
from search_spaces import get_space

FRONT_TRACE = "Pareto front"
ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts"


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_search(page, url: str, search_id: str, renders: int = 1) -> None:
    page.goto(f"{url}/#/search/{search_id}")
    page.wait_for_function(
        "n => Number(document.getElementById('pareto-plot')?.dataset.rendered || 0) >= n", arg=renders
    )


def trace(page, name: str) -> dict:
    return page.evaluate(
        """name => {
            const t = document.getElementById('pareto-plot').data.find(t => t.name.startsWith(name));
            return {type: t.type, numbers: Array.from(t.customdata), n: t.x.length};
        }""",
        name,
    )


def point_position(page, series: str, number: int) -> dict:
    """Where trial `number` of a series is drawn, in page pixels (from Plotly's own axes)."""
    return page.evaluate(
        """([series, n]) => {
            const gd = document.getElementById('pareto-plot');
            const t = gd.data.find(t => t.name.startsWith(series));
            const i = Array.from(t.customdata).indexOf(n);
            const fl = gd._fullLayout, box = gd.getBoundingClientRect();
            return {x: box.left + fl.xaxis._offset + fl.xaxis.l2p(t.x[i]),
                    y: box.top + fl.yaxis._offset + fl.yaxis.l2p(t.y[i])};
        }""",
        [series, number],
    )


def all_trials(http: httpx.Client, search_id: str) -> list[dict]:
    return http.get(f"/v1/searches/{search_id}/trials", params={"limit": 1000}).json()["items"]


def front_numbers(trials: list[dict], names: list[str]) -> set[int]:
    """The front over `names` (all minimised here) of the feasible complete trials, computed here."""
    ok = [t for t in trials if t["state"] == "complete" and t["feasible"]]
    points = np.array([[t["values"][n] for n in names] for t in ok])
    return {ok[i]["number"] for i in non_dominated(points)}


def plot_layout(page) -> dict:
    """Axis titles, the dashed bound lines and their labels of the Pareto plot."""
    return page.evaluate(
        """() => {
            const l = document.getElementById('pareto-plot').layout;
            const title = (a) => a && a.title && a.title.text;
            const scene = l.scene || {};
            return {
                x: title(l.xaxis) || title(scene.xaxis),
                y: title(l.yaxis) || title(scene.yaxis),
                z: title(scene.zaxis),
                shapes: (l.shapes || []).map(s => ({x0: s.x0, y0: s.y0, xref: s.xref, yref: s.yref})),
                labels: (l.annotations || []).map(a => a.text),
            };
        }"""
    )


def trace_values(page, name: str) -> dict:
    return page.evaluate(
        """name => { const t = document.getElementById('pareto-plot').data.find(t => t.name.startsWith(name));
            return {numbers: Array.from(t.customdata), x: Array.from(t.x), y: Array.from(t.y)}; }""",
        name,
    )


def test_front_shows_the_right_points_in_3d_then_2d(page, live, http, plot_search):
    search_id = plot_search["id"]
    trials = all_trials(http, search_id)
    open_search(page, live.url, search_id)

    # A 3-objective search opens in 3-D on its own objectives: the plot's front is the runner's stored
    # front, and its count is the header's.
    front3 = trace(page, FRONT_TRACE)
    assert front3["type"] == "scatter3d"
    stored = {t["number"] for t in http.get(f"/v1/searches/{search_id}/pareto").json()["items"]}
    assert set(front3["numbers"]) == stored
    assert page.inner_text("#front-size") == str(plot_search["front_size"]) == str(front3["n"])
    assert page.inner_text("#plot-counts").startswith(f"front {front3['n']} ·")
    layout = plot_layout(page)
    assert layout["x"].startswith("latency:host-cpu-torch [ms]")
    assert layout["y"].startswith("params [M params]") and layout["z"].startswith("macs [GMACs]")
    # No lines in a 3-D scene: the counts line names the constraint's bound, in the axis's unit.
    assert "bounds: params <= 3.5 M params" in page.inner_text("#plot-counts")
    screenshot(page, "search-3d")

    page.select_option("#axis-z", "")
    page.wait_for_function("() => document.getElementById('pareto-plot').data[0].type === 'scattergl'")
    front = trace(page, FRONT_TRACE)
    assert set(front["numbers"]) == front_numbers(trials, ["latency:host-cpu-torch", "params"])
    assert front["n"] == len(front["numbers"])
    shown = sum(trace(page, name)["n"] for name in ("feasible", "infeasible", FRONT_TRACE))
    assert shown == len(trials)
    # Fewer objectives than the search's: the count says it is the front of the plotted ones.
    counts = page.inner_text("#plot-counts")
    assert counts.startswith(f"front {front['n']} in the plotted objectives")
    assert (
        f"the search's front over latency:host-cpu-torch, params, macs: {plot_search['front_size']}" in counts
    )
    # Values are drawn in the axes' units: params in millions.
    values = trace_values(page, FRONT_TRACE)
    by_number = {t["number"]: t for t in trials}
    for number, x, y in zip(values["numbers"], values["x"], values["y"], strict=True):
        assert x == pytest.approx(by_number[number]["values"]["latency:host-cpu-torch"])
        assert y == pytest.approx(by_number[number]["values"]["params"] / 1e6)
    # The constraint params <= 3,500,000 is a dashed horizontal line at 3.5 (M params), labelled.
    layout = plot_layout(page)
    assert layout["shapes"] == [{"x0": 0, "y0": 3.5, "xref": "paper", "yref": "y"}]
    assert layout["labels"] == ["params <= 3.5 M params"]
    assert layout["y"].startswith("params [M params]")
    screenshot(page, "search-2d")


def test_hover_and_click_show_that_trials_config(page, live, http, plot_search):
    search_id = plot_search["id"]
    open_search(page, live.url, search_id)
    # Points are found from the 2-D axes: plot two of the search's three objectives.
    page.select_option("#axis-z", "")
    page.wait_for_function("() => document.getElementById('pareto-plot').data[0].type === 'scattergl'")
    page.wait_for_selector("#selected-number")
    default = int(page.get_attribute("#selected-number", "data-number"))
    # A point other than the one selected at load: another front member, else a non-front trial.
    series, target = next(
        (name, n)
        for name in (FRONT_TRACE, "feasible", "infeasible")
        for n in trace(page, name)["numbers"]
        if n != default
    )
    pos = point_position(page, series, target)

    page.mouse.move(pos["x"], pos["y"])
    page.wait_for_selector("#hover-card:not([hidden])")
    assert f"trial {target}" in page.inner_text("#hover-card")
    assert "stage0.depth" in page.inner_text("#hover-card")

    page.mouse.click(pos["x"], pos["y"])
    page.wait_for_selector(f"#selected-number[data-number='{target}']")
    expected = http.get(f"/v1/dashboard/searches/{search_id}/trials/{target}").json()
    assert json.loads(page.inner_text("#trial-config")) == expected["trial"]["config"]
    # The subnet is drawn stage by stage; blocks beyond a stage's depth are drawn as skipped.
    config = expected["trial"]["config"]
    for stage in range(4):
        card = page.locator(f".stage[data-stage='stage{stage}']")
        assert card.locator(".block:not(.inactive)").count() == config[f"stage{stage}.depth"]
    assert page.locator("#export-json").is_visible()
    # The server exports a trial's subnet (GET .../trials/{number}/export): the buttons link there.
    onnx = page.locator("#export-onnx")
    assert onnx.is_visible()
    assert onnx.get_attribute("href") == f"/v1/searches/{search_id}/trials/{target}/export?format=onnx"
    screenshot(page, "trial-selected")


def test_running_search_progress_advances_without_reload(page, live, http, plot_search):
    page.goto(f"{live.url}/?poll=250")
    page.wait_for_selector("#searches-table tbody tr[data-search-id]")
    page.evaluate("() => { window.__sameDocument = true; }")
    spec = {
        "name": "browser-live-search",
        "space": "efficientformerv2",
        "space_options": {"resolution": 32, "num_classes": 10},
        "objectives": ["latency:host-cpu-torch", "params"],
        "strategy": "random",
        "budget": {"trials": 40, "parallelism": 1},
        "seed": 11,
    }
    created = http.post("/v1/searches", json=spec)
    assert created.status_code == 202, created.text
    search_id = created.json()["id"]
    row = f"#searches-table tr[data-search-id='{search_id}']"
    page.evaluate(
        """row => { window.__seen = [];
            setInterval(() => { const t = document.querySelector(row + ' .progress-text');
                                 if (t) window.__seen.push(Number(t.dataset.done)); }, 100); }""",
        row,
    )
    page.wait_for_selector(f"{row}[data-status='running']")
    # The first trial waits for the search's table of blocks to be measured (slow on a busy host).
    page.wait_for_function("() => window.__seen.some(done => done > 0)", timeout=240_000)
    screenshot(page, "searches-running")
    page.wait_for_selector(f"{row}[data-status='succeeded']", timeout=240_000)
    page.wait_for_function("() => window.__seen.includes(40)")
    seen = page.evaluate("() => window.__seen")
    assert page.evaluate("() => window.__sameDocument") is True
    assert seen == sorted(seen), "progress went backwards"
    assert any(0 < done < 40 for done in seen), f"no intermediate progress seen: {sorted(set(seen))}"
    assert page.inner_text(f"{row} .progress-text") == "40 / 40"
    screenshot(page, "searches-finished")


def test_hundred_thousand_trials_render_thinned_with_the_whole_front(page, live, http, big_search):
    open_search(page, live.url, big_search)
    front = trace(page, FRONT_TRACE)
    stored = http.get(f"/v1/searches/{big_search}/pareto").json()["items"]
    assert set(front["numbers"]) == {t["number"] for t in stored}
    shown = sum(trace(page, name)["n"] for name in ("feasible", "infeasible", FRONT_TRACE))
    assert shown <= 20_000 + front["n"]
    assert "stratified sample" in page.inner_text("#plot-counts")
    assert page.inner_text("#page-info") == "1–25 of 100000"
    screenshot(page, "search-100k")


def test_trial_table_sorts_by_an_objective_and_pages(page, live, big_search):
    open_search(page, live.url, big_search)
    page.click("#trials-table th[data-sort='params']")
    page.wait_for_selector("#trials-table th[data-sort='params']:has-text('▲')")

    def column(header: str) -> list[float]:
        index = page.locator("#trials-table th").all_inner_texts().index(header)
        cells = page.locator(f"#trials-table tbody tr td:nth-child({index + 1})").all_inner_texts()
        return [float(c.replace(",", "")) for c in cells]

    first = column("params ▲")
    assert first == sorted(first)
    page.click("#page-next")
    page.wait_for_selector("#page-info:has-text('26–50')")
    second = column("params ▲")
    assert second == sorted(second) and second[0] >= first[-1]
    page.click("#trials-table th[data-sort='params']")
    page.wait_for_selector("#trials-table th[data-sort='params']:has-text('▼')")
    descending = column("params ▼")
    assert descending == sorted(descending, reverse=True) and descending[0] > second[-1]


def test_devices_page_shows_lut_coverage(page, live, plot_search):
    page.goto(f"{live.url}/#/devices")
    page.wait_for_selector("#coverage-table")
    cells = page.locator("#coverage-table td.coverage-cell[data-device='host-cpu-torch']")
    rows = [(c.get_attribute("data-covered"), c.get_attribute("data-blocks")) for c in cells.all()]
    # The search measured every block of EfficientFormerV2 at 32 px: one row is complete.
    assert any(covered == blocks and int(blocks) > 0 for covered, blocks in rows), rows
    assert page.locator("#devices-table tr[data-device='host-cpu-torch']").count() == 1
    screenshot(page, "devices")


def test_devices_page_plots_predicted_against_measured(page, live, http, plot_search):
    # Three held-out subnets of the space the search measured, "measured" 10% slower than predicted.
    options = {"resolution": 32, "num_classes": 10}  # those of the plot search (conftest.PLOT_SPEC)
    predicted = http.post(
        "/v1/devices/host-cpu-torch/predict",
        json={"space": "efficientformerv2", "space_options": options, "configs": ["s0", "s1", "s2"]},
    ).json()["items"]
    space = get_space("efficientformerv2", **options)
    pairs = [
        {
            "config": space.reference_config(name),
            "samples_ms": [item["total_ms"] * 1.1],
            "repeat_samples_ms": [item["total_ms"] * 1.12],  # the ceiling: 1.12 / 1.1 - 1 = 1.8%
        }
        for name, item in zip(("s0", "s1", "s2"), predicted, strict=True)
    ]
    body = {"run_id": "browser-val", "space": "efficientformerv2", "space_options": options, "pairs": pairs}
    assert http.post("/v1/devices/host-cpu-torch/accuracy", json=body).status_code == 201
    page.goto(f"{live.url}/#/devices")
    page.wait_for_selector("#accuracy-table tr[data-device='host-cpu-torch']")
    row = page.locator("#accuracy-table tr[data-device='host-cpu-torch']")
    assert row.get_attribute("data-n") == "3"
    # Relative error 1/1.1 - 1 = -9.1%: within +-10% and +-15%, not within +-5%; the ceiling within 5%.
    cells = row.locator("td").all_inner_texts()
    assert cells[1] == row.get_attribute("data-predictor") == predicted[0]["predictor"]
    assert cells[5] == "0.0%" and cells[6] == "100.0%" and cells[9] == "100.0%", cells
    candidates = page.locator(".predictors[data-device='host-cpu-torch'] tr[data-predictor]")
    names = [c.get_attribute("data-predictor") for c in candidates.all()]
    assert "block_sum" in names and names[-1] == "ceiling (measured twice)"
    plot = page.locator(".accuracy-plot[data-device='host-cpu-torch']")
    assert plot.get_attribute("data-points") == "3"
    page.wait_for_function(
        "() => { const d = document.querySelector(\".accuracy-plot[data-device='host-cpu-torch']\");"
        " return d && d.data && d.data[3].x.length === 3; }"
    )
    screenshot(page, "devices-accuracy")


def test_search_list_filters_by_status_and_text(page, live, plot_search, big_search):
    page.goto(f"{live.url}/")
    page.wait_for_selector(f"tr[data-search-id='{big_search}']")
    page.fill("#filter-text", "synthetic")
    page.wait_for_selector(f"tr[data-search-id='{plot_search['id']}']", state="detached")
    assert page.locator(f"tr[data-search-id='{big_search}']").count() == 1
    page.fill("#filter-text", "")
    page.select_option("#filter-status", "failed")
    page.wait_for_selector(f"tr[data-search-id='{big_search}']", state="detached")
    assert "No searches match" in page.inner_text("#searches-table")
    screenshot(page, "searches-filtered")


def test_the_structure_strip_of_a_temporal_subnet_stays_inside_the_page(page, live):
    from services.core.demo_search import insert_synthetic_search

    search_id = insert_synthetic_search(
        live.app.state.engine, trials=12, seed=3, name="temporal", space="temporal"
    )
    open_search(page, live.url, search_id)
    page.wait_for_selector("#structure .stage")
    groups = len({choice.name.split(".")[0] for choice in get_space("temporal").choices()})
    assert page.locator("#structure .stage").count() == groups
    # Every stage card lies inside the structure panel, and the page does not scroll sideways.
    inside = page.evaluate(
        """() => { const panel = document.getElementById('structure').getBoundingClientRect();
            return Array.from(document.querySelectorAll('#structure .stage')).map(s => {
                const r = s.getBoundingClientRect();
                return r.left >= panel.left - 1 && r.right <= panel.right + 1;
            }); }"""
    )
    assert all(inside), inside
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "structure-temporal")


def test_warnings_show_in_the_list_and_on_the_search_page(page, live):
    from services.core.db import SearchRow
    from services.core.demo_search import insert_synthetic_search

    engine = live.app.state.engine
    search_id = insert_synthetic_search(engine, trials=10, seed=5, name="warned")
    warning = "no feasible trial: no subnet met the constraints (the front is empty)"
    with engine.begin() as conn:
        conn.execute(
            sa.update(SearchRow.__table__).where(SearchRow.id == search_id).values(warnings=[warning])
        )
    page.goto(f"{live.url}/")
    badge = page.locator(f"tr[data-search-id='{search_id}'] .badge.warn")
    badge.wait_for()
    assert badge.inner_text() == "1 warning" and badge.get_attribute("title") == warning
    open_search(page, live.url, search_id)
    assert page.inner_text("#search-warnings") == warning
    assert page.locator("#search-header .badge.warn").inner_text() == "1 warning"


def test_the_search_page_shows_the_latency_table_phase(page, live, http):
    # Options no other search of this module used: the table lacks every entry of the space.
    spec = {
        "name": "browser-table-phase",
        "space": "efficientformerv2",
        "space_options": {"resolution": 64, "num_classes": 10},
        "objectives": ["latency:host-cpu-torch", "params"],
        "strategy": "random",
        "budget": {"trials": 2, "parallelism": 1},
        "seed": 2,
    }
    created = http.post("/v1/searches", json=spec).json()
    (table,) = created["measure_first"]
    search_id = created["id"]
    try:
        page.goto(f"{live.url}/?poll=250#/search/{search_id}")
        phase = page.locator("#table-phase:has-text('measuring latency table: ')")
        phase.wait_for(timeout=240_000)
        text = phase.inner_text()
        assert f" / {table['entries']:,} entries of host-cpu-torch, ETA " in text, text
        # The bar counts table entries until the first trial.
        bar = page.locator("#search-progress .progress.table-phase")
        assert bar.get_attribute("title").endswith(f"of {table['entries']} latency-table entries")
        screenshot(page, "search-table-phase")
    finally:
        http.post(f"/v1/searches/{search_id}/cancel")
    wait_for(http, search_id, {"cancelled", "succeeded", "failed"})


BITS_SPEC = {
    "name": "browser-bits-search",
    "space": "unet_bits",
    "space_options": {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32},
    "objectives": ["size_mb", "bits"],
    "strategy": "nsga2",
    "strategy_params": {"population_size": 4},
    "budget": {"trials": 6, "parallelism": 1},
    "seed": 2,
}


def test_a_bit_width_trial_is_drawn_per_stage_with_every_layer_collapsed(page, live, http):
    created = http.post("/v1/searches", json=BITS_SPEC)
    assert created.status_code == 202, created.text
    search_id = created.json()["id"]
    search = wait_for(http, search_id, {"succeeded", "failed", "cancelled"})
    assert search["status"] == "succeeded", search
    open_search(page, live.url, search_id)
    page.wait_for_selector("#precision-view")
    number = int(page.get_attribute("#selected-number", "data-number"))
    view = http.get(f"/v1/dashboard/searches/{search_id}/trials/{number}").json()["precision"]
    rows = page.locator("#precision-stages tr[data-stage]")
    assert rows.count() == len(view["stages"]) == 12
    assert [rows.nth(i).get_attribute("data-stage") for i in range(3)] == ["time", "conv_in", "down0"]
    mid = page.locator("#precision-stages tr[data-stage='mid'] .width-part")
    assert {mid.nth(i).get_attribute("data-bits") for i in range(mid.count())} == set(
        next(s for s in view["stages"] if s["stage"] == "mid")["histogram"]
    )
    # Hundreds of layers and the raw config are there, collapsed.
    layers = page.locator("#precision-layers")
    assert layers.get_attribute("open") is None and not page.locator("#trial-config").is_visible()
    layers.locator("summary").click()
    assert layers.locator("tr").count() == view["layers_total"] == 281
    assert f"{view['layers_total']} quantized layers" in page.inner_text("#precision-view")
    screenshot(page, "bits-trial")


def test_search_page_shows_the_step_log_of_a_stepwise_search(page, live, http, plot_search):
    """An `evolving` search (after `plot_search`: its blocks are measured) shows one Steps row per
    decision, with the action taken."""
    spec = {
        **{k: plot_search["spec"][k] for k in ("space", "space_options", "seed")},
        "name": "browser-steps",
        "objectives": ["latency:host-cpu-torch", "proxy:params"],
        "constraints": ["latency:host-cpu-torch <= 0.0001"],
        "strategy": "evolving",
        "strategy_params": {"group_size": 1, "choices": ["stage1.depth", "stage2.depth"]},
        "budget": {"trials": 8, "parallelism": 2},
    }
    created = http.post("/v1/searches", json=spec)
    assert created.status_code == 202, created.text
    search = wait_for(http, created.json()["id"], {"succeeded", "failed", "cancelled"})
    assert search["status"] == "succeeded", search
    steps = http.get(f"/v1/searches/{search['id']}/steps").json()["items"]
    assert len(steps) == 3
    open_search(page, live.url, search["id"])
    page.wait_for_selector("#steps-table tbody tr")
    rows = page.locator("#steps-table tbody tr")
    assert rows.count() == len(steps)
    first = steps[0]["taken"][0]
    assert f"{first['choice']} {first['from']}\u2192{first['to']}" in rows.nth(0).inner_text()
    assert page.locator("#steps-panel").is_visible()
    screenshot(page, "steps")
