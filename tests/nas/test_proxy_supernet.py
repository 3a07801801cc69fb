"""`supernet_loss` / `supernet_accuracy`: subnets inherited from a checkpoint that `nas.training` wrote."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nas_testing import SMALL_OPTIONS

from nas import SearchSpec, resolve
from nas.proxies import (
    ProxyContext,
    ProxyError,
    available_proxies,
    find_checkpoint,
    get_proxy,
    load_supernet,
    supernet_run_dir,
)
from nas.proxies.supernet import HELD_OUT_SIZE, RECALIBRATION_BATCH, RECALIBRATION_BATCHES, inherited_subnet
from nas.proxies.training_speed import TRAIN_SPEED_STREAM, finetuned_losses, frozen_training_losses
from nas.training import SupernetTrainer, TrainConfig, load_checkpoint
from nas.training.data import batch_generator
from search_spaces import SearchSpace, get_space

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, effv2_space: SearchSpace) -> Path:
    """A checkpoint in the trainer's own format (written by `SupernetTrainer`, before any step),
    in the run directory where searches look for the space's supernet."""
    root = tmp_path_factory.mktemp("supernets")
    config = TrainConfig(
        space=effv2_space.name, options=dict(effv2_space.options), out_dir=supernet_run_dir(effv2_space, root)
    )
    path = SupernetTrainer(config).save_checkpoint()
    assert path is not None
    return path


@pytest.fixture
def supernet_dir(checkpoint: Path) -> Path:
    """The directory of trained supernets that holds `checkpoint`'s run directory."""
    return checkpoint.parent.parent


def test_checkpoint_in_the_run_directory_makes_the_proxies_available(
    effv2_space: SearchSpace, checkpoint: Path, supernet_dir: Path
) -> None:
    assert find_checkpoint(effv2_space, supernet_dir) == checkpoint
    offered = available_proxies(effv2_space, supernet_dir=supernet_dir)
    assert offered["supernet_loss"] == "minimize" and offered["supernet_accuracy"] == "maximize"
    spec = SearchSpec(
        space=effv2_space.name,
        space_options=dict(effv2_space.options),
        objectives=["proxy:supernet_accuracy", "params"],
        constraints=["proxy:supernet_loss <= 5"],
    )
    resolved = resolve(spec, [], supernet_dir=supernet_dir)
    assert resolved.objectives[0].direction == "maximize"
    assert resolved.constraints[0].objective.direction == "minimize"


def test_inherited_subnet_has_the_checkpoint_weights_and_recalibrated_statistics(
    effv2_space: SearchSpace, checkpoint: Path, supernet_dir: Path
) -> None:
    context = ProxyContext(effv2_space, supernet_dir=supernet_dir)
    config = effv2_space.reference_config("s0")
    model = inherited_subnet(context, config)
    assert not model.training
    stored = load_checkpoint(checkpoint)["model"]
    stem = model.blocks[0]
    width = config["stage0.width"]
    assert torch.equal(stem.conv2.conv.weight, stored["stem.conv2.conv.weight"][:width, : width // 2])

    # The stem's first BN saw the stem conv's output on every recalibration batch; with a
    # cumulative average its running mean is the mean of the per-batch channel means.
    task = context.task
    with torch.no_grad():
        means = [
            stem.conv1.conv(task.train_batch(i, RECALIBRATION_BATCH)["images"]).mean((0, 2, 3))
            for i in range(RECALIBRATION_BATCHES)
        ]
    assert torch.allclose(stem.conv1.bn.running_mean, torch.stack(means).mean(0), atol=1e-5, rtol=1e-4)

    held_out = task.held_out_batch(HELD_OUT_SIZE)
    with torch.no_grad():
        logits = model(held_out["images"])
    loss = float(F.cross_entropy(logits, held_out["labels"]))
    accuracy = float((logits.argmax(-1) == held_out["labels"]).float().mean())
    assert get_proxy("supernet_loss").compute(context, config) == pytest.approx(loss, rel=1e-5)
    assert get_proxy("supernet_accuracy").compute(context, config) == pytest.approx(accuracy)


def test_any_run_directory_under_the_root_is_searched_by_space_and_options(
    effv2_space: SearchSpace, checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "my-run"
    run.mkdir()
    os.link(checkpoint, run / checkpoint.name)
    (tmp_path / "empty-run").mkdir()
    assert find_checkpoint(effv2_space, tmp_path) == run / checkpoint.name
    other = get_space("efficientformerv2", resolution=64, num_classes=10)
    assert find_checkpoint(other, tmp_path) is None
    assert "supernet_loss" not in available_proxies(other, supernet_dir=tmp_path)


def test_checkpoint_of_other_options_is_refused(checkpoint: Path) -> None:
    other = get_space("efficientformerv2", resolution=64, num_classes=10)
    with pytest.raises(ProxyError, match=r"at options .*'resolution': 32.*needs space 'efficientformerv2'"):
        load_supernet(other, checkpoint)
    assert load_supernet(
        get_space("efficientformerv2", resolution=32, num_classes=10), checkpoint.parent
    ).path == (checkpoint)


def test_supernet_accuracy_is_for_classification_spaces_only(tmp_path: Path) -> None:
    unet = get_space("unet", latent_size=8, text_tokens=4, cross_attention_dim=32, width_scale=0.0625)
    offered = available_proxies(unet, supernet=True)
    assert "supernet_loss" in offered and "supernet_accuracy" not in offered
    assert "supernet_loss" not in available_proxies(unet, supernet=False)
    with pytest.raises(ProxyError, match="no step-"):
        load_supernet(unet, tmp_path)


def test_finetuned_loss_starts_from_the_inherited_subnet_and_leaves_the_supernet_alone(
    effv2_space: SearchSpace, checkpoint: Path, supernet_dir: Path
) -> None:
    context = ProxyContext(effv2_space, supernet_dir=supernet_dir)
    config = effv2_space.reference_config("s0")
    assert available_proxies(effv2_space, supernet_dir=supernet_dir)["finetuned_loss"] == "minimize"
    assert get_proxy("finetuned_loss").cost == "training"
    inherited = get_proxy("supernet_loss").compute(context, config)
    before, after = finetuned_losses(context, config, steps=3, batch_size=8)
    # Before fine-tuning it is exactly the inherited subnet that `supernet_loss` scores.
    assert before == inherited
    assert math.isfinite(after) and after != before
    # The fine-tuning trained a copy: the loaded supernet (shared by every proxy) is unchanged.
    assert get_proxy("supernet_loss").compute(context, config) == inherited
    assert finetuned_losses(context, config, steps=3, batch_size=8) == (before, after)  # deterministic
    assert get_proxy("finetuned_loss").compute(context, config) == finetuned_losses(context, config)[1]


def test_train_speed_frozen_trains_fresh_temporal_layers_on_the_supernets_image_unet(tmp_path: Path) -> None:
    temporal = get_space("temporal", **SMALL_OPTIONS["temporal"])
    config = TrainConfig(
        space=temporal.name, options=dict(temporal.options), out_dir=supernet_run_dir(temporal, tmp_path)
    )
    trainer = SupernetTrainer(config)
    with torch.no_grad():  # an image UNet unlike a fresh one, so starting from it shows
        for parameter in trainer.supernet.image.parameters():
            parameter.mul_(0.5)
    path = trainer.save_checkpoint()
    assert path is not None
    assert "train_speed_frozen" in available_proxies(temporal, supernet_dir=tmp_path)
    unet = get_space("unet", **SMALL_OPTIONS["unet"])
    assert "train_speed_frozen" not in available_proxies(unet, supernet=True)
    context = ProxyContext(temporal, supernet_dir=tmp_path)
    video = temporal.sample(np.random.default_rng(2))
    losses = frozen_training_losses(context, video, steps=2, batch_size=2)
    # Fresh temporal layers are the identity: the first step's loss is the supernet's image UNet's.
    image_only = context.supernet().supernet.extract(temporal.canonicalize("image")).train()
    batch = context.task.draw(batch_generator(context.task.seed, TRAIN_SPEED_STREAM, 0), 2, held_out=False)
    with torch.no_grad():
        assert losses[0] == pytest.approx(float(context.task.loss(image_only, batch)), rel=1e-5)
    assert losses[1] != losses[0]
    value = get_proxy("train_speed_frozen").compute(context, video)
    assert value == get_proxy("train_speed_frozen").compute(
        ProxyContext(temporal, supernet_dir=tmp_path), video
    )
    assert value != get_proxy("train_speed").compute(context, video)  # that one trains the image UNet too
