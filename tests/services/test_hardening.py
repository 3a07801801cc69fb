"""Bad input never breaks the service, leaks its internals or leaves half-written tables (issue 14,
items 1-8), on SQLite and PostgreSQL: a live server (no scheduler: searches only queue) with API keys,
over real HTTP."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa
from svc_helpers import SMALL_SPEC, LiveServer, backend_live_server

from latency_lut.io import MAX_LATENCY_MS
from latency_lut.key_checks import space_blocks
from services.core.auth import create_key
from services.core.db import DeviceRow
from services.server.input_checks import MAX_FREE_JSON_BYTES, MAX_JSON_DEPTH


def nested(levels: int) -> dict:
    """A JSON object nested `levels` deep: {"a": {"a": ... {}}}."""
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend_server(request, tmp_path_factory) -> Iterator[LiveServer]:
    with backend_live_server(request, tmp_path_factory, "hardening") as live:
        yield live


@pytest.fixture(scope="module")
def api(backend_server: LiveServer) -> Iterator[httpx.Client]:
    token = create_key(backend_server.app.state.engine, "hardening", ["admin"])[1]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=backend_server.url, headers=headers, timeout=60) as client:
        yield client


def refusal(response: httpx.Response, status: int = 422) -> dict:
    assert response.status_code == status, response.text
    return response.json()["detail"][0]


# ------------------------------------------------------------------ item 1: deep and large JSON
def test_deep_device_metadata_is_refused_and_the_device_list_stays_readable(api: httpx.Client) -> None:
    device = {"name": "deep-meta", "runtime": "torch", "hardware": "cpu", "metadata": nested(256)}
    error = refusal(api.post("/v1/devices", json=device))
    assert error["field"].startswith("metadata.a")
    assert str(MAX_JSON_DEPTH) in error["message"] and str(MAX_JSON_DEPTH) in error["allowed"]
    listed = api.get("/v1/devices")
    assert listed.status_code == 200, listed.text
    assert "deep-meta" not in {d["name"] for d in listed.json()["items"]}
    # As deep as allowed is stored and read back unchanged.
    device["metadata"] = nested(MAX_JSON_DEPTH - 1)
    assert api.post("/v1/devices", json=device).status_code == 201
    shown = api.get("/v1/devices/deep-meta")
    assert shown.status_code == 200 and shown.json()["metadata"] == nested(MAX_JSON_DEPTH - 1)


def test_deep_provenance_and_oversized_metadata_are_refused(api: httpx.Client) -> None:
    batch = {
        "run_id": "deep-run",
        "space": "efficientformerv2",
        "space_options": {"resolution": 32},
        "provenance": {"backend": "torch-cpu", "runtime": "torch", "x": nested(300)},
        "measurements": [{"key": "effv2.stem|batch=1|dtype=fp32|hw=32x32|out=32", "samples_ms": [1.0]}],
    }
    error = refusal(api.post("/v1/devices/host-cpu-torch/measurements", json=batch))
    assert error["field"].startswith("provenance.x.a")
    large = {
        "name": "large-meta",
        "runtime": "torch",
        "hardware": "cpu",
        "metadata": {"x": "y" * MAX_FREE_JSON_BYTES},
    }
    error = refusal(api.post("/v1/devices", json=large))
    assert error["field"] == "metadata" and f"{MAX_FREE_JSON_BYTES:,}" in error["message"]
    assert api.get("/v1/devices/large-meta").status_code == 404


# ------------------------------------------------------------------ item 2: NUL characters
@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/searches", {**SMALL_SPEC, "name": "a\x00b"}, "name"),
        ("POST", "/v1/searches", {**SMALL_SPEC, "space_options": {"resolution\x00": 32}}, "space_options"),
        ("POST", "/v1/devices", {"name": "nul-dev", "runtime": "torch", "hardware": "c\x00pu"}, "hardware"),
        ("GET", "/v1/searches/%00", None, "path"),
        ("GET", "/v1/devices/a%00", None, "path"),
        ("GET", "/v1/dashboard/searches?q=%00", None, "q"),
        ("GET", "/v1/searches?status=queued&x%00=1", None, "x"),
    ],
)
def test_nul_characters_are_refused_in_bodies_paths_and_queries(
    api: httpx.Client, method: str, path: str, body: dict | None, field: str
) -> None:
    searches = api.get("/v1/searches").json()["total"]
    error = refusal(api.request(method, path, json=body))
    assert error["field"] == field
    assert "NUL" in error["message"]
    assert api.get("/v1/searches").json()["total"] == searches
    assert api.get("/v1/devices/nul-dev").status_code == 404


# ------------------------------------------------------------------ item 3: 500s leak nothing
def test_an_internal_error_answers_a_request_id_and_logs_the_details(
    api: httpx.Client, backend_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A row the API would refuse now, as an older version could have stored it: reading it fails.
    now = datetime.now(UTC)
    with backend_server.app.state.engine.begin() as conn:
        conn.execute(
            sa.insert(DeviceRow.__table__).values(
                name="legacy-deep",
                runtime="torch",
                hardware="cpu",
                description="",
                metadata=nested(300),
                created_at=now,
                updated_at=now,
            )
        )
    try:
        with caplog.at_level(logging.ERROR, logger="services.server.errors"):
            response = api.get("/v1/devices/legacy-deep", headers={"X-Request-ID": "probe-500"})
        assert response.status_code == 500
        body = response.json()
        assert body["error"] == "internal error" and body["request_id"] == "probe-500"
        assert response.headers["x-request-id"] == "probe-500"
        assert body["detail"][0]["message"] == "internal error (request id probe-500)"
        text = response.text.lower()
        assert "serializ" not in text and "depth" not in text and "select" not in text
        logged = [r for r in caplog.records if "probe-500" in r.getMessage()]
        assert logged and logged[0].exc_info is not None
    finally:
        with backend_server.app.state.engine.begin() as conn:
            conn.execute(sa.delete(DeviceRow.__table__).where(DeviceRow.__table__.c.name == "legacy-deep"))


def test_every_response_carries_a_request_id(api: httpx.Client) -> None:
    first = api.get("/v1/devices").headers["x-request-id"]
    second = api.get("/v1/devices").headers["x-request-id"]
    assert first and second and first != second
    # A client's own id is kept when it is a short token, replaced otherwise.
    assert api.get("/v1/devices", headers={"X-Request-ID": "mine-1"}).headers["x-request-id"] == "mine-1"
    assert api.get("/v1/devices", headers={"X-Request-ID": "x" * 100}).headers["x-request-id"] != "x" * 100


# ------------------------------------------------------------------ item 8: LIKE wildcards
def test_dashboard_search_filter_matches_percent_and_underscore_literally(api: httpx.Client) -> None:
    names = ["100% sure", "a_b net", "plain net"]
    for name in names:
        body = copy.deepcopy(SMALL_SPEC)
        body["name"] = name
        assert api.post("/v1/searches", json=body).status_code == 202

    def found(text: str) -> set[str]:
        page = api.get("/v1/dashboard/searches", params={"q": text, "limit": 200})
        assert page.status_code == 200, page.text
        return {item["name"] for item in page.json()["items"]} & set(names)

    assert found("%") == {"100% sure"}
    assert found("_") == {"a_b net"}
    assert found("a_b") == {"a_b net"}
    assert found("net") == {"a_b net", "plain net"}


# ------------------------------------------------------------------ items 4-6: measurements and tables
def table_csv(rows: list[dict]) -> bytes:
    lines = ["key,median_ms,p10_ms,p90_ms,count,provenance"]
    for r in rows:
        numbers = [r.get("median_ms", 1.0), r.get("p10_ms", 0.9), r.get("p90_ms", 1.1), r.get("count", 5)]
        provenance = json.dumps(r.get("provenance", {})).replace('"', '""')
        lines.append(",".join([r["key"], *map(str, numbers), f'"{provenance}"']))
    return ("\n".join(lines) + "\n").encode()


def put_table(client: httpx.Client, device: str, content: bytes, **params: str) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream"}
    return client.put(f"/v1/devices/{device}/table", content=content, params=params, headers=headers)


UNET_KEYS = [
    prefix + key for key in sorted(space_blocks("unet", {}).keys) for prefix in ("", "ctx@", "call@")
]
EFFV2_64 = sorted(space_blocks("efficientformerv2", {"resolution": 64}).keys)


def test_a_rejected_table_upload_writes_nothing(api: httpx.Client) -> None:
    good = [{"key": key} for key in UNET_KEYS[:5000]]
    bad = {"key": "unet.conv_in|batch=1|dim=" + "9" * 2000}
    error = refusal(put_table(api, "farm-atomic", table_csv([*good, bad])))
    assert error["field"] == "body" and "1024" in error["message"] and "5001" in error["message"]
    assert api.get("/v1/devices/farm-atomic").status_code == 404  # no entry of it exists
    imported = put_table(api, "farm-atomic", table_csv(good))
    assert imported.status_code == 200, imported.text
    assert imported.json()["imported"] == 5000
    assert api.get("/v1/devices/farm-atomic").json()["entries"] == 5000


@pytest.mark.parametrize(
    ("rows", "params", "says"),
    [
        ([{"key": "../../etc/passwd"}], {}, "not a block kind"),
        ([{"key": "effv2.ffn|batch=1|colour=red"}], {}, "takes the arguments"),
        ([{"key": "nokind.block|batch=1|dtype=fp32"}], {}, "not a block kind"),
        ([{"key": UNET_KEYS[0], "p10_ms": 2.0, "median_ms": 1.0, "p90_ms": 0.5}], {}, "p10_ms <= median_ms"),
        ([{"key": UNET_KEYS[0], "count": 10**12}], {}, "column 'count'"),
        ([{"key": UNET_KEYS[0], "median_ms": 1e308, "p90_ms": 1e308}], {}, "column 'median_ms'"),
        ([], {}, "no rows"),
        (
            [{"key": EFFV2_64[0].replace("hw=4x4", "hw=964x64")}],
            {"space": "efficientformerv2", "options": '{"resolution": 64}'},
            "no block of space 'efficientformerv2'",
        ),
        (
            [
                {
                    "key": EFFV2_64[0].replace("hw=4x4", "hw=964x64"),
                    "provenance": {"space": "efficientformerv2", "space_options": {"resolution": 64}},
                }
            ],
            {},
            "no block of space 'efficientformerv2'",
        ),
    ],
)
def test_table_files_with_impossible_rows_are_refused(
    api: httpx.Client, rows: list[dict], params: dict, says: str
) -> None:
    error = refusal(put_table(api, "farm-bad-rows", table_csv(rows), **params))
    assert says in error["message"]
    assert api.get("/v1/devices/farm-bad-rows").status_code == 404


def test_keys_must_be_blocks_of_the_space_at_its_options(api: httpx.Client) -> None:
    assert (
        api.post("/v1/devices", json={"name": "farm-keys", "runtime": "torch", "hardware": "cpu"}).status_code
        == 201
    )
    batch = {
        "run_id": "keys-run",
        "space": "efficientformerv2",
        "space_options": {"resolution": 64},
        "provenance": {"backend": "torch-cpu", "runtime": "torch"},
        "measurements": [
            {"key": EFFV2_64[0], "samples_ms": [1.0]},
            {"key": "ctx@" + EFFV2_64[1].replace("hw=4x4", "hw=964x64"), "samples_ms": [1.0]},
        ],
    }
    error = refusal(api.post("/v1/devices/farm-keys/measurements", json=batch))
    assert error["field"] == "measurements[1].key" and "964x64" in error["message"]
    batch["measurements"][1]["key"] = "ctx@" + EFFV2_64[1]  # the timing prefixes are keys of the space too
    batch["measurements"][1]["after"] = EFFV2_64[0]
    assert api.post("/v1/devices/farm-keys/measurements", json=batch).status_code == 201


def test_finite_samples_never_make_an_infinite_entry(api: httpx.Client) -> None:
    assert (
        api.post("/v1/devices", json={"name": "farm-big", "runtime": "torch", "hardware": "cpu"}).status_code
        == 201
    )
    batch = {
        "run_id": "big-run",
        "space": "efficientformerv2",
        "space_options": {"resolution": 64},
        "provenance": {"backend": "torch-cpu", "runtime": "torch"},
        "measurements": [{"key": EFFV2_64[0], "samples_ms": [1e308, 1e308]}],
    }
    error = refusal(api.post("/v1/devices/farm-big/measurements", json=batch))
    assert error["field"] == "measurements[0].samples_ms[0]" and "3600000" in str(error["allowed"])
    batch["measurements"][0]["samples_ms"] = [MAX_LATENCY_MS, MAX_LATENCY_MS]
    assert api.post("/v1/devices/farm-big/measurements", json=batch).status_code == 201
    exported = api.get("/v1/devices/farm-big/table")
    assert exported.status_code == 200 and "inf" not in exported.text
    # The table's own export imports again.
    again = put_table(api, "farm-big-copy", exported.content)
    assert again.status_code == 200, again.text
    predicted = api.post(
        "/v1/devices/farm-big/predict",
        json={"space": "efficientformerv2", "space_options": {"resolution": 64}, "configs": ["s0"]},
    )
    assert predicted.status_code == 200, predicted.text


def test_tables_this_host_measures_change_only_with_an_admin_key(
    backend_server: LiveServer, api: httpx.Client
) -> None:
    token = create_key(backend_server.app.state.engine, "farm-writer", ["lut:write"])[1]
    writer = {"Authorization": f"Bearer {token}"}
    content = table_csv([{"key": EFFV2_64[0], "median_ms": 0.000001, "p10_ms": 0.000001, "p90_ms": 0.000001}])
    headers = {**writer, "Content-Type": "application/octet-stream"}
    with httpx.Client(base_url=backend_server.url, headers=headers, timeout=60) as farm:
        error = refusal(farm.put("/v1/devices/host-cpu-torch/table", content=content), 403)
        assert error["field"] == "authorization" and error["allowed"] == ["admin", "admin"]
        batch = {
            "run_id": "host-run",
            "space": "efficientformerv2",
            "space_options": {"resolution": 64},
            "provenance": {"backend": "torch-cpu", "runtime": "torch"},
            "measurements": [{"key": EFFV2_64[0], "samples_ms": [0.000001]}],
        }
        assert farm.post("/v1/devices/host-cpu-torch/measurements", json=batch).status_code == 403
        assert api.get("/v1/devices/host-cpu-torch").json()["entries"] == 0
        # Another device's table is the farm's to write.
        assert farm.put("/v1/devices/farm-writable/table", content=content).status_code == 200
    assert put_table(api, "host-cpu-torch", content).status_code == 200  # an admin may
    assert api.get("/v1/devices/host-cpu-torch").json()["entries"] == 1


def test_a_body_that_is_not_utf8_json_is_a_422_naming_the_body(api: httpx.Client) -> None:
    # FastAPI answered this with a 400 `{"detail": "There was an error parsing the body"}`.
    response = api.post("/v1/devices", content=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    error = refusal(response)
    assert error["field"] == "body" and "UTF-8" in error["message"] and error["allowed"] == "a JSON object"
    escaped = api.post(
        "/v1/devices",
        content=b'{"name": "okdev", "hardware": "x\\\\u0000y"}',
        headers={"Content-Type": "application/json"},
    )
    assert refusal(escaped)["field"] == "runtime"  # an escaped backslash, then text: no NUL in it
