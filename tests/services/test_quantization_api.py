"""A bit-width search through the REST API, as a researcher runs it: the space's view, a search on
`size_mb` and `proxy:quant_sensitivity` submitted, watched to the end on Ray, its front read, and a
member exported as packed low-bit weights that load back (real HTTP, small options).

The search runs on `efficientformerv2_bits` (81 layers, milliseconds per forward pass): on the
277-layer small UNet the sensitivity table alone takes minutes on a loaded 2-core machine, which
`benchmarks/bitwidth.py` measures instead; the UNet's view and its 422s are checked here."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
from svc_helpers import LiveServer, throwaway_server, wait_for

from nas.pareto import non_dominated
from search_spaces import get_space
from search_spaces.quantized_export import load_quantized, read_assignment
from services.client import NasClient

OPTIONS = {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32}
SEARCH_OPTIONS = {"resolution": 32, "num_classes": 10}
SPEC = {
    "name": "bits",
    "space": "efficientformerv2_bits",
    "space_options": SEARCH_OPTIONS,
    "objectives": ["size_mb", "proxy:quant_sensitivity"],
    "strategy": "nsga2",
    "strategy_params": {"population_size": 4},
    "budget": {"trials": 5, "parallelism": 1},
    "seed": 0,
}


@pytest.fixture(scope="module")
def live(tmp_path_factory, ray_session) -> Iterator[LiveServer]:
    with throwaway_server(tmp_path_factory.mktemp("bits"), scheduler=True, auth_disabled=True) as server:
        yield server


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


def test_the_space_view_stays_readable(http: httpx.Client) -> None:
    view = http.get("/v1/spaces/unet_bits", params=OPTIONS)
    assert view.status_code == 200, view.text
    body = view.json()
    assert not any(c["name"].startswith("bits.conv_in") for c in body["choices"])
    assert "bitsfusion" in body["reference_configs"]
    names = [choice["name"] for choice in body["choices"]]
    assert names[0] == "bits.down0.resnet0.conv1" and all(name.startswith("bits.") for name in names)
    bad = http.post("/v1/searches", json={**SPEC, "objectives": ["size_mb", "proxy:quant_sensitivty"]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "objectives[1]"
    assert "proxy:quant_sensitivity" in bad.json()["detail"][0]["allowed"]


def test_submit_watch_front_and_export_a_member(live: LiveServer, http: httpx.Client) -> None:
    created = http.post("/v1/searches", json=SPEC)
    assert created.status_code == 202, created.text
    sid = created.json()["id"]
    with NasClient(live.url) as client:
        events = list(client.events(sid, poll_s=0.1))
    assert events, "the event stream reports the search"
    search = wait_for(http, sid, {"succeeded", "failed", "cancelled"})
    assert search["status"] == "succeeded", search
    trials = http.get(f"/v1/searches/{sid}/trials", params={"limit": 50}).json()["items"]
    assert len(trials) == 5 and all(t["values"]["size_mb"] > 0 for t in trials)
    front = http.get(f"/v1/searches/{sid}/pareto").json()["items"]
    points = [(t["values"]["size_mb"], t["values"]["proxy:quant_sensitivity"]) for t in trials]
    expected = set(non_dominated(points).tolist())
    assert {t["number"] for t in front} == {trials[i]["number"] for i in expected}

    member = front[0]
    space = get_space("efficientformerv2_bits", **SEARCH_OPTIONS)
    assert member["values"]["size_mb"] == pytest.approx(space.weight_storage(member["config"]).size_mb)
    exported = http.get(
        f"/v1/searches/{sid}/trials/{member['number']}/export", params={"format": "quantized"}
    )
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-disposition"].endswith('.quantized.zip"')
    header = read_assignment(exported.content)
    assert header["config_id"] == member["config_id"]
    model = load_quantized(space, exported.content).eval()
    with torch.no_grad():
        output = model(*space.example_inputs())
        assert all(torch.isfinite(t).all() for t in (output if isinstance(output, tuple) else (output,)))
    plain = http.post(
        "/v1/spaces/unet/export", json={"config": "sd15", "format": "quantized", "space_options": OPTIONS}
    )
    assert plain.status_code == 422 and plain.json()["detail"][0]["field"] == "format"
