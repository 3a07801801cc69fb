"""Supernet training on real supernets at small sizes: the rules do what they promise, the held-out
loss falls, checkpoints resume exactly, bad settings are refused by name."""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.training import (
    NoiseSchedule,
    StepReport,
    SupernetTrainer,
    TrainConfig,
    TrainingConfigError,
    TrainResult,
    list_checkpoints,
    load_checkpoint,
    make_task,
    train_supernet,
    trainable_spaces,
)
from search_spaces import get_space, list_spaces

EFFV2 = {"resolution": 32, "num_classes": 10}
UNET = {"latent_size": 8, "width_scale": 0.0625, "text_tokens": 8, "cross_attention_dim": 32}
TEMPORAL = {**UNET, "frames": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def needs_space(name: str) -> None:
    if name not in list_spaces():
        pytest.skip(f"search space {name!r} is not registered (search_spaces/{name}.py)")


def record_runs(trainer: SupernetTrainer) -> list[tuple[bool, dict[str, Any]]]:
    """(train mode?, active config) of every subnet the trainer runs, in order (the real loss still runs)."""
    seen: list[tuple[bool, dict[str, Any]]] = []
    loss = trainer.task.loss

    def recording(model: Any, batch: Any) -> torch.Tensor:
        seen.append((trainer.supernet.training, dict(trainer.supernet.active_config)))
        return loss(model, batch)

    trainer.task.loss = recording  # type: ignore[method-assign]
    return seen


# ----------------------------------------------------------------------------- data and settings
def test_every_registered_space_with_a_task_is_known() -> None:
    assert {"efficientformerv2", "unet", "temporal"} <= set(trainable_spaces())


def test_batches_are_functions_of_seed_step_and_rank() -> None:
    task = make_task(get_space("efficientformerv2", **EFFV2), seed=3)
    first = task.train_batch(5, 4)
    assert torch.equal(first["images"], task.train_batch(5, 4)["images"])
    assert not torch.equal(first["images"], task.train_batch(6, 4)["images"])
    assert not torch.equal(first["images"], task.train_batch(5, 4, rank=1)["images"])
    assert not torch.equal(first["images"], make_task(task.space, seed=4).train_batch(5, 4)["images"])
    held_out = task.held_out_batch(8)
    assert torch.equal(held_out["images"], task.held_out_batch(8)["images"])
    assert held_out["images"].shape == (8, 3, 32, 32) and int(held_out["labels"].max()) < 10


def test_noise_schedule_and_held_out_timesteps() -> None:
    schedule = NoiseSchedule()
    abar = schedule.alphas_cumprod
    assert abar.shape == (1000,) and bool((abar[1:] < abar[:-1]).all())
    assert 0.99 < float(abar[0]) < 1.0 and float(abar[-1]) < 0.01
    x0, noise = torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    noisy = schedule.add_noise(x0, noise, torch.tensor([0, 999]))
    assert torch.allclose(noisy[0], abar[0].sqrt() * x0[0]) and float(noisy[1].abs().max()) < 0.1
    assert schedule.spread(5).tolist() == [0, 250, 500, 749, 999]


def test_denoising_batches_carry_noise_and_timesteps() -> None:
    needs_space("unet")
    task = make_task(get_space("unet", **UNET))
    train = task.train_batch(0, 3)
    assert train["latents"].shape == (3, 4, 8, 8) and train["text"].shape == (3, 8, 32)
    assert train["noise"].shape == train["latents"].shape
    held_out = task.held_out_batch(4)
    assert held_out["timesteps"].tolist() == [0, 333, 666, 999]
    # Latents are unit-variance fields, like scaled VAE latents.
    assert 0.7 < float(held_out["latents"].std()) < 1.3


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"skip_prob": 1.0}, "skip_prob"),
        ({"rule": "sandwitch"}, "rule"),
        ({"rule": "robust"}, "rule"),
        ({"batch_size": 1}, "batch_size"),
        ({"device": "tpu"}, "device"),
        ({"options": {**EFFV2, "heads": "none"}}, "options.heads"),
        ({"space": "resnet"}, "space"),
        ({"init_from": "/nonexistent/run"}, "init_from"),
    ],
)
def test_bad_settings_name_their_field(changes: dict[str, Any], field: str) -> None:
    config = TrainConfig(**{"space": "efficientformerv2", "options": EFFV2, "steps": 1, **changes})
    with pytest.raises(TrainingConfigError) as caught:
        SupernetTrainer(config)
    assert caught.value.field == field
    assert caught.value.allowed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(TrainingConfigError, match="no CUDA device") as caught:
        SupernetTrainer(TrainConfig(space="efficientformerv2", options=EFFV2, device="cuda"))
    assert caught.value.field == "device"


# ----------------------------------------------------------------------------- sandwich
def test_sandwich_visits_extremes_and_lowers_held_out_loss() -> None:
    reports: list[StepReport] = []
    trainer = SupernetTrainer(
        TrainConfig(space="efficientformerv2", options=EFFV2, steps=10, batch_size=8, lr=2e-3, eval_every=5),
        callback=reports.append,
    )
    runs = record_runs(trainer)
    result = trainer.fit()

    space = trainer.space
    largest, smallest = space.largest(), space.smallest()
    trained = [config for training, config in runs if training]
    assert len(trained) == 40
    assert trained[0::4] == [largest] * 10 and trained[1::4] == [smallest] * 10
    randoms = {space.config_id(c) for i, c in enumerate(trained) if i % 4 >= 2}
    assert len(randoms) >= 15  # the random subnets change from step to step
    evaluated = [config for training, config in runs if not training]
    assert evaluated == [largest, smallest] * 3

    assert [r.step for r in reports] == list(range(1, 11))
    assert all(len(r.subnet_losses) == 4 for r in reports)
    assert [e["step"] for e in result.evaluations] == [0, 5, 10]
    first, last = result.evaluations[0]["losses"], result.evaluations[-1]["losses"]
    assert last["largest"] < 0.8 * first["largest"] and last["smallest"] < 0.8 * first["smallest"]
    assert result.final_eval < result.initial_eval
    assert result.checkpoint is None  # no out_dir, no checkpoint

    # Evaluating touches neither the weights, the BatchNorm statistics nor the random state.
    state = {k: v.clone() for k, v in trainer.supernet.state_dict().items()}
    rng = torch.get_rng_state()
    assert trainer.evaluate() == trainer.evaluate() == result.evaluations[-1]["losses"]
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(v, trainer.supernet.state_dict()[k]) for k, v in state.items())


# ----------------------------------------------------------------------------- robust (UNet)
@dataclass
class UNetRun:
    """One robust-training run of the small UNet, checkpointed every 4 steps (all checkpoints kept)."""

    result: TrainResult
    out_dir: Path
    runs: list[tuple[bool, dict[str, Any]]]
    block_calls: list[int]
    blocks_per_forward: int


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory: pytest.TempPathFactory) -> UNetRun:
    needs_space("unet")
    from search_spaces._unet_modules import ResnetBlock, Transformer

    out_dir = tmp_path_factory.mktemp("unet-run")
    config = TrainConfig(
        space="unet",
        options=UNET,
        steps=8,
        batch_size=2,
        lr=2e-3,
        skip_prob=0.3,
        eval_every=4,
        checkpoint_every=4,
        keep_checkpoints=0,
        out_dir=out_dir,
    )
    trainer = SupernetTrainer(config)
    blocks = [m for m in trainer.supernet.modules() if isinstance(m, ResnetBlock | Transformer)]
    calls = [0]
    for block in blocks:
        block.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    # Blocks one forward of the base subnet runs when nothing is skipped.
    batch = trainer.task.train_batch(0, 1)
    with trainer.task.evaluating(trainer.supernet):
        trainer.task.loss(trainer.supernet, batch)
    per_forward, calls[0] = calls[0], 0

    block_calls: list[int] = []
    runs = record_runs(trainer)
    trainer.callback = lambda report: block_calls.append(calls[0])
    result = trainer.fit()
    return UNetRun(result, out_dir, runs, block_calls, per_forward)


def test_robust_training_skips_blocks_and_lowers_held_out_loss(unet_run: UNetRun) -> None:
    result = unet_run.result
    assert result.rule["rule"] == "robust" and result.rule["skip_prob"] == 0.3
    base = result.rule["base"]
    # Every step trains the base subnet, and so does every evaluation.
    assert [config for _, config in unet_run.runs] == [base] * len(unet_run.runs)
    assert sum(training for training, _ in unet_run.runs) == 8

    # Block calls during training (evaluations, which never skip, are at steps 4 and 8).
    cumulative = unet_run.block_calls
    per_step = [cumulative[0]] + [b - a for a, b in itertools.pairwise(cumulative)]
    train_calls = sum(per_step) - 2 * unet_run.blocks_per_forward
    possible = 8 * unet_run.blocks_per_forward
    skipped = 1 - train_calls / possible
    # p = 0.3 for every block except the ResNets that change width (they always run).
    assert 0.1 < skipped < 0.3 + 0.1, (train_calls, possible)
    assert len(set(per_step)) > 1  # different blocks skipped from step to step

    assert [e["step"] for e in result.evaluations] == [0, 4, 8]
    assert result.evaluations[-1]["losses"]["base"] < 0.9 * result.evaluations[0]["losses"]["base"]


def test_checkpoint_holds_what_resuming_needs(unet_run: UNetRun) -> None:
    assert [p.name for p in list_checkpoints(unet_run.out_dir)] == ["step-00000004.pt", "step-00000008.pt"]
    state = load_checkpoint(unet_run.out_dir / "step-00000004.pt")
    assert state["space"] == "unet" and state["options"] == get_space("unet", **UNET).options
    assert state["step"] == 4 and len(state["losses"]) == 4
    assert {"python", "numpy", "torch", "cuda"} <= set(state["rng"])
    assert state["optimizer"]["state"]  # AdamW moments are there
    assert state["config"]["skip_prob"] == 0.3 and state["rule"]["rule"] == "robust"


def test_resume_continues_exactly(unet_run: UNetRun, tmp_path: Path) -> None:
    # Resume from the step-4 checkpoint alone and go on to step 8: the result must be the straight run's.
    shutil.copy(unet_run.out_dir / "step-00000004.pt", tmp_path / "step-00000004.pt")
    resumed = train_supernet(
        TrainConfig(
            space="unet",
            options=UNET,
            steps=8,
            batch_size=2,
            lr=2e-3,
            skip_prob=0.3,
            eval_every=4,
            checkpoint_every=4,
            keep_checkpoints=0,
            out_dir=tmp_path,
        ),
        resume=True,
    )
    straight = unet_run.result
    assert resumed.steps == 8 and resumed.checkpoint == tmp_path / "step-00000008.pt"
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    assert resumed.evaluations[-1]["mean"] == pytest.approx(straight.evaluations[-1]["mean"], rel=1e-5)
    ours = load_checkpoint(tmp_path / "step-00000008.pt")["model"]
    theirs = load_checkpoint(unet_run.out_dir / "step-00000008.pt")["model"]
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_refuses_contradicting_settings_and_empty_directories(
    unet_run: UNetRun, tmp_path: Path
) -> None:
    with pytest.raises(TrainingConfigError, match=r"lr=0\.5 contradicts") as caught:
        SupernetTrainer.resume(unet_run.out_dir, {"lr": 0.5, "steps": 9})
    assert caught.value.field == "lr" and caught.value.allowed == [2e-3]
    with pytest.raises(TrainingConfigError) as caught:
        SupernetTrainer.resume(unet_run.out_dir, {"options": {**UNET, "latent_size": 16}})
    assert caught.value.field == "options"
    with pytest.raises(TrainingConfigError, match="unknown training setting 'colour'"):
        SupernetTrainer.resume(unet_run.out_dir, {"colour": "red"})
    with pytest.raises(TrainingConfigError, match="no checkpoint to resume"):
        SupernetTrainer.resume(tmp_path)
    with pytest.raises(TrainingConfigError, match="already holds checkpoints") as caught:
        train_supernet(TrainConfig(space="unet", options=UNET, out_dir=unet_run.out_dir))
    assert caught.value.field == "out_dir"


def test_resume_at_the_end_returns_the_finished_run(unet_run: UNetRun) -> None:
    # Same defaults spelled out, nothing left to do: no step is taken and nothing is written.
    before = sorted(p.stat().st_mtime_ns for p in list_checkpoints(unet_run.out_dir))
    result = SupernetTrainer.resume(unet_run.out_dir, {"options": dict(UNET), "rule": "robust"}).fit()
    assert result.steps == 8 and result.losses == unet_run.result.losses
    assert sorted(p.stat().st_mtime_ns for p in list_checkpoints(unet_run.out_dir)) == before


# ----------------------------------------------------------------------------- temporal
def test_temporal_training_moves_only_temporal_layers(unet_run: UNetRun, tmp_path: Path) -> None:
    needs_space("temporal")
    config = TrainConfig(
        space="temporal",
        options=TEMPORAL,
        steps=8,
        batch_size=2,
        lr=3e-3,
        init_from=str(unet_run.out_dir),
        out_dir=tmp_path,
    )
    trainer = SupernetTrainer(config)
    space = trainer.space
    assert trainer.rule.name == "temporal"

    # The frozen image UNet starts as the trained UNet's base subnet (init_from a unet run).
    unet = space.unet.supernet()
    unet.load_state_dict(load_checkpoint(unet_run.out_dir / "step-00000008.pt")["model"])
    expected = unet.extract(space.base_config).state_dict()
    image_before = {k: v.clone() for k, v in trainer.supernet.image.state_dict().items()}
    for name, tensor in expected.items():
        assert torch.equal(image_before[name], tensor), name
    temporal_before = {k: v.clone() for k, v in trainer.supernet.temporal.state_dict().items()}
    trainable = {id(p) for p in trainer.parameters}
    assert trainable == {id(p) for p in trainer.supernet.temporal.parameters()}

    runs = record_runs(trainer)
    result = trainer.fit()

    for name, tensor in trainer.supernet.image.state_dict().items():
        assert torch.equal(tensor, image_before[name]), f"spatial weight {name} changed"
    changed = [
        n for n, t in trainer.supernet.temporal.state_dict().items() if not torch.equal(t, temporal_before[n])
    ]
    assert changed
    trained = [space.config_id(c) for training, c in runs if training]
    assert len(trained) == 16 and len(set(trained)) >= 8  # random temporal configs, two a step
    first, last = result.evaluations[0]["losses"], result.evaluations[-1]["losses"]
    assert min(last[name] / first[name] for name in first) < 0.97
    assert result.final_eval < result.initial_eval


def test_init_from_must_fit_the_space(unet_run: UNetRun) -> None:
    needs_space("temporal")
    other = {**TEMPORAL, "cross_attention_dim": 64}
    with pytest.raises(TrainingConfigError, match="image UNet has options") as caught:
        SupernetTrainer(TrainConfig(space="temporal", options=other, init_from=str(unet_run.out_dir)))
    assert caught.value.field == "init_from"
    with pytest.raises(TrainingConfigError, match="init_from holds a supernet of space 'unet'"):
        SupernetTrainer(
            TrainConfig(space="efficientformerv2", options=EFFV2, init_from=str(unet_run.out_dir))
        )
