"""A bit-width search through the REST API, as a researcher runs it: the space's view, a search on
`size_mb` and `proxy:quant_sensitivity` submitted, watched to the end on Ray, its front read, and a
member exported as packed low-bit weights that load back (real HTTP, small options).

The flow runs twice: on `efficientformerv2_bits` (81 layers, with the event stream and the CLI's
client) and on the small `unet_bits` (255 searched layers; its sensitivity table takes about 20 s
on one busy core), with a checkpoint named by the spec so that the loaded
export can be compared with the fake-quantized module of the same weights."""

from __future__ import annotations

import collections
import copy
from collections.abc import Iterator

import httpx
import pytest
import torch
from svc_helpers import LiveServer, throwaway_server, wait_for

from nas.pareto import non_dominated
from search_spaces import get_space
from search_spaces.precision import MixedPrecisionSpace, quantize_module
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


def test_hundreds_of_widths_are_shown_per_stage(http: httpx.Client) -> None:
    view = http.get("/v1/spaces/unet_bits", params=OPTIONS).json()
    stages = {s["stage"]: s for s in view["layer_stages"]}
    assert list(stages)[:3] == ["time", "conv_in", "down0"] and stages["time"]["searched"] == 0
    assert sum(s["searched"] for s in stages.values()) == len(view["choices"]) == 255
    assert len(view["fixed_layers"]) == 26 and view["fixed_layers"]["down0.resnet0.time_emb_proj"] == 8
    scored = http.post(
        "/v1/spaces/unet_bits/evaluate", json={"config": "w2", "space_options": OPTIONS, "macs": False}
    ).json()
    precision = scored["precision"]
    assert precision["histogram"] == [
        {"bits": 2, "layers": 255, "weights": precision["histogram"][0]["weights"]},
        {"bits": 8, "layers": 26, "weights": precision["histogram"][1]["weights"]},
    ]
    down0 = next(s for s in precision["stages"] if s["stage"] == "down0")
    assert down0["histogram"] == {"2": down0["layers"] - 2, "8": 2}, "two ResNets' time_emb_proj at 8"
    plain = http.post(
        "/v1/spaces/unet/evaluate", json={"config": "sd15", "space_options": OPTIONS, "macs": False}
    )
    assert plain.json()["precision"] is None


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


def test_unet_bits_round_trip_from_submit_to_loaded_export(
    live: LiveServer, http: httpx.Client, tmp_path
) -> None:
    """The issue's done-when on the UNet space itself: a search on `unet_bits` (255 searched layers at
    these options) over HTTP, its front, and a member exported with the weights of a checkpoint the
    spec names, whose loaded outputs are the fake-quantized module's."""
    space = get_space("unet_bits", **OPTIONS)
    assert isinstance(space, MixedPrecisionSpace)
    torch.manual_seed(7)
    trained = space.float_model()
    checkpoint = tmp_path / "unet.pt"
    torch.save(trained.state_dict(), checkpoint)
    options = {**OPTIONS, "weights": str(checkpoint)}
    spec = {**SPEC, "name": "unet bits", "space": "unet_bits", "space_options": options}
    created = http.post("/v1/searches", json=spec)
    assert created.status_code == 202, created.text
    sid = created.json()["id"]
    search = wait_for(http, sid, {"succeeded", "failed", "cancelled"}, timeout_s=600)
    assert search["status"] == "succeeded", search
    trials = http.get(f"/v1/searches/{sid}/trials", params={"limit": 50}).json()["items"]
    assert len(trials) == 5
    front = http.get(f"/v1/searches/{sid}/pareto").json()["items"]
    points = [(t["values"]["size_mb"], t["values"]["proxy:quant_sensitivity"]) for t in trials]
    assert {t["number"] for t in front} == {trials[i]["number"] for i in non_dominated(points).tolist()}

    member = front[0]
    config = space.canonicalize(member["config"])
    assert member["values"]["size_mb"] == pytest.approx(space.weight_storage(config).size_mb)
    assert member["values"]["proxy:quant_sensitivity"] > 0
    exported = http.get(
        f"/v1/searches/{sid}/trials/{member['number']}/export", params={"format": "quantized"}
    )
    assert exported.status_code == 200, exported.text
    header = read_assignment(exported.content)
    assert header["config_id"] == member["config_id"] == space.config_id(config)
    assert {path: entry["bits"] for path, entry in header["layers"].items()} == space.assignment(config)
    detail = http.get(f"/v1/dashboard/searches/{sid}/trials/{member['number']}").json()
    view = detail["precision"]
    assert view["layers_total"] == len(space.layers) == len(view["layers"])
    assert sum(h["layers"] for h in view["histogram"]) == len(space.layers)
    assert {h["bits"]: h["layers"] for h in view["histogram"]} == dict(
        sorted(collections.Counter(space.assignment(config).values()).items())
    )
    assert [s["stage"] for s in view["stages"]][:3] == ["time", "conv_in", "down0"]
    assert [s["stage"] for s in view["stages"]][-2:] == ["up0", "conv_out"]
    assert sum(s["layers"] for s in view["stages"]) == len(space.layers)
    assert view["size_mb"] == pytest.approx(member["values"]["size_mb"], rel=1e-3)
    loaded = load_quantized(space, exported.content).eval()
    fake = quantize_module(copy.deepcopy(trained), space.assignment(config)).eval()
    inputs = space.example_inputs(batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), fake(*inputs))
        assert not torch.equal(loaded(*inputs), trained.eval()(*inputs))
