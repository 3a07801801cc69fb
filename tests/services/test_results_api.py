"""Progress, server-sent events, trials as JSON/CSV/Parquet and the indexed Pareto read, over real HTTP
(uvicorn on a free port), with a real search on Ray and synthetic searches on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from svc_helpers import SMALL_SPEC, LiveServer, service_settings, throwaway_server, wait_for

from nas import SearchSpec
from nas.pareto import non_dominated
from services.client import NasClient
from services.core.db import TrialRow
from services.core.trial_export import EXPORT_CHUNK
from services.server.app import create_app
from services.settings import Settings

FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def live(tmp_path_factory, ray_session) -> Iterator[LiveServer]:
    with throwaway_server(tmp_path_factory.mktemp("results"), scheduler=True, auth_disabled=True) as server:
        yield server


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def followed(live: LiveServer, http: httpx.Client) -> dict:
    """A small search submitted and followed through its event stream from the moment it is queued."""
    body = {**SMALL_SPEC, "name": "followed", "budget": {"trials": 8, "parallelism": 2}}
    created = http.post("/v1/searches", json=body)
    assert created.status_code == 202, created.text
    sid = created.json()["id"]
    with NasClient(live.url) as client:
        events = list(client.events(sid, poll_s=0.1))
    return {"id": sid, "events": events, "search": wait_for(http, sid, FINISHED)}


def only_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    return detail[0]


# ----------------------------------------------------------------------------- progress and events
def test_event_stream_reports_progress_then_ends(followed: dict) -> None:
    events = followed["events"]
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    assert kinds[0] == "progress"  # the stream opened while the search was queued or starting
    done = [data["trials_done"] for _, data in events]
    assert done == sorted(done), "progress never goes backwards"
    assert len(set(done)) >= 2, "trials were reported while the search ran"
    final = events[-1][1]
    assert final["status"] == "succeeded" and "spec" not in final
    progress = final["progress"]
    assert progress["recorded"] == 8 == progress["completed"] + progress["failed"]
    assert progress["remaining"] == 0 and progress["in_flight"] == 0 and progress["eta_s"] == 0.0
    assert progress["fraction"] == 1.0 and progress["trials_per_s"] > 0
    for _, data in events[:-1]:
        p = data["progress"]
        if data["status"] == "running" and data["trials_done"]:
            assert p["eta_s"] is not None and p["eta_s"] >= 0
            assert p["remaining"] == 8 - p["recorded"] and p["in_flight"] == min(2, p["remaining"])


def test_event_stream_reports_the_running_search(live: LiveServer, http: httpx.Client) -> None:
    """Progress of a search between its first and last trial. Eight trials of the small space can all
    be recorded between two reads of the stream (CI saw it), so this search is long enough for the
    stream, reading every 0.05 s, to see it running with trials done."""
    trials = 60
    body = {**SMALL_SPEC, "name": "followed-long", "budget": {"trials": trials, "parallelism": 2}}
    created = http.post("/v1/searches", json=body)
    assert created.status_code == 202, created.text
    with NasClient(live.url) as client:
        events = list(client.events(created.json()["id"], poll_s=0.05))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded", events[-1]
    running = [data["progress"] for _, data in events if data["status"] == "running" and data["trials_done"]]
    assert running, "no progress event of the running search"
    for p in running:
        assert 0 < p["recorded"] <= trials
        assert p["eta_s"] is not None and p["eta_s"] >= 0
        assert p["remaining"] == trials - p["recorded"] and p["in_flight"] == min(2, p["remaining"])


def test_search_progress_matches_its_trials(http: httpx.Client, followed: dict) -> None:
    sid = followed["id"]
    search = http.get(f"/v1/searches/{sid}").json()
    trials = http.get(f"/v1/searches/{sid}/trials", params={"limit": 1000}).json()["items"]
    failed = sum(t["state"] == "failed" for t in trials)
    assert search["progress"]["failed"] == failed
    assert search["progress"]["completed"] == len(trials) - failed
    assert search["progress"]["elapsed_s"] == pytest.approx(search["elapsed_s"])
    for state in ("complete", "failed"):
        page = http.get(f"/v1/searches/{sid}/trials", params={"state": state, "limit": 1000}).json()
        assert page["total"] == len(page["items"]) == sum(t["state"] == state for t in trials)
    assert http.get(f"/v1/searches/{sid}/trials", params={"limit": 1}).json()["total"] == len(trials) == 8


def test_events_of_a_finished_search_end_at_once(http: httpx.Client, followed: dict) -> None:
    response = http.get(f"/v1/searches/{followed['id']}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    assert len(blocks) == 1 and blocks[0].startswith("event: end\nid: 8\ndata: ")
    assert json.loads(blocks[0].split("data: ", 1)[1])["status"] == "succeeded"


def test_queued_search_has_no_estimate(tmp_path) -> None:
    with (
        throwaway_server(tmp_path, auth_disabled=True) as idle,
        httpx.Client(base_url=idle.url) as c,
    ):
        sid = c.post("/v1/searches", json=SMALL_SPEC).json()["id"]
        progress = c.get(f"/v1/searches/{sid}").json()["progress"]
        assert progress == {
            "completed": 0,
            "failed": 0,
            "recorded": 0,
            "in_flight": 0,
            "remaining": 8,
            "fraction": 0.0,
            "elapsed_s": 0.0,
            "trials_per_s": None,
            "eta_s": None,
            "phase": None,
            "latency_table": None,
        }
        # A stream of a queued search starts with its state; the client may leave at any time.
        with c.stream("GET", f"/v1/searches/{sid}/events", params={"poll_s": 0.05}) as stream:
            first = next(stream.iter_lines())
            assert first == "event: progress"


def test_result_endpoints_404_and_422(http: httpx.Client, followed: dict) -> None:
    for path in ("events", "trials/export", "pareto", "trials/0"):
        error = only_error(http.get(f"/v1/searches/{'0' * 32}/{path}"), 404)
        assert "0" * 32 in error["message"]
    sid = followed["id"]
    missing = only_error(http.get(f"/v1/searches/{sid}/trials/99"), 404)
    assert missing["field"] == "number" and missing["allowed"] == "0..7"
    assert (
        only_error(http.get(f"/v1/searches/{sid}/trials", params={"format": "xml"}), 422)["field"] == "format"
    )
    bad_export = only_error(http.get(f"/v1/searches/{sid}/trials/export", params={"format": "json"}), 422)
    assert bad_export["allowed"] == ["csv", "parquet"]
    assert (
        only_error(http.get(f"/v1/searches/{sid}/pareto", params={"limit": 10**5}), 422)["field"] == "limit"
    )
    assert only_error(http.get(f"/v1/searches/{sid}/events", params={"poll_s": 0}), 422)["field"] == "poll_s"
    # Numbers beyond the databases' integer range are refused, not sent to the database.
    assert only_error(http.get(f"/v1/searches/{sid}/trials/{2**40}"), 422)["field"] == "number"
    for path in ("pareto", "trials"):
        assert (
            only_error(http.get(f"/v1/searches/{sid}/{path}", params={"offset": 2**40}), 422)["field"]
            == "offset"
        )


# ----------------------------------------------------------------------------- trials as files
def test_trials_as_json_csv_and_parquet_agree(http: httpx.Client, followed: dict) -> None:
    sid = followed["id"]
    pages = [
        http.get(f"/v1/searches/{sid}/trials", params={"offset": o, "limit": 3}).json() for o in (0, 3, 6)
    ]
    items = [t for page in pages for t in page["items"]]
    assert [t["number"] for t in items] == list(range(8))

    as_csv = http.get(f"/v1/searches/{sid}/trials/export", params={"format": "csv"})
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    assert f'filename="trials-{sid}.csv"' in as_csv.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    same_by_query = http.get(f"/v1/searches/{sid}/trials", params={"format": "csv"}).text
    assert same_by_query == as_csv.text

    as_parquet = http.get(f"/v1/searches/{sid}/trials/export", params={"format": "parquet"})
    assert as_parquet.status_code == 200
    frame = pd.read_parquet(io.BytesIO(as_parquet.content))
    assert len(rows) == len(frame) == 8
    assert frame["number"].tolist() == list(range(8))
    members = http.get(f"/v1/searches/{sid}/pareto").json()["items"]
    assert members == [t for t in items if t["number"] in {m["number"] for m in members}]
    front = {t["number"] for t in members}
    for trial, row, (_, rec) in zip(items, rows, frame.iterrows(), strict=True):
        assert int(row["number"]) == rec["number"] == trial["number"]
        assert row["config_id"] == rec["config_id"] == trial["config_id"]
        assert row["state"] == rec["state"] == trial["state"]
        assert bool(rec["on_front"]) == (trial["number"] in front) == (row["on_front"] == "True")
        for name, value in trial["values"].items():
            assert float(row[f"value.{name}"]) == pytest.approx(value)
            assert rec[f"value.{name}"] == pytest.approx(value)
        for name, value in trial["config"].items():
            assert rec[f"config.{name}"] == value  # typed columns: ints stay ints
            assert row[f"config.{name}"] == str(value)
    assert frame["config.stage2.depth"].dtype == np.int64
    assert frame["finished_at"].dt.tz is not None


def _synthetic_search(engine: sa.Engine, app_queue, n: int) -> str:
    """A search with `n` trials written in bulk (2-objective values on a known front)."""
    spec = SearchSpec.model_validate(
        {
            "space": "efficientformerv2",
            "space_options": {"resolution": 32, "num_classes": 10},
            "objectives": ["params", "macs"],
            "budget": {"trials": n},
        }
    )
    sid = app_queue.submit(spec).id
    rng = np.random.default_rng(n)
    points = rng.random((n, 2))
    front = set(np.flatnonzero(non_dominated(points)).tolist())
    now = datetime.now(UTC)
    rows = [
        {
            "search_id": sid,
            "number": i,
            "config": {"stage0.depth": int(i % 3) + 1, "stage2.width": 96},
            "config_id": f"{i:016x}",
            "state": "failed" if i % 50 == 7 else "complete",
            "values": {} if i % 50 == 7 else {"params": float(points[i, 0]), "macs": float(points[i, 1])},
            "feasible": True,
            "metrics": {"n_blocks": 19, "traceback": "not exported"} if i % 50 == 7 else {"n_blocks": 19},
            "error": "boom" if i % 50 == 7 else None,
            "duration_s": 0.01,
            "finished_at": now,
            "on_front": i in front and i % 50 != 7,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(TrialRow.__table__), rows)
    return sid


@pytest.fixture(params=["sqlite", "postgresql"])
def synthetic_app(request, tmp_path) -> Iterator[LiveServer]:
    """A server without a scheduler on SQLite or on PostgreSQL (skipped when none answers)."""
    if request.param == "sqlite":
        settings = service_settings(tmp_path, auth_disabled=True)
    else:
        engine = request.getfixturevalue("postgres_engine")
        settings = Settings(database_url=engine.url.render_as_string(hide_password=False), auth_disabled=True)
    with LiveServer(create_app(settings, start_scheduler=False)) as server:
        yield server


def test_export_streams_in_chunks_and_pareto_pages(synthetic_app: LiveServer) -> None:
    state = synthetic_app.app.state
    n = EXPORT_CHUNK + 150  # more than one chunk: the keyset pagination must neither skip nor repeat
    sid = _synthetic_search(state.engine, state.queue, n)
    with httpx.Client(base_url=synthetic_app.url, timeout=60) as http:
        text = http.get(f"/v1/searches/{sid}/trials/export", params={"format": "csv"}).text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [int(r["number"]) for r in rows] == list(range(n))
        assert text.count("number,config_id") == 1  # one header
        assert "metric.traceback" not in rows[0] and rows[7]["metric.n_blocks"] == "19"
        failed = pd.read_parquet(
            io.BytesIO(http.get(f"/v1/searches/{sid}/trials/export?format=parquet&state=failed").content)
        )
        assert failed["number"].tolist() == [i for i in range(n) if i % 50 == 7]
        assert set(failed["state"]) == {"failed"} and failed["error"].eq("boom").all()

        walked, after = [], -1  # keyset paging visits every trial once, in order
        while page := http.get(f"/v1/searches/{sid}/trials", params={"after": after, "limit": 1000}).json()[
            "items"
        ]:
            walked += [t["number"] for t in page]
            after = walked[-1]
        assert walked == list(range(n))

        expected = [int(r["number"]) for r in rows if r["on_front"] == "True"]
        whole = http.get(f"/v1/searches/{sid}/pareto").json()
        assert [t["number"] for t in whole["items"]] == expected and whole["total"] == len(expected)
        for member in whole["items"][:5]:  # members read as stored JSON: the same as a trial's answer
            assert member == http.get(f"/v1/searches/{sid}/trials/{member['number']}").json()
        paged = []
        for offset in range(0, len(expected), 3):
            page = http.get(f"/v1/searches/{sid}/pareto", params={"offset": offset, "limit": 3}).json()
            assert page["total"] == len(expected) and page["limit"] == 3
            paged += [t["number"] for t in page["items"]]
        assert paged == expected


def test_pareto_read_uses_the_front_index(tmp_path) -> None:
    from services.core.db import make_engine
    from services.core.migrations import init_db

    engine = make_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    init_db(engine)
    t = TrialRow.__table__
    query = sa.select(t).where((t.c.search_id == "x") & t.c.on_front).order_by(t.c.number)
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = " ".join(str(row) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    engine.dispose()
    assert "USING INDEX ix_trials_search_front (search_id=? AND on_front=?)" in plan
    assert "TEMP B-TREE" not in plan  # ordered by the index: no sort of the members either


def test_a_trials_subnet_as_a_model_file(http: httpx.Client, followed: dict) -> None:
    import onnx

    sid = followed["id"]
    trial = http.get(f"/v1/searches/{sid}/trials/3").json()
    response = http.get(f"/v1/searches/{sid}/trials/3/export", params={"format": "onnx"})
    assert response.status_code == 200, response.text
    assert f"-{trial['config_id']}.onnx" in response.headers["content-disposition"]
    onnx.checker.check_model(onnx.load_model_from_string(response.content))
    assert only_error(http.get(f"/v1/searches/{sid}/trials/99/export"), 404)["field"] == "number"
    assert only_error(http.get(f"/v1/searches/{sid}/trials/3/export?format=tflite"), 422)["field"] == "format"
    # The dashboard offers the export buttons because the route exists.
    caps = http.get("/v1/dashboard/capabilities").json()
    assert caps["export_url"] == "/v1/searches/{search_id}/trials/{number}/export"


def test_pareto_directions_are_the_objectives_own(tmp_path) -> None:
    """Regression: the Pareto answer labelled `proxy:supernet_loss` `maximize` (a copy of the objective
    grammar that treated every proxy as maximised) while the proxy minimises it. The answer, the
    dashboard's list and the grammar must agree, for every registered proxy."""
    from nas.objectives import objective_direction
    from nas.proxies import get_proxy, list_proxies

    app = create_app(service_settings(tmp_path, auth_disabled=True), start_scheduler=False)
    objectives = ["params", "proxy:supernet_loss", "proxy:synflow"]
    spec = SearchSpec.model_validate(
        {"space": "efficientformerv2", "objectives": objectives, "budget": {"trials": 2}}
    )
    sid = app.state.queue.submit(spec).id
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        front = http.get(f"/v1/searches/{sid}/pareto").json()
        listed = http.get("/v1/dashboard/searches").json()["items"][0]
    shown = {o["name"]: o["direction"] for o in front["objectives"]}
    assert shown == {"params": "minimize", "proxy:supernet_loss": "minimize", "proxy:synflow": "maximize"}
    assert {o["name"]: o["direction"] for o in listed["objectives"]} == shown
    for name in list_proxies():
        assert objective_direction(f"proxy:{name}") == get_proxy(name).direction
