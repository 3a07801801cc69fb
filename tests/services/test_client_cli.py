"""`NasClient` and the `nas search watch|trials|export` and `nas space evaluate|export` commands
against a live server running a real search on Ray."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import onnx
import pandas as pd
import pytest
import torch
from svc_helpers import SMALL_SPEC, LiveServer, throwaway_server
from typer.testing import CliRunner

from search_spaces import get_space
from services.cli import app
from services.client import ClientError, Device, NasClient, Page, ParetoFront, Search, Space, Trial, parse_sse
from services.settings import get_settings

runner = CliRunner()
OPTIONS = ["-o", "resolution=32", "-o", "num_classes=10"]


def nas(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def live(tmp_path_factory, ray_session) -> Iterator[LiveServer]:
    with throwaway_server(tmp_path_factory.mktemp("client"), scheduler=True, auth_disabled=True) as server:
        yield server


@pytest.fixture(scope="module")
def finished(live: LiveServer, tmp_path_factory) -> str:
    """A 4-trial search submitted with `nas search submit --wait` (which follows the event stream)."""
    spec = tmp_path_factory.mktemp("spec") / "spec.json"
    spec.write_text(json.dumps({**SMALL_SPEC, "name": "cli", "budget": {"trials": 4, "parallelism": 2}}))
    result = nas("search", "submit", str(spec), "--server", live.url, "--wait")
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.stdout and "time left" in result.stdout
    return result.stdout.splitlines()[0].split()[-1]


def test_parse_sse_skips_comments_and_joins_data_lines() -> None:
    lines = [": keep-alive", "", "event: progress", "id: 3", 'data: {"a":', "data: 1}", "", "data: [2]", ""]
    assert list(parse_sse(lines)) == [("progress", {"a": 1}), ("message", [2])]


def test_watch_follows_to_the_end(live: LiveServer, finished: str) -> None:
    watched = nas("search", "watch", finished, "--server", live.url, "--poll-s", "0.1")
    assert watched.exit_code == 0, watched.output
    assert "succeeded" in watched.stdout and "4 of 4" in watched.stdout
    with NasClient(live.url) as client:
        seen: list[Search] = []
        final = client.watch(finished, seen.append)
        assert final.status == "succeeded" and seen[-1] == final and final.progress["recorded"] == 4
        assert final.finished and final.trials_done == 4
    unknown = nas("search", "watch", "0" * 32, "--server", live.url)
    assert unknown.exit_code == 2 and "no search" in unknown.output


def test_trials_to_csv_parquet_and_table(live: LiveServer, finished: str, tmp_path: Path) -> None:
    as_csv = tmp_path / "t.csv"
    result = nas("search", "trials", finished, "--format", "csv", "-o", str(as_csv), "--server", live.url)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(as_csv.open()))
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert {"value.params", "value.latency:host-cpu-torch", "config.stage2.depth"} <= set(rows[0])
    as_parquet = tmp_path / "t.parquet"
    result = nas(
        "search", "trials", finished, "--format", "parquet", "-o", str(as_parquet), "--server", live.url
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(as_parquet)
    assert frame["config_id"].tolist() == [r["config_id"] for r in rows]
    table = nas("search", "trials", finished, "--format", "table", "--server", live.url)
    assert table.exit_code == 0 and "4 of 4 trials" in table.stdout
    no_file = nas("search", "trials", finished, "--format", "parquet", "--server", live.url)
    assert no_file.exit_code == 2 and "-o FILE" in no_file.output
    # A refused export leaves no file behind, not even a partial one.
    with NasClient(live.url) as client, pytest.raises(ClientError) as refused:
        client.export_trials("0" * 32, tmp_path / "none.csv")
    assert refused.value.status == 404
    assert not list(tmp_path.glob("none.csv*"))


def test_search_export_of_a_trial_and_a_front_member(live: LiveServer, finished: str, tmp_path: Path) -> None:
    model = tmp_path / "trial0.onnx"
    result = nas("search", "export", finished, "--trial", "0", "-o", str(model), "--server", live.url)
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(model))
    with NasClient(live.url) as client:
        trial0 = client.trial(finished, 0)
        member = client.pareto(finished, limit=1)[0]
    assert trial0.config_id in result.stdout
    front = tmp_path / "front.pt"
    args = ("search", "export", finished, "--front-index", "0", "--format", "torchscript", "-o", str(front))
    result = nas(*args, "--server", live.url)
    assert result.exit_code == 0 and member.config_id in result.stdout, result.output
    assert torch.jit.load(str(front)) is not None
    beyond = nas("search", "export", finished, "--front-index", "99", "-o", str(front), "--server", live.url)
    assert beyond.exit_code == 2 and "members" in beyond.output
    neither = nas("search", "export", finished, "-o", str(front), "--server", live.url)
    assert neither.exit_code == 2 and "--trial" in neither.output


def test_space_evaluate_and_export(live: LiveServer, tmp_path: Path) -> None:
    space = get_space("efficientformerv2", resolution=32, num_classes=10)
    result = nas(
        "space", "evaluate", "efficientformerv2", "-c", "s0", *OPTIONS, "--json", "--server", live.url
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["config_id"] == space.config_id("s0") and body["params"] > 0
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps(space.canonicalize("s0")))
    table = nas(
        "space", "evaluate", "efficientformerv2", "-c", str(config_file), *OPTIONS, "--server", live.url
    )
    assert table.exit_code == 0 and f"{body['params']:,}" in table.stdout
    bad = nas("space", "evaluate", "efficientformerv2", "-c", '{"stage2.depth": 99}', "--server", live.url)
    assert bad.exit_code == 2 and "config.stage2.depth" in bad.output
    model = tmp_path / "s0.pt"
    args = (
        "space",
        "export",
        "efficientformerv2",
        "-c",
        "s0",
        *OPTIONS,
        "--format",
        "torchscript",
        "--output",
        str(model),
    )
    result = nas(*args, "--server", live.url)
    assert result.exit_code == 0, result.output
    (image,) = space.example_inputs()
    assert torch.jit.load(str(model))(image).shape == (1, 10)


def test_client_reads_metrics(live: LiveServer, finished: str) -> None:
    with NasClient(live.url) as client:
        text = client.metrics()
    assert 'nas_searches{status="succeeded"} 1' in text and "nas_scheduler_up 1" in text


def test_client_reads_the_environment_like_the_cli(live: LiveServer, monkeypatch) -> None:
    monkeypatch.setenv("NAS_SERVER_URL", live.url)
    monkeypatch.setenv("NAS_API_KEY", "nas_0123456789ab_secret")
    get_settings.cache_clear()
    with NasClient() as client:
        assert client.base_url == live.url
        assert client._http.headers["authorization"] == "Bearer nas_0123456789ab_secret"
        assert client.health()["status"] == "ok"


def test_trials_and_pareto_dataframes(live: LiveServer, finished: str) -> None:
    with NasClient(live.url) as client:
        trials = client.trials_dataframe(finished)
        front = client.pareto(finished)
        pareto = client.pareto_dataframe(finished)
        final = client.watch(finished, timeout_s=30)
    assert trials["number"].tolist() == [0, 1, 2, 3]
    assert {"value.params", "value.latency:host-cpu-torch", "config.stage2.depth", "on_front"} <= set(trials)
    assert trials["config.stage2.depth"].notna().all()
    assert pareto["number"].tolist() == [t.number for t in front]
    assert list(pareto.columns[:4]) == ["number", "config_id", "value.latency:host-cpu-torch", "value.params"]
    on_front = trials[trials["on_front"]].sort_values("number")
    assert on_front["config_id"].tolist() == pareto["config_id"].tolist()
    assert pareto["value.params"].tolist() == on_front["value.params"].tolist()
    assert final.status == "succeeded"


def test_client_answers_typed_objects(live: LiveServer, finished: str) -> None:
    """Searches, trials, fronts, devices and spaces come back as typed objects with parsed times;
    every list is a `Page` of them (the API's one envelope)."""
    with NasClient(live.url) as client:
        search = client.get(finished)
        page = client.trials(finished, limit=3)
        front = client.pareto(finished)
        listed = client.list(limit=5)
        devices = client.devices()
        spaces = client.spaces()
        space = client.space("efficientformerv2", resolution=32, num_classes=10)
    assert (
        isinstance(search, Search) and search.id == finished and search.spec["space"] == "efficientformerv2"
    )
    assert isinstance(search.created_at, datetime) and search.created_at.tzinfo is not None
    assert search.finished_at is not None and search.finished_at >= search.created_at
    assert isinstance(page, Page) and len(page) == 3 and page.total == 4 and page.limit == 3
    assert all(isinstance(t, Trial) and isinstance(t.finished_at, datetime) for t in page)
    assert [t.number for t in page] == [0, 1, 2] and page[0].values["params"] > 0
    assert isinstance(front, ParetoFront) and front.members == front.items and len(front) == front.total >= 1
    assert [o.name for o in front.objectives] == ["latency:host-cpu-torch", "params"]
    assert front.objectives[1].direction == "minimize" and front.search_id == finished
    assert finished in [s.id for s in listed] and listed.total >= 1
    assert "host-cpu-torch" in [d.name for d in devices] and all(isinstance(d, Device) for d in devices)
    assert devices.total == len(devices) and devices.offset == 0
    assert "efficientformerv2" in [s.name for s in spaces] and all(isinstance(s, Space) for s in spaces)
    assert space.option_values["resolution"] == 32 and space.choices and space.cardinality > 1
    assert "s0" in space.reference_configs


def test_watch_gives_up_after_its_timeout(tmp_path: Path) -> None:
    # A server without a scheduler: its searches stay queued.
    with throwaway_server(tmp_path) as idle, NasClient(idle.url) as client:
        search_id = client.submit(SMALL_SPEC).id
        seen: list[Search] = []
        with pytest.raises(TimeoutError, match="still queued"):
            client.watch(search_id, seen.append, poll_s=0.1, timeout_s=1.0)
        assert seen and seen[-1].status == "queued"


def test_step_log_of_an_evolving_search_through_client_and_cli(live: LiveServer, finished: str) -> None:
    """A real `evolving` run (two depth choices, one removal per step, a target nothing meets): the
    scheduler stores its step log, the API serves it, the client reads it typed, the CLI prints it.
    (After `finished`: the device's table is measured, so the submit can estimate the steps.)"""
    spec = {
        **SMALL_SPEC,
        "name": "steps",
        "objectives": ["latency:host-cpu-torch", "proxy:params"],
        "constraints": ["latency:host-cpu-torch <= 0.0001"],
        "strategy": "evolving",
        "strategy_params": {"group_size": 1, "choices": ["stage1.depth", "stage2.depth"]},
        "budget": {"trials": 8, "parallelism": 2},
    }
    with NasClient(live.url) as client:
        submitted = client.submit(spec)
        # 8 trials buy 3 steps of 2 probes (after the start), far from a 0.1 microsecond target.
        (warning,) = submitted.warnings
        assert "buys about 3 steps of 2 evaluations" in warning
        final = client.wait(submitted.id, poll_s=0.2, timeout_s=240)
        steps = client.steps(submitted.id)
    assert final.status == "succeeded" and warning in final.warnings
    assert isinstance(steps, Page) and steps.total == len(steps) == 3
    assert steps.raw["final"] is True and steps.raw["strategy"] == "evolving"
    for step in steps:
        assert step.kind == "remove" and len(step.taken) == 1 and step.taken[0]["to"] < step.taken[0]["from"]
        assert step.d_latency_ms is not None and step.d_latency_ms < 0
        assert step.ranked_by and "quality lost per ms saved" in step.ranked_by
        # The taken action scores no worse than the runner-up.
        assert step.runner_up is not None and step.score[0] <= step.runner_up["score"]
        assert {p["actions"][0]["choice"] for p in step.raw["probed"]} <= {"stage1.depth", "stage2.depth"}
    shown = nas("search", "steps", submitted.id, "--server", live.url)
    assert shown.exit_code == 0, shown.output
    assert "latency change (ms)" in shown.stdout and "runner-up (score)" in shown.stdout
    first = steps[0].taken[0]
    assert f"{first['choice']} {first['from']}->{first['to']}" in shown.stdout
    assert "3 steps; score: quality lost per ms saved" in shown.stdout
