"""The device farm API over real HTTP (uvicorn on a free port, a SQLite file): devices, work lists,
bulk idempotent uploads, robust aggregation, predictions with the fallback, accuracy, table files;
and the upload store on PostgreSQL."""

from __future__ import annotations

import copy
import io
import json
import uuid
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
from svc_helpers import SMALL_SPEC, LiveServer, throwaway_server

from latency_lut import SqlLatencyTable
from latency_lut.features import block_features
from latency_lut.key_checks import space_blocks
from search_spaces import get_space
from services.core.measurement_store import MeasurementConflictError, MeasurementRow, MeasurementStore
from services.server.schemas import MAX_BATCH_ROWS

SPACE = "efficientformerv2"
OPTIONS = {"resolution": 32, "num_classes": 10}
PROVENANCE = {"backend": "onnxruntime-cpu", "runtime": "onnxruntime", "onnxruntime": "1.x"}


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    with throwaway_server(tmp_path_factory.mktemp("devices")) as server:
        yield server


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


@pytest.fixture
def device(api: httpx.Client) -> str:
    """A freshly registered device of this test."""
    name = f"farm-{uuid.uuid4().hex[:10]}"
    response = api.post("/v1/devices", json={"name": name, "runtime": "onnxruntime", "hardware": "test cpu"})
    assert response.status_code == 201, response.text
    return name


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["detail"][0]


def batch(run_id: str, rows: list[dict], **changes) -> dict:
    body = {
        "run_id": run_id,
        "space": SPACE,
        "space_options": OPTIONS,
        "provenance": PROVENANCE,
        "measurements": rows,
    }
    body.update(changes)
    return body


#: Uploads name real keys of their space (`latency_lut.key_checks`): the tests that need thousands of
#: distinct keys upload to UNet at its default options (1,706 blocks, three timings each).
MANY = {"space": "unet", "space_options": {}}
MANY_KEYS = [
    prefix + key for key in sorted(space_blocks("unet", {}).keys) for prefix in ("", "ctx@", "call@")
]


def many_key(i: int) -> str:
    """The i-th real UNet table key (counted from 1)."""
    return MANY_KEYS[i - 1]


def many_batch(run_id: str, rows: list[dict], **changes) -> dict:
    return batch(run_id, rows, **{**MANY, **changes})


def entries(api: httpx.Client, device: str) -> int:
    return api.get(f"/v1/devices/{device}").json()["entries"]


# ----------------------------------------------------------------------------- devices
def test_register_list_show_and_conflicts(api: httpx.Client) -> None:
    name = f"phone-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "runtime": "coreml", "hardware": "Apple A16", "metadata": {"os": "iOS 17"}}
    created = api.post("/v1/devices", json=body)
    assert created.status_code == 201
    assert created.json() | {"metadata": None} == {
        "name": name,
        "runtime": "coreml",
        "hardware": "Apple A16",
        "backend": None,
        "description": "",
        "builtin": False,
        "entries": 0,
        "registered": True,
        "metadata": None,
    }
    again = api.post("/v1/devices", json={**body, "metadata": {"os": "iOS 18"}, "description": "lab 2"})
    assert again.status_code == 200 and again.json()["metadata"] == {"os": "iOS 18"}
    listed = {d["name"]: d for d in api.get("/v1/devices").json()["items"]}
    assert listed[name]["registered"] and listed[name]["description"] == "lab 2"
    assert (
        listed["host-cpu-onnxruntime"]["builtin"]
        and listed["host-cpu-onnxruntime"]["backend"] == "onnxruntime-cpu"
    )
    assert api.get(f"/v1/devices/{name}").json()["hardware"] == "Apple A16"

    moved = error(api.post("/v1/devices", json={**body, "hardware": "Apple A17"}), 409)
    assert moved["field"] == "name" and "never change" in moved["message"]
    builtin = error(api.post("/v1/devices", json={**body, "name": "host-cpu-torch"}), 409)
    assert "built in" in builtin["message"]
    bad = error(api.post("/v1/devices", json={**body, "name": "My Phone"}), 422)
    assert bad["field"] == "name" and "pattern" in bad["message"]
    missing = error(api.post("/v1/devices", json={"name": "x1"}), 422)
    assert missing["field"] == "runtime"
    unknown = error(api.get("/v1/devices/nope-device"), 404)
    assert unknown["field"] == "device" and name in unknown["allowed"]


# ----------------------------------------------------------------------------- work lists
def test_work_list_pages_through_every_missing_block(api: httpx.Client, device: str) -> None:
    space = get_space(SPACE, **OPTIONS)
    expected = [spec.key for spec in space.all_blocks()]
    keys, offset = [], 0
    while True:
        page = api.get(
            f"/v1/devices/{device}/work",
            params={
                "space": SPACE,
                "options": json.dumps(OPTIONS),
                "timing": "isolated",
                "offset": offset,
                "limit": 40,
            },
        ).json()
        assert page["needed"] == page["total"] == len(expected)
        keys += [item["key"] for item in page["items"]]
        offset += 40
        if offset >= page["total"]:
            break
    assert keys == expected
    item = page["items"][0]
    assert item["space"] == SPACE and item["options"] == dict(space.options)
    spec = next(s for s in space.all_blocks() if s.key == item["key"])
    assert (item["kind"], item["params"]) == (spec.kind, spec.params)

    s0 = api.get(
        f"/v1/devices/{device}/work",
        params={"space": SPACE, "options": json.dumps(OPTIONS), "configs": "s0", "timing": "isolated"},
    )
    s0_blocks = list({spec.key: spec for spec in space.blocks(space.reference_config("s0"))}.values())
    s0_keys = [spec.key for spec in s0_blocks]
    assert [i["key"] for i in s0.json()["items"]] == s0_keys
    as_json = api.get(
        f"/v1/devices/{device}/work",
        params={
            "space": SPACE,
            "options": json.dumps(OPTIONS),
            "configs": json.dumps([space.reference_config("s0")]),
            "timing": "isolated",
        },
    )
    assert [i["key"] for i in as_json.json()["items"]] == s0_keys

    # By default every timing: each block alone, after its predecessor in s0, and one call's overhead.
    every = api.get(
        f"/v1/devices/{device}/work", params={"space": SPACE, "options": json.dumps(OPTIONS), "configs": "s0"}
    ).json()
    assert every["total"] == 3 * len(s0_keys)
    by_key = {i["key"]: i for i in every["items"]}
    s0_order = space.blocks(space.reference_config("s0"))
    second = s0_blocks[1]
    context = by_key[f"ctx@{second.key}"]
    assert context["timing"] == "in_context" and context["block_key"] == second.key
    assert context["after"] == s0_order[[b.key for b in s0_order].index(second.key) - 1].key
    assert by_key[f"ctx@{s0_keys[0]}"]["after"] is None
    assert by_key[f"call@{second.key}"]["timing"] == "call_overhead"
    assert by_key[second.key]["timing"] == "isolated" and by_key[second.key]["after"] is None

    # Uploaded keys leave the list.
    rows = [{"key": key, "samples_ms": [0.5, 0.6]} for key in s0_keys[:5]]
    assert api.post(f"/v1/devices/{device}/measurements", json=batch("r1", rows)).status_code == 201
    after = api.get(
        f"/v1/devices/{device}/work",
        params={"space": SPACE, "options": json.dumps(OPTIONS), "configs": "s0", "timing": "isolated"},
    )
    assert [i["key"] for i in after.json()["items"]] == s0_keys[5:]
    assert after.json()["needed"] == len(s0_keys)


def test_work_list_of_a_search_uses_its_space_and_options(api: httpx.Client, device: str) -> None:
    spec = copy.deepcopy(SMALL_SPEC)
    spec["space_options"] = {"resolution": 64, "num_classes": 10}
    search = api.post("/v1/searches", json=spec).json()["id"]
    page = api.get(f"/v1/devices/{device}/work", params={"search": search, "limit": 1}).json()
    assert page["space"] == SPACE and page["options"]["resolution"] == 64
    assert page["total"] == 3 * len(get_space(SPACE, resolution=64, num_classes=10).all_blocks())
    assert (
        error(api.get(f"/v1/devices/{device}/work", params={"search": "f" * 32}), 404)["field"] == "search_id"
    )


@pytest.mark.parametrize(
    ("params", "field", "allowed_contains"),
    [
        ({}, "space", "space"),
        ({"space": "nope"}, "space", SPACE),
        ({"space": SPACE, "options": "{bad"}, "options", "a JSON object"),
        ({"space": SPACE, "options": '{"resolution": 33}'}, "options.resolution", "multiple of 32"),
        ({"space": SPACE, "options": '{"colour": 1}'}, "options.colour", "resolution"),
        ({"space": SPACE, "configs": "s0,s9"}, "configs[1]", "s0"),
        ({"space": SPACE, "configs": '[{"stage0.depth": 9}]'}, "configs[0].stage0.depth", "1"),
        ({"space": SPACE, "limit": 0}, "limit", "int in [1, 1000]"),
    ],
)
def test_bad_work_queries_name_the_field(
    api: httpx.Client, device: str, params: dict, field: str, allowed_contains: str
) -> None:
    item = error(api.get(f"/v1/devices/{device}/work", params=params), 422)
    assert item["field"] == field
    assert allowed_contains in str(item["allowed"])


# ----------------------------------------------------------------------------- uploads
def test_thousands_of_rows_in_one_upload_and_a_retry_changes_nothing(api: httpx.Client, device: str) -> None:
    rows = [{"key": many_key(dim), "samples_ms": [1.0 + dim * 1e-4, 1.1, 0.9]} for dim in range(1, 5001)]
    body = many_batch(uuid.uuid4().hex, rows)
    first = api.post(f"/v1/devices/{device}/measurements", json=body)
    assert first.status_code == 201, first.text
    assert first.json() | {"run_id": None} == {
        "device": device,
        "run_id": None,
        "accepted": 5000,
        "duplicates": 0,
        "entries_updated": 5000,
        "outlier_runs": 0,
    }
    assert entries(api, device) == 5000
    retry = api.post(f"/v1/devices/{device}/measurements", json=body).json()
    assert (retry["accepted"], retry["duplicates"], retry["entries_updated"]) == (0, 5000, 0)
    samples = api.get(f"/v1/devices/{device}/samples", params={"key": many_key(7)}).json()["items"]
    assert len(samples) == 1 and samples[0]["samples_ms"] == [1.0007, 1.1, 0.9]
    assert (
        samples[0]["provenance"]["runtime"] == "onnxruntime" and samples[0]["provenance"]["space"] == "unet"
    )


def test_a_low_bit_block_keeps_how_its_weights_ran(api: httpx.Client, device: str) -> None:
    options = {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 4, "cross_attention_dim": 32}
    spec = next(s for s in get_space("unet_bits", **options).blocks("w8") if s.kind == "unet.transformer")
    kernel = {
        "weight_bits": 8,
        "weight_kernel": "torch.ao quantize_dynamic int8 Linear",
        "layers_on_kernel": 10,
    }
    body = batch(
        uuid.uuid4().hex,
        [{"key": spec.key, "samples_ms": [1.0, 1.1], "weight_kernel": kernel}],
        space="unet_bits",
        space_options=options,
    )
    assert api.post(f"/v1/devices/{device}/measurements", json=body).status_code == 201
    [sample] = api.get(f"/v1/devices/{device}/samples", params={"key": spec.key}).json()["items"]
    assert sample["provenance"]["weight_kernel"] == kernel["weight_kernel"]
    assert sample["provenance"]["layers_on_kernel"] == 10 and sample["provenance"]["space"] == "unet_bits"


def test_a_rejected_batch_writes_nothing(api: httpx.Client, device: str) -> None:
    good = [{"key": many_key(dim), "samples_ms": [1.0]} for dim in range(1, 50)]
    run = uuid.uuid4().hex

    bad_kind = error(
        api.post(
            f"/v1/devices/{device}/measurements",
            json=many_batch(run, [*good, {"key": "unet.mlp|dim=3", "samples_ms": [1.0]}]),
        ),
        422,
    )
    assert bad_kind["field"] == "measurements[49].key" and "unet.conv_in" in bad_kind["allowed"]
    bad_args = error(
        api.post(
            f"/v1/devices/{device}/measurements",
            json=many_batch(run, [{"key": "unet.conv_in|dim=3", "samples_ms": [1]}]),
        ),
        422,
    )
    assert "takes the arguments" in bad_args["message"]
    repeated = error(
        api.post(f"/v1/devices/{device}/measurements", json=many_batch(run, [good[0], good[0]])), 422
    )
    assert repeated["field"] == "measurements[1].key" and "appears twice" in repeated["message"]
    negative = error(
        api.post(
            f"/v1/devices/{device}/measurements",
            json=many_batch(run, [{"key": many_key(1), "samples_ms": [1.0, -2.0]}]),
        ),
        422,
    )
    assert (
        negative["field"] == "measurements[0].samples_ms[1]"
        and negative["allowed"] == "float in (0, 3600000.0]"
    )
    text = error(
        api.post(
            f"/v1/devices/{device}/measurements",
            json=many_batch(run, [{"key": many_key(1), "samples_ms": ["fast"]}]),
        ),
        422,
    )
    assert text["field"] == "measurements[0].samples_ms[0]"
    nan_body = json.dumps(batch(run, [{"key": many_key(1), "samples_ms": [float("nan")]}]))
    nan = api.post(
        f"/v1/devices/{device}/measurements", content=nan_body, headers={"Content-Type": "application/json"}
    )
    assert error(nan, 422)["field"] == "measurements[0].samples_ms[0]"
    empty = error(
        api.post(
            f"/v1/devices/{device}/measurements",
            json=many_batch(run, [{"key": many_key(1), "samples_ms": []}]),
        ),
        422,
    )
    assert empty["field"] == "measurements[0].samples_ms"
    too_many = [{"key": f"unet.x|n={n}", "samples_ms": [1.0]} for n in range(MAX_BATCH_ROWS + 1)]
    large = error(api.post(f"/v1/devices/{device}/measurements", json=many_batch(run, too_many)), 422)
    assert large["field"] == "measurements" and large["allowed"] == f"length between 1 and {MAX_BATCH_ROWS}"
    no_runtime = error(
        api.post(
            f"/v1/devices/{device}/measurements", json=many_batch(run, good, provenance={"backend": "x"})
        ),
        422,
    )
    assert no_runtime["field"] == "provenance" and "provenance.runtime" in no_runtime["message"]
    bad_run = error(api.post(f"/v1/devices/{device}/measurements", json=many_batch("run id!", good)), 422)
    assert bad_run["field"] == "run_id"
    unknown = error(api.post("/v1/devices/no-such-farm/measurements", json=many_batch(run, good)), 404)
    assert unknown["field"] == "device"
    bad_space = error(
        api.post(
            f"/v1/devices/{device}/measurements", json=batch(run, good, space_options={"resolution": 31})
        ),
        422,
    )
    assert bad_space["field"] == "space_options.resolution"

    assert entries(api, device) == 0
    assert error(api.get(f"/v1/devices/{device}/samples", params={"key": many_key(1)}), 404)["field"] == "key"


def test_other_samples_under_the_same_run_and_key_conflict(api: httpx.Client, device: str) -> None:
    run = uuid.uuid4().hex
    first = [{"key": many_key(1), "samples_ms": [1.0]}, {"key": many_key(2), "samples_ms": [2.0]}]
    assert api.post(f"/v1/devices/{device}/measurements", json=many_batch(run, first)).status_code == 201
    changed = [{"key": many_key(3), "samples_ms": [3.0]}, {"key": many_key(2), "samples_ms": [2.5]}]
    conflict = error(api.post(f"/v1/devices/{device}/measurements", json=many_batch(run, changed)), 409)
    assert (
        conflict["field"] == "measurements[1].key"
        and "already uploaded different samples" in conflict["message"]
    )
    assert entries(api, device) == 2  # many_key(3) of the rejected batch was not written
    # A new run may measure the key again: it becomes a second run of the entry.
    again = api.post(f"/v1/devices/{device}/measurements", json=many_batch(uuid.uuid4().hex, changed)).json()
    assert again["accepted"] == 2 and entries(api, device) == 3


def test_runs_aggregate_by_median_and_a_far_run_is_flagged(api: httpx.Client, device: str) -> None:
    key = many_key(16)
    medians = {"a": 1.00, "b": 1.02, "c": 0.98, "d": 1.01, "slow": 4.0}
    for run, value in medians.items():
        rows = [{"key": key, "samples_ms": [value * 0.99, value, value * 1.01]}]
        response = api.post(f"/v1/devices/{device}/measurements", json=many_batch(f"{device}-{run}", rows))
        assert response.status_code == 201
    assert response.json()["outlier_runs"] == 1
    entry = pd.read_csv(io.BytesIO(api.get(f"/v1/devices/{device}/table").content)).iloc[0]
    assert entry["median_ms"] == pytest.approx(1.005)
    assert entry["count"] == 12 and entry["p90_ms"] < 1.1
    provenance = json.loads(entry["provenance"])
    assert provenance["outlier_runs"] == [f"{device}-slow"] and provenance["runs"] == 4
    flags = {
        s["run_id"].rsplit("-", 1)[1]: s["outlier"]
        for s in api.get(f"/v1/devices/{device}/samples", params={"key": key}).json()["items"]
    }
    assert flags == {"a": False, "b": False, "c": False, "d": False, "slow": True}


# ----------------------------------------------------------------------------- predictions and accuracy
def _linear_ms(macs: int, moved: int) -> float:
    return 0.01 + 1e-7 * macs + 2e-8 * moved


def test_predictions_fall_back_per_kind_and_accuracy_reports_held_out_pairs(
    api: httpx.Client, device: str
) -> None:
    space = get_space(SPACE, **OPTIONS)
    s0 = space.reference_config("s0")
    # The table: every block of the space but the s0 FFNs at the widest stage-3 width, with features.
    held_back = {spec.key for spec in space.blocks(s0) if spec.kind == "effv2.ffn" and spec["dim"] == 176}
    assert held_back
    rows, truth = [], {}
    for spec in space.all_blocks():
        features = block_features(space, spec)
        truth[spec.key] = _linear_ms(features.macs, features.bytes_moved)
        if spec.key not in held_back:
            rows.append({"key": spec.key, "samples_ms": [truth[spec.key]], "features": features.__dict__})
    timed = batch("table", rows, provenance={**PROVENANCE, "clock": "thread"})
    assert api.post(f"/v1/devices/{device}/measurements", json=timed).status_code == 201

    body = {"space": SPACE, "space_options": OPTIONS, "configs": ["s0", space.reference_config("s1")]}
    predicted = api.post(f"/v1/devices/{device}/predict", json=body).json()
    first = predicted["items"][0]
    assert set(first["estimated_keys"]) == held_back and first["estimated"] and first["complete"]
    exact = sum(truth[spec.key] for spec in space.blocks(s0))
    assert first["total_ms"] == pytest.approx(exact, rel=1e-3)
    assert first["estimated_error_ms"] >= 0 and first["missing_keys"] == []
    assert predicted["fallback"]["fits"]["effv2.ffn"]["n"] > 6
    # Only isolated entries and no measured subnets: the plain block sum prices, its error unknown.
    assert predicted["predictor"]["name"] == "block_sum" and predicted["predictor"]["expected_error"] is None
    assert first["predictor"] == "block_sum" and first["statistic"] == "p10"
    assert predicted["items"][1]["config_id"] == space.config_id(space.reference_config("s1"))

    # Validation pairs (measured twice): predicted now, measured as uploaded.
    measured = exact * 1.08
    pairs = {
        "run_id": "val-1",
        "space": SPACE,
        "space_options": OPTIONS,
        "pairs": [{"config": s0, "samples_ms": [measured], "repeat_samples_ms": [measured * 1.02]}],
    }
    stored = api.post(f"/v1/devices/{device}/accuracy", json=pairs)
    assert stored.status_code == 201, stored.text
    pair = stored.json()["pairs"][0]
    assert pair["predicted_ms"] == pytest.approx(first["total_ms"]) and pair["estimated"]
    assert pair["error"] == pytest.approx(1 / 1.08 - 1, rel=1e-3)
    report = api.get(f"/v1/devices/{device}/accuracy", params={"space": SPACE}).json()
    assert report["n"] == 1 and report["estimated"] == 1 and report["selected"] == "block_sum"
    assert report["rmspe"] == pytest.approx(abs(1 / 1.08 - 1), rel=1e-3)
    assert (report["within_5"], report["within_10"], report["within_15"]) == (0.0, 1.0, 1.0)
    assert report["rmse_ms"] == pytest.approx(measured - first["total_ms"], rel=1e-3)
    assert [r["name"] for r in report["predictors"]] == ["block_sum"]
    # The ceiling: the second measurement judged as a prediction of the first.
    assert report["ceiling"]["n"] == 1 and report["ceiling"]["rmspe"] == pytest.approx(0.02, rel=1e-6)
    assert report["ceiling"]["within_5"] == 1.0
    assert report["pairs"] is None  # the points only on request (the dashboard's plot)
    points = api.get(f"/v1/devices/{device}/accuracy", params={"pairs": "true"}).json()["pairs"]
    expected = [(pair["config_id"], "val-1", True)]
    assert [(p["config_id"], p["run_id"], p["estimated"]) for p in points] == expected
    assert points[0]["predicted_ms"] == pytest.approx(pair["predicted_ms"])
    assert points[0]["measured_ms"] == pytest.approx(measured)
    retry = api.post(f"/v1/devices/{device}/accuracy", json=pairs).json()
    assert retry["pairs"][0]["duplicate"] and api.get(f"/v1/devices/{device}/accuracy").json()["n"] == 1
    changed = {**pairs, "pairs": [{"config": s0, "samples_ms": [measured * 2]}]}
    assert error(api.post(f"/v1/devices/{device}/accuracy", json=changed), 409)["field"] == "pairs[0]"
    bad = {**pairs, "run_id": "val-2", "pairs": [{"config": {"stage0.depth": 99}, "samples_ms": [1.0]}]}
    assert (
        error(api.post(f"/v1/devices/{device}/accuracy", json=bad), 422)["field"]
        == "pairs[0].config.stage0.depth"
    )
    other_clock = {**pairs, "run_id": "val-3", "provenance": {"clock": "wall"}}
    refused = error(api.post(f"/v1/devices/{device}/accuracy", json=other_clock), 422)
    assert refused["field"] == "provenance.clock" and refused["allowed"] == ["thread"]

    # Subnets to measure next: before any learned fit, spread over the space; none already measured.
    work = api.get(
        f"/v1/devices/{device}/work/subnets", params={"space": SPACE, "options": json.dumps(OPTIONS), "n": 12}
    ).json()
    assert len(work["items"]) == 12 and "spreads" in work["items"][0]["reason"]
    ids = [item["config_id"] for item in work["items"]]
    assert len(set(ids)) == 12 and pair["config_id"] not in ids

    # Calibration subnets measured 1.5x their block sums (s0 among them, so no longer held out): the
    # learned global model fits that exactly and wins the selection.
    configs = [s0, *(item["config"] for item in work["items"])]
    calibration = [
        {
            "config": c,
            "samples_ms": [1.5 * sum(truth[spec.key] for spec in space.blocks(space.canonicalize(c)))],
        }
        for c in configs
    ]
    cal = {
        "run_id": "cal-1",
        "role": "calibration",
        "space": SPACE,
        "space_options": OPTIONS,
        "pairs": calibration,
    }
    assert api.post(f"/v1/devices/{device}/accuracy", json=cal).json()["accuracy"] is None
    learned = api.post(f"/v1/devices/{device}/predict", json=body).json()
    assert learned["predictor"]["name"].startswith("learned:")
    assert learned["predictor"]["expected_error"] < 0.01
    candidates = {c["name"]: c for c in learned["predictor"]["candidates"]}
    assert candidates["block_sum"]["rmspe"] == pytest.approx(1 - 1 / 1.5, rel=1e-2)
    assert learned["items"][0]["total_ms"] == pytest.approx(1.5 * first["total_ms"], rel=1e-2)
    plain = api.post(f"/v1/devices/{device}/predict", json={**body, "predictor": "block_sum"}).json()
    assert plain["items"][0]["total_ms"] == pytest.approx(first["total_ms"])
    unknown = error(api.post(f"/v1/devices/{device}/predict", json={**body, "predictor": "magic"}), 422)
    assert unknown["field"] == "predictor" and "block_sum" in unknown["allowed"]
    report = api.get(f"/v1/devices/{device}/accuracy").json()
    assert report["n"] == 0 and report["excluded_calibration"] == 1


def test_table_files_round_trip_over_the_api(api: httpx.Client, device: str) -> None:
    rows = [{"key": many_key(dim), "samples_ms": [0.1 * dim, 0.1 * dim]} for dim in (8, 16, 24)]
    api.post(f"/v1/devices/{device}/measurements", json=many_batch("files", rows))
    for fmt in ("csv", "parquet"):
        exported = api.get(f"/v1/devices/{device}/table", params={"format": fmt})
        assert exported.status_code == 200
        copy_name = f"{device}-copy-{fmt}"
        imported = api.put(
            f"/v1/devices/{copy_name}/table",
            params={"format": fmt},
            content=exported.content,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert imported.json() == {"device": copy_name, "imported": 3}
        shown = api.get(f"/v1/devices/{copy_name}").json()
        assert shown["entries"] == 3 and not shown["registered"] and not shown["builtin"]
    frame = pd.read_csv(io.BytesIO(api.get(f"/v1/devices/{device}-copy-csv/table").content))
    assert sorted(frame["median_ms"]) == pytest.approx([0.8, 1.6, 2.4])

    target = f"{device}-bad"
    bad = (
        "device,key,kind,median_ms,p10_ms,p90_ms,count,provenance\n"
        f"x,{many_key(1)},k,1.0,1.0,1.0,1,{{}}\nx,{many_key(2)},k,-1,1,1,1,{{}}\n"
    ).encode()
    refused = error(
        api.put(f"/v1/devices/{target}/table", content=bad, headers={"Content-Type": "text/csv"}), 422
    )
    assert "median_ms" in refused["message"] and "rows [2]" in refused["message"]
    assert error(api.get(f"/v1/devices/{target}"), 404)["field"] == "device"  # nothing written
    garbage = error(
        api.put(f"/v1/devices/{target}/table", params={"format": "parquet"}, content=b"nope"), 422
    )
    assert garbage["field"] == "body"
    bad_name = error(api.put("/v1/devices/Bad Name/table", content=bad), 422)
    assert bad_name["field"] == "device"


def test_openapi_lists_the_farm_endpoints(api: httpx.Client) -> None:
    paths = set(api.get("/openapi.json").json()["paths"])
    assert {
        "/v1/devices",
        "/v1/devices/{device}",
        "/v1/devices/{device}/work",
        "/v1/devices/{device}/measurements",
        "/v1/devices/{device}/accuracy",
        "/v1/devices/{device}/predict",
        "/v1/devices/{device}/table",
    } <= paths


# ----------------------------------------------------------------------------- the store on PostgreSQL
@pytest.mark.postgres
def test_uploads_on_postgres_are_idempotent_and_atomic(postgres_isolated_engine) -> None:
    store = MeasurementStore(postgres_isolated_engine, SqlLatencyTable(postgres_isolated_engine))
    device = f"pg-{uuid.uuid4().hex[:8]}"
    store.register_device(device, runtime="torch", hardware="cpu", metadata={})
    space = get_space("unet")
    rows = [MeasurementRow(many_key(dim), [1.0, 1.2]) for dim in range(1, 2001)]
    first = store.ingest(device, run_id="r1", space=space, provenance=PROVENANCE, rows=rows)
    assert (first.accepted, first.entries_updated) == (2000, 2000)
    again = store.ingest(device, run_id="r1", space=space, provenance=PROVENANCE, rows=rows)
    assert (again.accepted, again.duplicates) == (0, 2000)
    with pytest.raises(MeasurementConflictError):
        store.ingest(
            device,
            run_id="r1",
            space=space,
            provenance=PROVENANCE,
            rows=[MeasurementRow(many_key(5000), [1.0]), MeasurementRow(many_key(1), [9.0])],
        )
    assert many_key(5000) not in store.lut.keys(device)
    for run, value in (("r2", 1.1), ("r3", 1.1), ("r4", 8.0)):
        store.ingest(
            device,
            run_id=run,
            space=space,
            provenance=PROVENANCE,
            rows=[MeasurementRow(many_key(1), [value])],
        )
    entry = store.lut.get_many(device, [many_key(1)])[many_key(1)]
    assert entry.median_ms == pytest.approx(1.1) and entry.provenance["outlier_runs"] == ["r4"]
    assert [s["outlier"] for s in store.samples(device, many_key(1))] == [False, False, False, True]
