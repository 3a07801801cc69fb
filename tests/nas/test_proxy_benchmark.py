"""`benchmarks/proxy_correlation.py` end to end at a toy size: truth cached and reused, table printed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "proxy_correlation.py"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proxy_correlation", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def test_toy_run_caches_the_truth_and_reports_every_proxy(
    benchmark: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--spaces",
        "unet",
        "--subnets",
        "4",
        "--steps",
        "1",
        "--supernet-steps",
        "0",
        "--truth-seeds",
        "1",
    ]
    argv += ["--proxies", "params", "synflow", "naswot", "--cache-dir", str(tmp_path), "--json"]
    benchmark.main([*argv, str(tmp_path / "first.json")])
    out = capsys.readouterr().out
    assert "| proxy | needs | rho (loss) | tau (loss) |" in out
    assert all(f"| `{name}` |" in out for name in ("params", "synflow", "naswot"))
    (truth_file,) = tmp_path.glob("proxy_truth-unet-*.json")
    first = json.loads((tmp_path / "first.json").read_text())[0]
    assert len(first["truth"]) == 4 and len(json.loads(truth_file.read_text())["subnets"]) == 4
    params = next(p for p in first["proxies"] if p["name"] == "params")
    quality = [-t["loss"] for t in first["truth"]]
    assert params["spearman"]["loss"] == pytest.approx(benchmark.spearman(params["values"], quality))

    # Cached: a second run trains nothing (the truth file is untouched) and gives the same truth.
    written = truth_file.stat().st_mtime_ns
    benchmark.main([*argv, str(tmp_path / "second.json")])
    second = json.loads((tmp_path / "second.json").read_text())[0]
    assert truth_file.stat().st_mtime_ns == written
    assert second["truth"] == first["truth"] and second["configs"] == first["configs"]


def test_toy_run_with_a_distilled_supernet_scores_teacher_distance_and_the_predictor(
    benchmark: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--spaces",
        "unet",
        "--subnets",
        "3",
        "--steps",
        "1",
        "--supernet-steps",
        "1",
        "--truth-seeds",
        "1",
    ]
    argv += ["--predictor-samples", "6", "--proxies", "params", "teacher_distance", "predicted"]
    benchmark.main([*argv, "--cache-dir", str(tmp_path), "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert "| `teacher_distance` | supernet |" in out and "| `predicted` | predictor |" in out
    assert "1 distilled subnet(s) a step" in out and "`predicted` fitted on 6 other inherited" in out
    assert "teacher_distance from encoding, log_params, log_macs" in out
    assert "default `proxy:default` = `finetuned_loss` against loss: not scored" in out
    (predictor,) = tmp_path.glob("supernets/unet-*/predictor.json")
    stored = json.loads(predictor.read_text())
    assert stored["samples"] == 6 and stored["folds"] == 2 and stored["target"] == "teacher_distance"
    report = json.loads((tmp_path / "out.json").read_text())[0]
    assert report["default"] == "finetuned_loss"
    # Every phase is timed, with the load average beside it, in the report and the printed table.
    assert [p["phase"] for p in report["phases"]] == ["truth (init 0)", "supernet", "predictor", "proxies"]
    assert all(p["seconds"] >= 0 and len(p["load"]) == 3 for p in report["phases"])
    assert "Phases (wall seconds; load average 1/5/15 min as each ended): truth (init 0) " in out
    assert "load average" in out.splitlines()[0]


def test_truth_trained_in_worker_processes_equals_the_truth_trained_here(
    benchmark: ModuleType, tmp_path: Path
) -> None:
    """The subnets of the truth may train in spawned processes: each subnet's result must not depend
    on where it trained (same init, same batches, one torch thread), and every one reaches the cache."""
    setup = benchmark.replace(benchmark.SETUPS["unet"], train_steps=2, held_out=16)
    space = benchmark.get_space(setup.space, **setup.options)
    task = benchmark.make_task(space, 0)
    configs = benchmark.sample_configs(space, 3, seed=0)
    here = benchmark.ground_truth(space, task, configs, setup, 0, tmp_path / "here", jobs=1)
    pooled = benchmark.ground_truth(space, task, configs, setup, 0, tmp_path / "pool", jobs=2)
    assert [t["config"] for t in pooled] == configs
    assert [t["loss"] for t in pooled] == [t["loss"] for t in here]
    assert len({t["loss"] for t in here}) == 3  # distinct subnets, distinct truths
    (cached,) = (tmp_path / "pool").glob("proxy_truth-unet-*.json")
    assert len(json.loads(cached.read_text())["subnets"]) == 3


def test_temporal_truth_trains_its_temporal_layers_on_the_frozen_image_unet(
    benchmark: ModuleType, tmp_path: Path
) -> None:
    """SnapGen-V's setting: the video subnet's image blocks are the trained UNet supernet's (frozen),
    only its temporal layers train; the truth's cache key names the image UNet's checkpoint."""
    unet_setup = benchmark.replace(benchmark.SETUPS["unet"], supernet_steps=1, supernet_batch_size=2)
    image_space = benchmark.get_space(unet_setup.space, **unet_setup.options)
    checkpoint = benchmark.trained_supernet(image_space, unet_setup, 0, tmp_path)
    setup = benchmark.replace(benchmark.SETUPS["temporal"], train_steps=2, batch_size=2, held_out=8)
    assert benchmark.SETUPS["temporal"].truth_image_from == "unet"
    space = benchmark.get_space(setup.space, **setup.options)
    frozen = benchmark.frozen_base(space, benchmark.make_task(space, 0), checkpoint)
    trained = benchmark.get_space("unet", **unet_setup.options).supernet()
    trained.load_state_dict(benchmark.load_checkpoint(checkpoint)["model"])
    image = trained.extract(space.base_config)
    (config,) = benchmark.sample_configs(space, 1, seed=0)

    model = frozen.frozen_start(config)
    kinds = set()
    for block, entry in zip(model.blocks, space.layout(config), strict=True):
        kinds.add(entry.kind)
        if entry.kind == "image":
            source = image.blocks[entry.base_index].state_dict()
            assert all(torch.equal(v, source[k]) for k, v in block.state_dict().items())
            assert not any(p.requires_grad for p in block.parameters())
        else:
            assert all(p.requires_grad for p in block.parameters())
    assert "image" in kinds and len(kinds) >= 2  # image blocks and at least one temporal layer

    task = benchmark.make_task(space, 0)
    frozen = benchmark.ground_truth(space, task, [config], setup, 0, tmp_path, image_checkpoint=checkpoint)
    scratch = benchmark.ground_truth(space, task, [config], setup, 0, tmp_path)
    assert frozen[0]["loss"] != scratch[0]["loss"]
    stored = [json.loads(p.read_text())["settings"] for p in tmp_path.glob("proxy_truth-temporal-*.json")]
    assert sorted("frozen_image" in s for s in stored) == [False, True]
    (named,) = [s["frozen_image"] for s in stored if "frozen_image" in s]
    assert named == f"{checkpoint.parent.name}/{checkpoint.stem}"


def test_an_annealed_truth_is_its_own_truth(benchmark: ModuleType, tmp_path: Path) -> None:
    """`lr_schedule="cosine"` (EfficientFormerV2's truth) trains differently from a constant rate and
    is cached under its own key; constant-rate keys stay as they were; a typo is refused."""
    assert benchmark.SETUPS["efficientformerv2"].lr_schedule == "cosine"
    assert {benchmark.SETUPS[s].lr_schedule for s in ("unet", "temporal")} == {"constant"}
    constant = benchmark.replace(benchmark.SETUPS["unet"], train_steps=2, batch_size=2, held_out=8)
    cosine = benchmark.replace(constant, lr_schedule="cosine")
    space = benchmark.get_space(constant.space, **constant.options)
    task = benchmark.make_task(space, 0)
    (config,) = benchmark.sample_configs(space, 1, seed=0)
    flat = benchmark.ground_truth(space, task, [config], constant, 0, tmp_path)[0]["loss"]
    annealed = benchmark.ground_truth(space, task, [config], cosine, 0, tmp_path)[0]["loss"]
    assert annealed != flat
    stored = [json.loads(p.read_text())["settings"] for p in tmp_path.glob("proxy_truth-unet-*.json")]
    assert sorted(s.get("lr_schedule", "-") for s in stored) == ["-", "cosine"]
    with pytest.raises(ValueError, match="lr_schedule 'linear': expected 'constant' or 'cosine'"):
        benchmark.train_from_scratch(
            space, task, config, benchmark.replace(constant, lr_schedule="linear"), 0
        )
