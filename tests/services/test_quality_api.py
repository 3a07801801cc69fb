"""Teacher-relative and learned quality through the REST API: a small UNet supernet trained with
distillation and its fitted predictor under the server's supernet directory, `GET /v1/spaces/unet`
listing them, and a real search (scheduler, Ray) scoring subnets with both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from svc_helpers import LiveServer, throwaway_server, wait_for

from nas.proxies import ProxyContext, fit_for_checkpoint, predictor_path, supernet_run_dir
from nas.training import SupernetTrainer, TrainConfig
from search_spaces import get_space

UNET = {"latent_size": 8, "text_tokens": 4, "cross_attention_dim": 32, "width_scale": 0.0625}

# Training, fitting, starting Ray and a search: beyond the default 600 s on a loaded machine.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def supernet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of trained supernets holding a small UNet (2 steps, 1 distilled subnet a step)
    and its predictor fitted on 8 inherited subnets."""
    root = tmp_path_factory.mktemp("supernets")
    space = get_space("unet", **UNET)
    config = TrainConfig(
        space="unet",
        options=UNET,
        steps=2,
        batch_size=2,
        distill_subnets=1,
        out_dir=supernet_run_dir(space, root),
    )
    checkpoint = SupernetTrainer(config).fit().checkpoint
    assert checkpoint is not None
    predictor = fit_for_checkpoint(ProxyContext(space, supernet_checkpoint=checkpoint), samples=8, folds=2)
    predictor.save(predictor_path(checkpoint))
    return root


@pytest.fixture(scope="module")
def http(supernet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server: LiveServer
    with (
        throwaway_server(
            tmp_path_factory.mktemp("quality"), scheduler=True, supernet_dir=supernet_dir
        ) as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
    ):
        yield client


def test_space_lists_its_proxies_and_the_default(http: httpx.Client) -> None:
    body = http.get("/v1/spaces/unet", params=UNET).json()
    proxies = {p["name"]: p for p in body["proxies"]}
    assert proxies["teacher_distance"]["available"] and proxies["teacher_distance"]["direction"] == "minimize"
    assert proxies["predicted"]["available"] and proxies["predicted"]["needs"] == "predictor"
    fitted = proxies["predicted"]["predictor"]
    assert fitted["target"] == "teacher_distance" and fitted["samples"] == 8 and fitted["folds"] == 2
    assert fitted["features"] == ["encoding", "log_params", "log_macs"]
    assert fitted["held_out_rmse"] >= 0 and -1 <= fitted["held_out_spearman"] <= 1
    assert "supernet_accuracy" not in proxies  # a classification proxy does not suit the UNet
    # The benchmark's UNet default (docs/proxies.md): the inherited subnet after a few steps of its own,
    # where a supernet is trained.
    assert body["default_proxy"] == "finetuned_loss" and body["supernet_checkpoint"]

    # At other options nothing is trained: the inherited proxies say what they need.
    other = http.get("/v1/spaces/unet", params={**UNET, "latent_size": 16}).json()
    others = {p["name"]: p for p in other["proxies"]}
    assert not others["teacher_distance"]["available"]
    assert "nas supernet train" in others["teacher_distance"]["requirement"]
    assert "nas supernet fit-predictor" in others["predicted"]["requirement"]
    assert others["train_speed"]["available"] and other["default_proxy"] == "train_speed"
    assert other["supernet_checkpoint"] is None


def test_search_scores_subnets_with_teacher_distance_and_the_predictor(http: httpx.Client) -> None:
    spec = {
        "name": "teacher-relative",
        "space": "unet",
        "space_options": UNET,
        "objectives": ["params", "proxy:teacher_distance", "proxy:predicted"],
        "strategy": "random",
        "budget": {"trials": 3, "parallelism": 1},
        "seed": 1,
    }
    created = http.post("/v1/searches", json=spec)
    assert created.status_code == 202, created.text
    sid = created.json()["id"]
    stored = http.get(f"/v1/searches/{sid}").json()["spec"]
    assert stored["objectives"] == ["params", "proxy:teacher_distance", "proxy:predicted"]
    search = wait_for(http, sid, {"succeeded", "failed"}, timeout_s=900)
    assert search["status"] == "succeeded", search
    trials = http.get(f"/v1/searches/{sid}/trials").json()["items"]
    assert len(trials) == 3 and all(t["state"] == "complete" for t in trials), trials
    for trial in trials:
        assert trial["values"]["proxy:teacher_distance"] >= 0
        assert trial["values"]["proxy:predicted"] > 0  # a distance predicted on the log scale
        assert trial["metrics"]["proxy_seconds:teacher_distance"] > 0


def test_unavailable_quality_proxy_is_a_specific_422(http: httpx.Client) -> None:
    spec = {
        "space": "unet",
        "space_options": {**UNET, "latent_size": 16},
        "objectives": ["params", "proxy:predicted"],
        "budget": {"trials": 2},
    }
    response = http.post("/v1/searches", json=spec)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["field"] == "objectives[1]" and "nas supernet fit-predictor" in detail["message"]
