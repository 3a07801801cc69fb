"""`/metrics` (Prometheus text format), the request body limit (413 JSON) and structured logs, over
real HTTP with a SQLite database."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from svc_helpers import SMALL_SPEC, LiveServer, throwaway_server

from services.core.db import SearchRow
from services.server.middleware import JsonFormatter, configure_logging

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    path = tmp_path_factory.mktemp("metrics")
    with throwaway_server(path, auth_disabled=True, max_body_bytes=LIMIT) as server:
        yield server


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value, checking that every family has HELP and TYPE lines before its samples."""
    samples: dict[str, float] = {}
    declared: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter")
            declared[name] = kind
            continue
        key, value = line.rsplit(" ", 1)
        assert key.split("{")[0] in declared, line
        samples[key] = float(value)
    return samples


def test_metrics_count_searches_trials_and_requests(live: LiveServer, api: httpx.Client) -> None:
    ids = [api.post("/v1/searches", json=SMALL_SPEC).json()["id"] for _ in range(3)]
    api.post(f"/v1/searches/{ids[0]}/cancel")
    # Two searches as the scheduler would leave them: one running (12 trials in 4 s), one done.
    with live.app.state.engine.begin() as conn:
        t = SearchRow.__table__
        conn.execute(
            sa.update(t)
            .where(t.c.id == ids[1])
            .values(status="running", trials_done=6, trials_failed=1, elapsed_s=4.0)
        )
        conn.execute(
            sa.update(t).where(t.c.id == ids[2]).values(status="succeeded", trials_done=8, trials_failed=2)
        )
    assert api.get("/v1/searches/nope").status_code == 404
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    m = parse_metrics(response.text)
    assert m['nas_searches{status="cancelled"}'] == 1
    assert m['nas_searches{status="running"}'] == 1 and m['nas_searches{status="succeeded"}'] == 1
    assert m['nas_searches{status="queued"}'] == 0 and m['nas_searches{status="failed"}'] == 0
    assert m['nas_trials_total{state="complete"}'] == 5 + 6
    assert m['nas_trials_total{state="failed"}'] == m["nas_evaluation_errors_total"] == 3
    assert m["nas_trials_per_second"] == pytest.approx(6 / 4.0)
    assert m["nas_trials_in_flight"] == 2  # the running search's parallelism
    assert m["nas_scheduler_up"] == 0
    assert m['nas_http_requests_total{method="POST",status="202"}'] >= 3
    assert m['nas_http_requests_total{method="GET",status="404"}'] >= 1
    again = parse_metrics(api.get("/metrics").text)
    assert (
        again['nas_http_requests_total{method="GET",status="200"}']
        >= m.get('nas_http_requests_total{method="GET",status="200"}', 0) + 1
    )


def test_body_above_the_limit_is_413_json(api: httpx.Client) -> None:
    before = api.get("/v1/searches").json()["total"]
    big = {**SMALL_SPEC, "name": "x" * 100, "strategy_params": {"pad": "y" * LIMIT}}
    declared = api.post("/v1/searches", json=big)
    assert declared.status_code == 413
    error = declared.json()["detail"][0]
    assert error["field"] == "body" and f"{LIMIT:,} bytes" in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        body = json.dumps(big).encode()
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    streamed = api.post("/v1/searches", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["detail"][0]["field"] == "body"
    assert api.get("/v1/searches").json()["total"] == before  # nothing was queued
    small = api.post("/v1/searches", json={**SMALL_SPEC, "strategy_params": {}})
    assert small.status_code == 202  # under the limit: served as before


def test_every_list_endpoint_caps_its_page(api: httpx.Client) -> None:
    for path, cap in (("/v1/searches", 200), (f"/v1/searches/{'0' * 32}/trials", 1000)):
        response = api.get(path, params={"limit": cap + 1})
        assert response.status_code == 422 and response.json()["detail"][0]["field"] == "limit"


def test_json_logs_one_object_per_line(live: LiveServer, api: httpx.Client, capfd) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("json")
        api.get("/v1/spaces")
        logging.getLogger("services.test").warning("with %s", "args", extra={"search_id": "abc"})
        try:
            raise ValueError("kaput")
        except ValueError:
            logging.getLogger("services.test").exception("failed")
    finally:
        root.handlers, root.level = saved
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    access = next(r for r in lines if r["logger"] == "services.access" and r["path"] == "/v1/spaces")
    assert access["method"] == "GET" and access["status"] == 200 and access["duration_ms"] > 0
    assert access["level"] == "info" and access["time"].endswith("+00:00")
    mine = next(r for r in lines if r["logger"] == "services.test" and r["level"] == "warning")
    assert mine["message"] == "with args" and mine["search_id"] == "abc"
    failed = next(r for r in lines if r["message"] == "failed")
    assert "ValueError: kaput" in failed["exception"]


def test_log_format_comes_from_the_environment(monkeypatch) -> None:
    from services.settings import Settings

    monkeypatch.setenv("NAS_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    monkeypatch.setenv("NAS_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "a\nb", "custom": object()})
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "a\nb" and out["custom"].startswith("<object")
