"""`nas supernet ...`: train a space's weight-sharing supernet on this machine (see docs/training.md).

Mounted by `services.cli` as the `supernet` sub-command. Exit codes: 0 success, 2 bad input (an
unknown space, rule or option, a value out of range, a checkpoint directory that does not fit).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.common import out, parse_options, progress_bar
from services.cli.errors import user_errors

app = typer.Typer(no_args_is_help=True)


@app.callback()
def supernet() -> None:
    """Train weight-sharing supernets (on this machine)."""


@app.command("train")
@user_errors()
def train(
    out_dir: Annotated[Path, typer.Option("--out", help="directory of the checkpoints")],
    space: Annotated[
        str | None, typer.Option("--space", help="unet, temporal or efficientformerv2 (any trainable space)")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="space option NAME=VALUE, repeatable")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="train until this step [100]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="samples per step [8]")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="AdamW learning rate [1e-3]")] = None,
    rule: Annotated[
        str | None, typer.Option("--rule", help="sandwich, robust or temporal [the space's default]")
    ] = None,
    skip_prob: Annotated[
        float | None, typer.Option("--skip-prob", help="robust: probability of skipping each block [0.2]")
    ] = None,
    random_subnets: Annotated[
        int | None, typer.Option("--random-subnets", help="sandwich/temporal: random subnets per step [2]")
    ] = None,
    base_config: Annotated[
        str | None, typer.Option("--base-config", help="robust: reference config to train [largest]")
    ] = None,
    distill_subnets: Annotated[
        int | None,
        typer.Option(
            "--distill-subnets",
            help="robust/temporal: random subnets per step distilled from the base's noise prediction [0]",
        ),
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option("--init-from", help="start from a checkpoint (temporal: from a unet run's checkpoint)"),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of weights, data and subnets [0]")] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda or cuda:N [cuda when available]")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="checkpoint every N steps [only at the end]")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option("--eval-every", help="held-out loss every N steps [start and end]")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the newest checkpoint in --out")] = False,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="CPU threads of torch [half the cores, at least 1]"),
    ] = None,
) -> None:
    """Train a supernet with its space's rule on generated data; checkpoints go to --out.

    With --resume, settings left out come from the checkpoint and settings given must equal it
    (except --steps, --device and the cadences).
    """
    import torch

    from nas.training import StepReport, SupernetTrainer, TrainConfig, latest_checkpoint

    # Every core busy with torch threads turns any other load into stalls of the whole step (measured:
    # 20 sandwich steps took 19 s on 1 thread and over 10 minutes on 2 threads beside one busy process).
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))

    given: dict[str, Any] = {
        name: value
        for name, value in {
            "space": space,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "rule": rule,
            "skip_prob": skip_prob,
            "random_subnets": random_subnets,
            "base_config": base_config,
            "distill_subnets": distill_subnets,
            "init_from": init_from,
            "seed": seed,
            "device": device,
            "checkpoint_every": checkpoint_every,
            "eval_every": eval_every,
        }.items()
        if value is not None
    }
    if option:
        given["options"] = parse_options(option)

    if resume:
        trainer = SupernetTrainer.resume(out_dir, given)
    else:
        if "space" not in given:
            raise ValueError("--space is required (unless --resume continues a run in --out)")
        if latest_checkpoint(out_dir) is not None:
            raise ValueError(
                f"{out_dir} already holds checkpoints; add --resume to continue them or choose another --out"
            )
        trainer = SupernetTrainer(TrainConfig(**given, out_dir=out_dir))
    out.print(
        f"training the {trainer.space.name} supernet with rule {trainer.rule.name!r} on {trainer.device}, "
        f"from step {trainer.step} to {trainer.config.steps}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    with progress_bar(out, *columns) as bar:
        task_id = bar.add_task("training", completed=trainer.step, total=trainer.config.steps, loss="-")

        def on_step(report: StepReport) -> None:
            bar.update(task_id, completed=report.step, loss=f"{report.loss:.4f}")
            if report.eval_losses is not None:
                held_out = ", ".join(f"{k} {v:.4f}" for k, v in report.eval_losses.items())
                bar.console.print(
                    f"step {report.step}: held-out loss {held_out}", highlight=False, soft_wrap=True
                )

        trainer.callback = on_step
        result = trainer.fit()

    table = Table("step", *result.evaluations[-1]["losses"], "mean", title="held-out loss")
    for evaluation in result.evaluations:
        table.add_row(
            str(evaluation["step"]),
            *(f"{v:.4f}" for v in evaluation["losses"].values()),
            f"{evaluation['mean']:.4f}",
        )
    out.print(table)
    out.print(f"checkpoint: {result.checkpoint}", markup=False, highlight=False, soft_wrap=True)


@app.command("fit-predictor")
@user_errors()
def fit_predictor(
    space: Annotated[str, typer.Option("--space", help="the space whose supernet was trained")],
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="space option NAME=VALUE, repeatable")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="checkpoint file or run directory [found under --supernet-dir]"),
    ] = None,
    supernet_dir: Annotated[
        Path, typer.Option("--supernet-dir", help="directory of trained supernets")
    ] = Path("var/supernets"),
    samples: Annotated[
        int, typer.Option("--samples", min=6, help="random subnets whose target is measured [200]")
    ] = 200,
    target: Annotated[
        str | None,
        typer.Option("--target", help="teacher_distance or supernet_loss [teacher_distance where offered]"),
    ] = None,
    folds: Annotated[int, typer.Option("--folds", min=2, help="cross-validation folds [5]")] = 5,
    feature: Annotated[
        list[str] | None,
        typer.Option(
            "--feature",
            help="feature group, repeatable: encoding, log_params, log_macs or a zero-cost proxy's name "
            "[encoding, log_params, log_macs]",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the sampled subnets and folds [0]")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads of torch [1]")] = 1,
) -> None:
    """Fit the space's quality predictor (`proxy:predicted`) on inherited subnets of its supernet.

    Measures --target on --samples seeded random subnets with weights inherited from the checkpoint,
    fits a ridge regression on their --feature groups (by default the config encoding and the log
    parameter and MAC counts; ridge strength by --folds-fold cross-validation) and writes it, with its
    held-out error and training pairs, as predictor.json next to the checkpoint, where searches find it.
    """
    import torch

    from nas.proxies import ProxyContext, ProxyError, find_checkpoint, fit_for_checkpoint, predictor_path
    from nas.proxies.predictor import DEFAULT_FEATURES
    from search_spaces import get_space

    torch.set_num_threads(threads)
    subject = get_space(space, **parse_options(option or []))
    path = checkpoint or find_checkpoint(subject, supernet_dir)
    if path is None:
        raise ValueError(
            f"no trained supernet of space {space!r} at options {subject.options} under {supernet_dir}; "
            "run `nas supernet train` first or pass --checkpoint"
        )
    context = ProxyContext(subject, supernet_checkpoint=path)
    try:
        predictor = fit_for_checkpoint(
            context,
            samples=samples,
            target=target,
            folds=folds,
            seed=seed,
            feature_names=feature or DEFAULT_FEATURES,
        )
    except ProxyError as exc:
        raise ValueError(str(exc)) from None
    written = predictor_path(predictor.checkpoint)
    predictor.save(written)
    table = Table("target", "features", "samples", "measured in", "ridge alpha", "held-out RMSE", "rho",
                  "tau", title=f"quality predictor ({folds}-fold cross-validation)")  # fmt: skip
    table.add_row(
        predictor.target,
        ", ".join(predictor.features),
        str(predictor.samples),
        f"{predictor.measure_seconds:.1f}s",
        f"{predictor.alpha:g}",
        f"{predictor.cv_rmse:.4g}",
        f"{predictor.cv_spearman:+.3f}",
        f"{predictor.cv_kendall:+.3f}",
    )
    out.print(table)
    out.print(
        f"predictor of {predictor.target} fitted on {predictor.samples} subnets: held-out RMSE "
        f"{predictor.cv_rmse:.4g}, rho {predictor.cv_spearman:+.3f}\npredictor: {written}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
