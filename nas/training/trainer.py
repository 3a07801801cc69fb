"""`SupernetTrainer`: the training loop of every space's supernet (AdamW, one rule, checkpoints).

One step: draw the step's batch, let the rule name the subnets of the step, run each on the batch and
accumulate its gradient, clip, take one AdamW step. The held-out loss of the rule's evaluation
subnets is measured before training, every `eval_every` steps and at the end. Checkpoints go to
`out_dir` every `checkpoint_every` steps and at the end; `SupernetTrainer.resume` continues a run
from its newest checkpoint and ends where the uninterrupted run would have (same weights, losses
and random states, to float rounding).

The trainer seeds Python's, NumPy's and torch's global random generators from the run's seed when it
starts a run (supernet initialisation and block skipping use them) and restores them on resume.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from nas.training.data import Batch
from nas.training.errors import TrainingConfigError
from nas.training.rules import DEFAULT_SKIP_PROB, RULES, make_rule
from nas.training.tasks import make_task, task_class
from search_spaces import Supernet, get_space

#: Settings that define a run: a resumed run must use the checkpoint's values.
IDENTITY_FIELDS = (
    "space",
    "options",
    "rule",
    "skip_prob",
    "random_subnets",
    "base_config",
    "distill_subnets",
    "seed",
    "batch_size",
    "lr",
    "weight_decay",
    "max_grad_norm",
    "init_from",
)


@dataclass
class TrainConfig:
    """Settings of one supernet training run (the CLI's flags, by the same names).

    `rule=None` takes the space's default rule (sandwich for efficientformerv2, robust for unet,
    temporal for temporal); `skip_prob` applies to `robust`, `random_subnets` to `sandwich` and
    `temporal`, `base_config` (a reference config's name or a config) to `robust`; `distill_subnets`
    (robust and temporal) adds that many random subnets a step, distilled from the base (largest)
    subnet's noise prediction. `device=None`
    takes CUDA when there is one, else the CPU. `eval_every=0` evaluates only before and after;
    `checkpoint_every=0` checkpoints only at the end (when `out_dir` is set); `keep_checkpoints`
    keeps the newest N checkpoints (0: all). `init_from` (a checkpoint file or a run's directory)
    starts the supernet from trained weights: of the same space, or, for `temporal`, the frozen image
    UNet from a `unet` run.
    """

    space: str
    options: dict[str, Any] = field(default_factory=dict)
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    rule: str | None = None
    skip_prob: float = DEFAULT_SKIP_PROB
    random_subnets: int = 2
    base_config: str | dict[str, Any] | None = None
    distill_subnets: int = 0
    seed: int = 0
    device: str | None = None
    max_grad_norm: float | None = 1.0
    init_from: str | None = None
    eval_every: int = 0
    eval_batch_size: int = 32
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    out_dir: Path | None = None

    def validate(self) -> None:
        """Raise `TrainingConfigError` naming the first invalid field and what it allows."""
        _require(self.steps >= 1, "steps", f"steps must be >= 1, got {self.steps}", "int >= 1")
        _require(
            self.batch_size >= 1, "batch_size", f"batch_size must be >= 1, got {self.batch_size}", "int >= 1"
        )
        _require(
            math.isfinite(self.lr) and self.lr > 0,
            "lr",
            f"lr must be a positive number, got {self.lr}",
            "float > 0",
        )
        _require(
            self.weight_decay >= 0,
            "weight_decay",
            f"weight_decay must be >= 0, got {self.weight_decay}",
            ">= 0",
        )
        _require(
            0.0 <= self.skip_prob < 1.0,
            "skip_prob",
            f"skip_prob must be in [0, 1), got {self.skip_prob}",
            "float in [0, 1)",
        )
        _require(
            self.random_subnets >= 0,
            "random_subnets",
            f"random_subnets must be >= 0, got {self.random_subnets}",
            "int >= 0",
        )
        _require(
            self.distill_subnets >= 0,
            "distill_subnets",
            f"distill_subnets must be >= 0, got {self.distill_subnets}",
            "int >= 0",
        )
        _require(
            self.rule is None or self.rule in RULES, "rule", f"unknown rule {self.rule!r}", sorted(RULES)
        )
        _require(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            "max_grad_norm",
            f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}",
            "float > 0 or None",
        )
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints"):
            value = getattr(self, name)
            _require(value >= 0, name, f"{name} must be >= 0, got {value}", "int >= 0")
        _require(
            self.eval_batch_size >= 1,
            "eval_batch_size",
            f"eval_batch_size must be >= 1, got {self.eval_batch_size}",
            "int >= 1",
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("out_dir") is not None:
            values["out_dir"] = Path(values["out_dir"])
        return cls(**values)


def _require(ok: bool, name: str, message: str, allowed: Any) -> None:
    if not ok:
        raise TrainingConfigError(message, field=name, allowed=allowed)


def resolve_device(name: str | None) -> torch.device:
    """`name` as a torch device; None picks CUDA when available, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = ["cpu", "cuda", "cuda:N"]
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingConfigError(
            f"unknown device {name!r}; allowed: {allowed}", field="device", allowed=allowed
        ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise TrainingConfigError(
            f"unsupported device {name!r}; allowed: {allowed}", field="device", allowed=allowed
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise TrainingConfigError(
            f"device {name!r} was asked for but this machine has no CUDA device; use --device cpu",
            field="device",
            allowed=["cpu"],
        )
    if device.index is not None and device.index >= count:
        raise TrainingConfigError(
            f"device {name!r} does not exist; this machine has {count} CUDA device(s)",
            field="device",
            allowed=[f"cuda:{i}" for i in range(count)],
        )
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class StepReport:
    """What the callback hears after each step: the step just taken (1-based) and its losses."""

    step: int
    steps: int
    loss: float
    subnet_losses: list[float]
    eval_losses: dict[str, float] | None = None
    checkpoint: Path | None = None


@dataclass
class TrainResult:
    """A finished run: the training loss of every step (from step 1, resumed steps included), the
    held-out evaluations (`{"step", "losses", "mean"}` each), and the last checkpoint written."""

    losses: list[float]
    evaluations: list[dict[str, Any]]
    steps: int
    rule: dict[str, Any]
    device: str
    checkpoint: Path | None

    @property
    def initial_eval(self) -> float:
        return self.evaluations[0]["mean"]

    @property
    def final_eval(self) -> float:
        return self.evaluations[-1]["mean"]


class SupernetTrainer:
    """Trains the supernet of `config.space` with the space's task and the chosen rule.

    `callback(report)` is called after every step. For data-parallel training, `rank` selects the
    worker's share of the data (every rank trains the same subnets at each step) and `wrap` wraps the
    supernet for the forward pass (e.g. DistributedDataParallel); only rank 0 writes checkpoints.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        callback: Callable[[StepReport], None] | None = None,
        rank: int = 0,
        wrap: Callable[[Supernet], nn.Module] | None = None,
        warm_start: bool = True,
    ):
        config.validate()
        self.config = config
        self.callback = callback
        self.rank = rank
        self.device = resolve_device(config.device)
        task_class(config.space)  # an unknown space is named among the trainable ones
        self.space = get_space(config.space, **config.options)
        self.task = make_task(self.space, config.seed)
        rule_name = config.rule or self.task.rules[0]
        if rule_name not in self.task.rules:
            raise TrainingConfigError(
                f"rule {rule_name!r} does not apply to space {config.space!r}; "
                f"allowed: {list(self.task.rules)}",
                field="rule",
                allowed=list(self.task.rules),
            )
        if config.batch_size < self.task.min_batch_size:
            raise TrainingConfigError(
                f"space {config.space!r} trains with batch_size >= {self.task.min_batch_size}, "
                f"got {config.batch_size}",
                field="batch_size",
                allowed=f"int >= {self.task.min_batch_size}",
            )
        self.rule = make_rule(
            rule_name,
            self.space,
            skip_prob=config.skip_prob,
            random_subnets=config.random_subnets,
            base_config=config.base_config,
            distill_subnets=config.distill_subnets,
        )
        initial = None
        if warm_start and config.init_from is not None:
            initial = load_checkpoint(_checkpoint_file(config.init_from))
        seed_everything(config.seed)
        self.supernet = self.space.supernet()
        if initial is not None:
            self.task.warm_start(self.supernet, initial)
        self.rule.prepare(self.supernet)
        self.supernet.to(self.device)
        self.model = wrap(self.supernet) if wrap is not None else self.supernet
        self.parameters = self.rule.trainable_parameters(self.supernet)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.losses: list[float] = []
        self.evaluations: list[dict[str, Any]] = []
        self._held_out: Batch | None = None
        self._eval_configs = self.rule.eval_configs()

    # ----------------------------------------------------------------- resume
    @classmethod
    def resume(
        cls,
        out_dir: Path,
        overrides: Mapping[str, Any] | None = None,
        *,
        callback: Callable[[StepReport], None] | None = None,
    ) -> SupernetTrainer:
        """A trainer continuing the newest checkpoint in `out_dir`.

        `overrides` may change how far and where the run goes (`steps`, `device`, evaluation and
        checkpoint cadence); any setting of `IDENTITY_FIELDS` it gives must equal the checkpoint's.
        """
        path = latest_checkpoint(Path(out_dir))
        if path is None:
            raise TrainingConfigError(
                f"no checkpoint to resume in {out_dir} (files step-NNNNNNNN.pt); run without --resume first",
                field="out_dir",
                allowed="a directory holding checkpoints",
            )
        state = load_checkpoint(path)
        config = TrainConfig.from_dict({**state["config"], "out_dir": Path(out_dir)})
        known = {f.name for f in dataclasses.fields(TrainConfig)} - {"out_dir"}
        for name, value in (overrides or {}).items():
            if name not in known:
                raise TrainingConfigError(
                    f"unknown training setting {name!r}", field=name, allowed=sorted(known)
                )
            if name in IDENTITY_FIELDS and not _same(name, value, getattr(config, name), state):
                raise TrainingConfigError(
                    f"{name}={value!r} contradicts the checkpoint {path}, trained with "
                    f"{name}={getattr(config, name)!r}; resume with the same value or use another out_dir",
                    field=name,
                    allowed=[getattr(config, name)],
                )
            setattr(config, name, value)
        trainer = cls(config, callback=callback, warm_start=False)
        trainer.load_state(state)
        return trainer

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's contents (`load_checkpoint`)."""
        self.supernet.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.losses = list(state["losses"])
        self.evaluations = list(state["evaluations"])
        restore_rng_state(state["rng"])

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds (see `nas.training.checkpoint`)."""
        return {
            "space": self.space.name,
            "options": dict(self.space.options),
            "config": self.config.to_dict(),
            "rule": self.rule.describe(),
            "step": self.step,
            "model": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "losses": list(self.losses),
            "evaluations": list(self.evaluations),
        }

    def save_checkpoint(self) -> Path | None:
        if self.config.out_dir is None or self.rank != 0:
            return None
        return save_checkpoint(
            Path(self.config.out_dir), self.step, self.state(), self.config.keep_checkpoints
        )

    # ----------------------------------------------------------------- the loop
    def _to_device(self, batch: Batch) -> Batch:
        return {name: tensor.to(self.device) for name, tensor in batch.items()}

    def train_step(self) -> list[float]:
        """Take one step; returns the loss of each subnet it trained (a distilled subnet's: its
        distillation loss)."""
        batch = self._to_device(self.task.train_batch(self.step, self.config.batch_size, self.rank))
        configs = self.rule.step_configs(np.random.default_rng([self.config.seed, self.step]))
        self.supernet.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        teacher = None
        for config in configs:
            self.supernet.activate(config)
            if not self.rule.distills:
                loss = self.task.loss(self.model, batch)
            elif teacher is None:
                prediction = self.task.predict(self.model, batch)
                loss = self.task.loss_of(prediction, batch)
                teacher = prediction.detach()
            else:
                loss = self.task.distill_loss(self.task.predict(self.model, batch), teacher)
            (loss / len(configs)).backward()
            losses.append(float(loss.detach()))
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        self.step += 1
        self.losses.append(sum(losses) / len(losses))
        return losses

    def evaluate(self) -> dict[str, float]:
        """Held-out loss of each of the rule's evaluation subnets; random states are left untouched."""
        if self._held_out is None:
            self._held_out = self._to_device(self.task.held_out_batch(self.config.eval_batch_size))
        saved = rng_state()
        previous = self.supernet.active_config
        results = {}
        try:
            with self.task.evaluating(self.supernet):
                for name, config in self._eval_configs.items():
                    self.supernet.activate(config)
                    results[name] = float(self.task.loss(self.supernet, self._held_out))
        finally:
            restore_rng_state(saved)
            if previous is not None:
                self.supernet.activate(previous)
        return results

    def _record_evaluation(self) -> dict[str, float]:
        losses = self.evaluate()
        self.evaluations.append(
            {"step": self.step, "losses": losses, "mean": sum(losses.values()) / len(losses)}
        )
        return losses

    def fit(self) -> TrainResult:
        """Train until `config.steps` (a resumed trainer continues from its step)."""
        total = self.config.steps
        if self.step == 0 and not self.evaluations:
            self._record_evaluation()
        while self.step < total:
            subnet_losses = self.train_step()
            every_eval, every_ckpt = self.config.eval_every, self.config.checkpoint_every
            last = self.step == total
            eval_losses = (
                self._record_evaluation() if last or (every_eval and self.step % every_eval == 0) else None
            )
            checkpoint = (
                self.save_checkpoint() if last or (every_ckpt and self.step % every_ckpt == 0) else None
            )
            if self.callback is not None:
                self.callback(
                    StepReport(self.step, total, self.losses[-1], subnet_losses, eval_losses, checkpoint)
                )
        latest = latest_checkpoint(Path(self.config.out_dir)) if self.config.out_dir is not None else None
        return TrainResult(
            losses=list(self.losses),
            evaluations=list(self.evaluations),
            steps=self.step,
            rule=self.rule.describe(),
            device=str(self.device),
            checkpoint=latest,
        )


def _checkpoint_file(path: str | Path) -> Path:
    """`path` itself, or the newest checkpoint in it when it is a run's directory."""
    path = Path(path)
    found = latest_checkpoint(path) if path.is_dir() else (path if path.is_file() else None)
    if found is None:
        raise TrainingConfigError(
            f"init_from {str(path)!r} is neither a checkpoint file nor a directory holding checkpoints",
            field="init_from",
            allowed="a step-NNNNNNNN.pt file or a training run's out_dir",
        )
    return found


def _same(name: str, given: Any, stored: Any, state: Mapping[str, Any]) -> bool:
    if name == "options":
        # Compare validated options, so defaults spelled out equal defaults left out.
        space = get_space(state["space"], **dict(given or {}))
        return space.options == state["options"]
    if name == "rule":
        return given is None or given == state["rule"]["rule"]
    return given == stored


def train_supernet(
    config: TrainConfig,
    *,
    resume: bool = False,
    callback: Callable[[StepReport], None] | None = None,
) -> TrainResult:
    """Train from scratch, or (`resume=True`) continue the newest checkpoint in `config.out_dir`.

    A fresh run refuses an `out_dir` that already holds checkpoints, so no run is overwritten by
    accident.
    """
    if resume:
        if config.out_dir is None:
            raise TrainingConfigError(
                "resume needs out_dir, the directory of the checkpoints", field="out_dir"
            )
        overrides = {k: v for k, v in config.to_dict().items() if k != "out_dir"}
        return SupernetTrainer.resume(Path(config.out_dir), overrides, callback=callback).fit()
    if config.out_dir is not None and latest_checkpoint(Path(config.out_dir)) is not None:
        raise TrainingConfigError(
            f"{config.out_dir} already holds checkpoints; resume them (--resume) or choose another out_dir",
            field="out_dir",
            allowed="an empty or new directory",
        )
    return SupernetTrainer(config, callback=callback).fit()
