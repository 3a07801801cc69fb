"""`nas supernet train` through typer's CliRunner, mounted the way the main CLI mounts it: real
training at a tiny size, resume, and exit code 2 with the offending field for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from nas.training import list_checkpoints, load_checkpoint
from services.cli.common import parse_options
from services.cli.supernet import app as supernet_app

root = typer.Typer()
root.add_typer(supernet_app, name="supernet")
runner = CliRunner()

EFFV2 = ["--space", "efficientformerv2", "-o", "resolution=32", "-o", "num_classes=4"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train(*args: str):
    return runner.invoke(root, ["supernet", "train", *args])


def test_train_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--batch-size", "4", "--random-subnets", "0", "--device", "cpu", "--seed", "7"]
    first = train(*EFFV2, "--steps", "2", *common, "--out", str(out))
    assert first.exit_code == 0, first.output
    assert "rule 'sandwich' on cpu, from step 0 to 2" in first.stdout
    assert "held-out loss" in first.stdout and "largest" in first.stdout
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002.pt"]
    state = load_checkpoint(out / "step-00000002.pt")
    assert state["options"]["num_classes"] == 4 and state["config"]["seed"] == 7

    # Settings left out come from the checkpoint; only --steps changes.
    resumed = train("--resume", "--steps", "3", "--out", str(out))
    assert resumed.exit_code == 0, resumed.output
    assert "from step 2 to 3" in resumed.stdout
    state = load_checkpoint(out / "step-00000003.pt")
    assert state["step"] == 3 and len(state["losses"]) == 3 and state["config"]["batch_size"] == 4

    contradicting = train("--resume", "--steps", "4", "--lr", "0.5", "--out", str(out))
    assert contradicting.exit_code == 2
    assert "lr=0.5 contradicts the checkpoint" in contradicting.stderr

    again = train(*EFFV2, "--steps", "2", "--out", str(out))
    assert again.exit_code == 2 and "already holds checkpoints" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "resnet"], "no training task for space 'resnet'"),
        ([*EFFV2, "--rule", "robust"], "rule 'robust' does not apply to space 'efficientformerv2'"),
        ([*EFFV2, "--rule", "sandwitch"], "unknown rule 'sandwitch'"),
        (["--space", "efficientformerv2", "-o", "resolution=33"], "resolution"),
        (["--space", "efficientformerv2", "-o", "colour=red"], "unknown option 'colour'"),
        (["--space", "efficientformerv2", "-o", "resolution"], "--option takes NAME=VALUE"),
        ([*EFFV2, "--steps", "0"], "steps must be >= 1"),
        ([*EFFV2, "--skip-prob", "1.5"], "skip_prob must be in [0, 1)"),
        ([*EFFV2, "--batch-size", "1"], "batch_size >= 2"),
        ([*EFFV2, "--device", "tpu"], "device"),
        ([*EFFV2, "--init-from", "/nonexistent/run"], "init_from"),
        (["--steps", "3"], "--space is required"),
        (["--resume"], "no checkpoint to resume"),
    ],
)
def test_bad_input_is_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = train(*args, "--out", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not list_checkpoints(tmp_path / "run")


def test_typer_level_errors_are_exit_2(tmp_path: Path) -> None:
    assert train(*EFFV2, "--steps", "many", "--out", str(tmp_path)).exit_code == 2
    assert train(*EFFV2, "--steps", "1").exit_code == 2  # --out is required


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_exit_2(tmp_path: Path) -> None:
    result = train(*EFFV2, "--device", "cuda", "--out", str(tmp_path))
    assert result.exit_code == 2 and "no CUDA device" in result.stderr


def test_parse_options_reads_json_values() -> None:
    assert parse_options(["latent_size=8", "width_scale=0.0625", "base=snapgen", "flag=true"]) == {
        "latent_size": 8,
        "width_scale": 0.0625,
        "base": "snapgen",
        "flag": True,
    }


UNET = ["--space", "unet", "-o", "latent_size=8", "-o", "text_tokens=4", "-o", "cross_attention_dim=32",
        "-o", "width_scale=0.0625"]  # fmt: skip


def test_distilled_unet_then_fit_predictor(tmp_path: Path) -> None:
    out = tmp_path / "unet-run"
    trained = train(*UNET, "--steps", "1", "--batch-size", "2", "--distill-subnets", "1", "--out", str(out))
    assert trained.exit_code == 0, trained.output
    assert load_checkpoint(out / "step-00000001.pt")["rule"]["distill_subnets"] == 1

    fit = runner.invoke(
        root, ["supernet", "fit-predictor", *UNET, "--checkpoint", str(out), "--samples", "6", "--folds", "2"]
    )
    assert fit.exit_code == 0, fit.output
    assert "predictor of teacher_distance fitted on 6 subnets: held-out RMSE" in fit.stdout
    stored = json.loads((out / "predictor.json").read_text())
    assert stored["samples"] == 6 and stored["folds"] == 2 and stored["target"] == "teacher_distance"
    assert stored["checkpoint"] == str(out / "step-00000001.pt")
    assert stored["features"] == ["encoding", "log_params", "log_macs"] and len(stored["data"]) == 6

    chosen = ["--feature", "log_macs", "--feature", "naswot"]
    refit = runner.invoke(
        root,
        [
            "supernet",
            "fit-predictor",
            *UNET,
            "--checkpoint",
            str(out),
            "--samples",
            "6",
            "--folds",
            "2",
            *chosen,
        ],
    )
    assert refit.exit_code == 0, refit.output
    assert json.loads((out / "predictor.json").read_text())["features"] == ["log_macs", "naswot"]
    unknown = runner.invoke(
        root, ["supernet", "fit-predictor", *UNET, "--checkpoint", str(out), "--feature", "magic"]
    )
    assert unknown.exit_code == 2 and "predictor features must be distinct names from" in unknown.stderr

    wrong = runner.invoke(
        root, ["supernet", "fit-predictor", *UNET, "--checkpoint", str(out), "--target", "naswot"]
    )
    allowed = "allowed targets: ['finetuned_loss', 'supernet_loss', 'teacher_distance']"
    assert wrong.exit_code == 2 and allowed in wrong.stderr
    nowhere = ["--supernet-dir", str(tmp_path / "no")]
    missing = runner.invoke(root, ["supernet", "fit-predictor", *UNET, *nowhere])
    assert missing.exit_code == 2 and "run `nas supernet train` first" in missing.stderr
    refused = train(*EFFV2, "--distill-subnets", "1", "--out", str(tmp_path / "effv2"))
    assert refused.exit_code == 2 and "distill_subnets applies" in refused.stderr
