"""Expensive requests are bounded (issue 14, item 10), over real HTTP: predict batches and the space
options of predict and evaluate have per-request limits (422 naming them), at most
`NAS_MAX_HEAVY_REQUESTS` run at once (429 with Retry-After) and a request past
`NAS_HEAVY_REQUEST_TIMEOUT_S` answers 503 with Retry-After."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from svc_helpers import LiveServer, throwaway_server

from services.server.deps import heavy_gate
from services.server.schemas import MAX_PREDICT_CONFIGS

SMALL = {"resolution": 64, "num_classes": 10}
EVALUATE = "/v1/spaces/efficientformerv2/evaluate"
PREDICT = "/v1/devices/host-cpu-torch/predict"


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[LiveServer, httpx.Client]]:
    with (
        throwaway_server(tmp_path_factory.mktemp("limits"), max_heavy_requests=1) as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        yield server, http


def detail(response: httpx.Response) -> dict:
    return response.json()["detail"][0]


def test_a_predict_batch_above_the_limit_is_refused(live) -> None:
    _server, http = live
    configs = ["s0"] * (MAX_PREDICT_CONFIGS + 1)
    response = http.post(
        PREDICT, json={"space": "efficientformerv2", "space_options": SMALL, "configs": configs}
    )
    assert response.status_code == 422, response.text
    assert "configs" in str(response.json()["detail"])


@pytest.mark.parametrize("resolution", [480, 1024])
def test_options_above_the_input_limit_are_refused_by_evaluate_and_predict(live, resolution: int) -> None:
    _server, http = live
    options = {"resolution": resolution, "num_classes": 10}
    evaluated = http.post(EVALUATE, json={"config": "s0", "space_options": options, "macs": True})
    predicted = http.post(
        PREDICT, json={"space": "efficientformerv2", "space_options": options, "configs": ["s0"]}
    )
    for response in (evaluated, predicted):
        assert response.status_code == 422, response.text
        assert detail(response)["field"] == "space_options"
        assert "at most 602,112" in detail(response)["message"]  # 4x 3x224x224
        assert "NAS_MAX_REQUEST_INPUT_SCALE" in detail(response)["message"]


def test_a_request_within_the_limits_is_served(live) -> None:
    _server, http = live
    response = http.post(EVALUATE, json={"config": "s0", "space_options": SMALL, "macs": True})
    assert response.status_code == 200, response.text
    assert response.json()["macs"] > 0


def test_more_heavy_requests_than_slots_get_429_with_retry_after(live) -> None:
    server, http = live
    gate = heavy_gate(server.app.state)
    assert gate.acquire(blocking=False)  # the one slot (max_heavy_requests=1), as a running request holds it
    try:
        for path, body in (
            (EVALUATE, {"config": "s0", "space_options": SMALL, "macs": False}),
            (PREDICT, {"space": "efficientformerv2", "space_options": SMALL, "configs": ["s0"]}),
        ):
            response = http.post(path, json=body)
            assert response.status_code == 429, response.text
            assert int(response.headers["retry-after"]) > 0
            assert "NAS_MAX_HEAVY_REQUESTS" in detail(response)["message"]
        # Cheap requests are not gated.
        assert http.get("/v1/spaces/efficientformerv2", params=SMALL).status_code == 200
    finally:
        gate.release()
    response = http.post(EVALUATE, json={"config": "s0", "space_options": SMALL, "macs": False})
    assert response.status_code == 200, response.text


def test_a_request_past_its_time_answers_503_with_retry_after(tmp_path) -> None:
    # A limit that any real work exceeds: the check between configs (or devices) fires.
    with (
        throwaway_server(tmp_path, heavy_request_timeout_s=1e-6) as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
    ):
        predicted = http.post(
            PREDICT, json={"space": "efficientformerv2", "space_options": SMALL, "configs": ["s0", "s1"]}
        )
        evaluated = http.post(
            EVALUATE,
            json={"config": "s0", "space_options": SMALL, "macs": False, "devices": ["host-cpu-torch"]},
        )
        for response in (predicted, evaluated):
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) > 0
            assert "NAS_HEAVY_REQUEST_TIMEOUT_S" in detail(response)["message"]
        # The slot of a timed-out request is free again.
        assert heavy_gate(server.app.state).acquire(blocking=False)
        heavy_gate(server.app.state).release()
