"""`POST /v1/spaces/{name}/evaluate` and `/export` over real HTTP: objectives now (params and MACs as
the library counts them, latency from a device's table filled through the upload endpoint), and model
files that load and run in torch and ONNX Runtime."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from svc_helpers import LiveServer, throwaway_server

from search_spaces import get_space

SPACE = "efficientformerv2"
OPTIONS = {"resolution": 32, "num_classes": 10}


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    with throwaway_server(tmp_path_factory.mktemp("export"), auth_disabled=True) as server:
        yield server


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=300) as client:
        yield client


def only_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["detail"][0]


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_counts_like_the_library(api: httpx.Client) -> None:
    space = get_space(SPACE, **OPTIONS)
    canonical = space.canonicalize("s1")
    by_name = api.post(f"/v1/spaces/{SPACE}/evaluate", json={"config": "s1", "space_options": OPTIONS})
    assert by_name.status_code == 200, by_name.text
    result = by_name.json()
    assert result["config"] == canonical and result["config_id"] == space.config_id(canonical)
    assert result["params"] == sum(spec.params for spec in space.blocks(canonical))
    assert result["macs"] == space.count(canonical)["macs"] > 0
    assert result["n_blocks"] == len(space.blocks(canonical)) and result["latency"] == {}
    by_config = api.post(
        f"/v1/spaces/{SPACE}/evaluate", json={"config": canonical, "space_options": OPTIONS, "macs": False}
    ).json()
    assert by_config["config_id"] == result["config_id"] and by_config["macs"] is None


def test_evaluate_prices_latency_with_the_covered_share(api: httpx.Client) -> None:
    space = get_space(SPACE, **OPTIONS)
    blocks = space.blocks(space.canonicalize("s0"))
    device = f"farm-{uuid.uuid4().hex[:8]}"
    registered = api.post("/v1/devices", json={"name": device, "runtime": "onnxruntime", "hardware": "cpu"})
    assert registered.status_code == 201, registered.text
    stem = blocks[0].key
    assert stem.startswith("effv2.stem") and sum(b.key == stem for b in blocks) == 1
    medians = {key: 0.5 + i for i, key in enumerate(dict.fromkeys(b.key for b in blocks))}
    rows = [{"key": key, "samples_ms": [ms] * 3} for key, ms in medians.items() if key != stem]
    batch = {
        "run_id": "r1",
        "space": SPACE,
        "space_options": OPTIONS,
        "provenance": {"backend": "onnxruntime-cpu", "runtime": "onnxruntime"},
        "measurements": rows,
    }
    assert api.post(f"/v1/devices/{device}/measurements", json=batch).status_code == 201

    body = {"config": "s0", "space_options": OPTIONS, "devices": [device], "macs": False}
    partial = api.post(f"/v1/spaces/{SPACE}/evaluate", json=body).json()["latency"][device]
    expected_sum = sum(medians[b.key] for b in blocks if b.key != stem)
    assert partial["covered_share"] == pytest.approx((len(blocks) - 1) / len(blocks))
    assert partial["table_ms"] == pytest.approx(expected_sum)
    if partial["complete"]:  # the device's fallback priced the stem: marked as estimated
        assert partial["estimated"] is True and partial["estimated_ms"] > 0 and partial["missing_keys"] == 0
        assert partial["total_ms"] == pytest.approx(expected_sum + partial["estimated_ms"])
    else:
        assert partial["total_ms"] is None
        assert partial["missing_keys"] == 1 and partial["missing_examples"] == [stem]

    batch = {**batch, "run_id": "r2", "measurements": [{"key": stem, "samples_ms": [medians[stem]] * 3}]}
    assert api.post(f"/v1/devices/{device}/measurements", json=batch).status_code == 201
    full = api.post(f"/v1/spaces/{SPACE}/evaluate", json=body).json()["latency"][device]
    assert full["covered_share"] == 1.0 and full["complete"] is True and full["missing_keys"] == 0
    assert full["estimated"] is False and full["estimated_ms"] == 0
    assert full["total_ms"] == pytest.approx(expected_sum + medians[stem])


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("nope/evaluate", {"config": "s0"}, 404, "name"),
        (f"{SPACE}/evaluate", {"config": "s9"}, 422, "config"),
        (f"{SPACE}/evaluate", {"config": {"stage2.depth": 99}}, 422, "config.stage2.depth"),
        (
            f"{SPACE}/evaluate",
            {"config": "s0", "space_options": {"resolution": 50}},
            422,
            "space_options.resolution",
        ),
        (f"{SPACE}/evaluate", {"config": "s0", "devices": ["no-such-device"]}, 404, "devices[0]"),
        (f"{SPACE}/evaluate", {"config": "s0", "devices": ["d"] * 17}, 422, "devices"),
        (f"{SPACE}/evaluate", {"config": "s0", "colour": 1}, 422, "colour"),
        (f"{SPACE}/export", {"config": "s0", "format": "tflite"}, 422, "format"),
        ("unet/export", {"config": "sd15"}, 413, "config"),
    ],
)
def test_bad_requests_name_the_field(
    api: httpx.Client, path: str, body: dict, status: int, field: str
) -> None:
    error = only_error(api.post(f"/v1/spaces/{path}", json=body), status)
    assert error["field"] == field and error["message"]


# ----------------------------------------------------------------------------- export
def _export(api: httpx.Client, fmt: str) -> httpx.Response:
    body = {"config": "s0", "space_options": OPTIONS, "format": fmt}
    response = api.post(f"/v1/spaces/{SPACE}/export", json=body)
    assert response.status_code == 200, response.text
    return response


def test_onnx_export_runs_in_onnxruntime(api: httpx.Client) -> None:
    space = get_space(SPACE, **OPTIONS)
    response = _export(api, "onnx")
    config_id = space.config_id("s0")
    assert f'filename="{SPACE}-{config_id}.onnx"' in response.headers["content-disposition"]
    model = onnx.load_model_from_string(response.content)
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    (image,) = space.example_inputs()
    (logits,) = session.run(None, {"input0": image.numpy()})
    assert logits.shape == (1, 10) and np.isfinite(logits).all()


def test_torchscript_export_loads_and_runs(api: httpx.Client) -> None:
    response = _export(api, "torchscript")
    assert response.headers["content-disposition"].endswith('.pt"')
    module = torch.jit.load(io.BytesIO(response.content))
    (image,) = get_space(SPACE, **OPTIONS).example_inputs()
    with torch.no_grad():
        out = module(image)
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_coreml_export_without_coremltools_is_501(api: httpx.Client) -> None:
    try:
        import coremltools  # noqa: F401
    except ImportError:
        error = only_error(
            api.post(
                f"/v1/spaces/{SPACE}/export",
                json={"config": "s0", "space_options": OPTIONS, "format": "coreml"},
            ),
            501,
        )
        assert error["field"] == "format" and "coremltools" in error["message"]
        assert error["allowed"] == ["torchscript", "onnx"]
    else:
        import zipfile

        archive = zipfile.ZipFile(io.BytesIO(_export(api, "coreml").content))
        assert any(name.startswith("model.mlpackage/") for name in archive.namelist())
