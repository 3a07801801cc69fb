"""Supernet training: generated datasets, a task per space, training rules, the trainer, checkpoints.

`train_supernet(TrainConfig(space="efficientformerv2", options={"resolution": 32}, steps=50))`
trains the space's supernet with its default rule (sandwich for EfficientFormerV2, SnapFusion's
robust training for the UNet, temporal-only training for the video space) on data the project
generates; `nas supernet train` is the same from the command line. See docs/training.md.
"""

from nas.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from nas.training.data import NoiseSchedule, PatternImages, SyntheticLatents
from nas.training.errors import TrainingConfigError
from nas.training.rules import (
    DEFAULT_SKIP_PROB,
    RULES,
    RobustRule,
    SandwichRule,
    TemporalRule,
    TrainingRule,
    make_rule,
)
from nas.training.tasks import TrainingTask, make_task, register_task, task_class, trainable_spaces
from nas.training.trainer import (
    StepReport,
    SupernetTrainer,
    TrainConfig,
    TrainResult,
    resolve_device,
    train_supernet,
)

__all__ = [
    "DEFAULT_SKIP_PROB",
    "RULES",
    "NoiseSchedule",
    "PatternImages",
    "RobustRule",
    "SandwichRule",
    "StepReport",
    "SupernetTrainer",
    "SyntheticLatents",
    "TemporalRule",
    "TrainConfig",
    "TrainResult",
    "TrainingConfigError",
    "TrainingRule",
    "TrainingTask",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "make_rule",
    "make_task",
    "register_task",
    "resolve_device",
    "task_class",
    "train_supernet",
    "trainable_spaces",
]
