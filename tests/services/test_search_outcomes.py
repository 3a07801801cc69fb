"""Outcomes must not lie (issue 14, item 12), through the real scheduler, Ray and HTTP, on SQLite and
PostgreSQL: a search whose every trial failed ends `failed` with the most common reason; one with no
feasible trial ends `succeeded` with a warning that the API, the dashboard's list and the CLI show."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from svc_helpers import LiveServer, empty_service_database, service_settings, wait_for
from typer.testing import CliRunner

from latency_lut import LatencyEntry, SqlLatencyTable
from search_spaces import get_space
from services.cli import app as cli_app
from services.server.app import create_app

BASE = {
    "space": "efficientformerv2",
    "space_options": {"resolution": 32, "num_classes": 10},
    "strategy": "random",
    "budget": {"trials": 4, "parallelism": 2},
    "seed": 5,
}
FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def live(request, tmp_path, ray_session) -> Iterator[tuple[LiveServer, httpx.Client]]:
    postgres = request.getfixturevalue("postgres_engine") if request.param == "postgres" else None
    with empty_service_database(tmp_path, postgres) as (url, engine):
        # A farm device whose table holds one unrelated block: every subnet misses keys on it.
        SqlLatencyTable(engine).put_many([LatencyEntry("farm-phone", "other.block|a=1", 1.0, 0.9, 1.1, 3)])
        # A farm device whose table holds every block but the stems: its fallback prices those.
        space = get_space(BASE["space"], **BASE["space_options"])
        partial = [
            LatencyEntry("farm-partial", spec.key, ms, ms, ms, 3)
            for spec in space.all_blocks()
            if spec.kind != "effv2.stem"
            for ms in [0.01 + 1e-6 * spec.params]
        ]
        SqlLatencyTable(engine).put_many(partial)
        settings = service_settings(tmp_path, database_url=url)
        with (
            LiveServer(create_app(settings, start_scheduler=True)) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            yield server, http


def submit(http: httpx.Client, **fields) -> dict:
    created = http.post("/v1/searches", json={**BASE, **fields})
    assert created.status_code == 202, created.text
    return wait_for(http, created.json()["id"], FINAL)


def test_a_search_whose_every_trial_failed_is_failed(live) -> None:
    _server, http = live
    search = submit(http, name="all-fail", objectives=["latency:farm-phone", "params"])
    assert search["status"] == "failed", search
    assert search["trials_failed"] == search["trials_done"] == 4
    assert search["error"].startswith("all 4 trials failed; the most common reason (4 of 4): ")
    assert "the latency table of device 'farm-phone' lacks" in search["error"]
    assert search["warnings"] == []


def test_no_feasible_trial_succeeds_with_a_warning_everyone_shows(live) -> None:
    server, http = live
    search = submit(http, name="never-feasible", objectives=["params"], constraints=["params <= 1"])
    assert search["status"] == "succeeded", search
    assert search["front_size"] == 0
    assert len(search["warnings"]) == 1
    assert search["warnings"][0].startswith("no feasible trial: none of the 4 evaluated trials")
    assert "warning" in search["status_message"]
    # The dashboard's list carries them (its badge), and so does the CLI's show and list.
    listed = http.get("/v1/dashboard/searches").json()["items"]
    assert [s["warnings"] for s in listed if s["id"] == search["id"]] == [search["warnings"]]
    cli = CliRunner()
    shown = cli.invoke(cli_app, ["search", "status", search["id"], "--server", server.url])
    assert shown.exit_code == 0, shown.output
    assert "warning" in shown.output and "no feasible trial" in shown.output
    listing = cli.invoke(cli_app, ["search", "list", "--server", server.url], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    assert "succeeded (1 warning)" in listing.output


def test_a_search_without_warnings_lists_none_and_its_curve_ends_at_its_hypervolume(live) -> None:
    _server, http = live
    search = submit(http, name="fine", objectives=["params", "macs"], constraints=["params >= 1"])
    assert (search["status"], search["warnings"]) == ("succeeded", [])
    # The hypervolume the header shows lies within the documented bounds (clipped at the anchors),
    # and the dashboard's curve ends at it.
    assert 0 < search["hypervolume"] <= 1.1**2
    curve = http.get(f"/v1/dashboard/searches/{search['id']}/hypervolume").json()
    assert curve["hypervolume"][-1] == pytest.approx(search["hypervolume"])


def test_a_table_that_lacks_blocks_prices_them_by_its_fallback_and_the_search_says_so(live) -> None:
    _server, http = live
    search = submit(http, name="partial-table", objectives=["latency:farm-partial", "params"])
    assert search["status"] == "succeeded", search
    assert search["trials_failed"] == 0 and search["front_size"] >= 1
    [warning] = search["warnings"]
    assert warning.startswith("latency:farm-partial: the device's latency table lacks ")
    assert "priced by the fallback (marked estimated" in warning
    trials = http.get(f"/v1/searches/{search['id']}/trials").json()["items"]
    assert len(trials) == 4
    for trial in trials:  # every subnet has a stem: each is partly estimated, and says by how much
        assert trial["metrics"]["latency_estimated_ms:farm-partial"] > 0
