"""Training rules: which subnets of a weight-sharing supernet one training step trains.

A step draws one batch, runs every subnet the rule names on it and accumulates their gradients
(each loss scaled by 1 / number of subnets, so the learning rate means the same under every rule)
before one optimizer step. Which subnets a step trains depends only on the run's seed and the step
index, so every worker of a distributed run trains the same subnets at the same step and a resumed
run trains the subnets the uninterrupted run would have.

- `sandwich` (BigNAS / EfficientFormerV2): the largest, the smallest and `random_subnets` random
  subnets each step; the extremes bound the space, the random ones cover its middle.
- `robust` (SnapFusion's "stochastic forward propagation"): one base subnet (the largest, or a named
  reference config) with every ResNet and transformer block replaced by the identity with probability
  `skip_prob`, so that the UNet stays usable when architecture evolving later removes blocks. With
  `distill_subnets` > 0, each step also trains that many random subnets by in-place distillation: their
  noise prediction learns the base subnet's prediction of the same step (detached), as BigNAS and
  Once-for-All train small subnets from the largest, so that subnets with inherited weights can be
  compared with the full network (the `teacher_distance` proxy).
- `temporal` (SnapGen-V): only the temporal layers train, on a frozen spatial UNet; each step trains
  `random_subnets` random temporal configs, or, with `distill_subnets` > 0, the largest temporal config
  on the task loss and `distill_subnets` random ones distilled from its prediction.

A rule that `distills` lists its teacher first in `step_configs`; the trainer trains the teacher on the
task loss and every later subnet of the step on `task.distill_loss(prediction, teacher prediction)`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from torch import nn

from nas.training.errors import TrainingConfigError
from search_spaces import Config, SearchSpace, Supernet

#: Robust training's default skip probability. SnapFusion does not report its p; 0.2 drops about
#: one block in five, enough that every block learns to work without its neighbours while the base
#: subnet still sees its full depth most of the time (each block is present in 80% of the steps).
DEFAULT_SKIP_PROB = 0.2
#: Fixed seed of the held-out configs a rule evaluates beyond the extremes (same in every run).
_EVAL_CONFIG_SEED = 20_240_601


class TrainingRule(abc.ABC):
    """Which subnets a step trains, which parameters train at all, and which subnets are evaluated."""

    name: ClassVar[str]
    #: Whether the first subnet of a step is the teacher the others are distilled from.
    distills: bool = False

    def __init__(self, space: SearchSpace):
        self.space = space

    def prepare(self, supernet: Supernet) -> None:
        """Set the supernet up for this rule once, before the optimizer is built.

        The default turns block skipping off where a supernet has it (only `robust` skips).
        """
        if hasattr(supernet, "skip_prob"):
            supernet.skip_prob = 0.0

    def trainable_parameters(self, supernet: Supernet) -> list[nn.Parameter]:
        return [p for p in supernet.parameters() if p.requires_grad]

    @abc.abstractmethod
    def step_configs(self, rng: np.random.Generator) -> list[Config]:
        """The subnets one step trains, drawn with `rng` (seeded from the run's seed and the step)."""

    def eval_configs(self) -> dict[str, Config]:
        """Named subnets whose held-out loss measures progress (the same in every run of the space)."""
        return {"largest": self.space.largest(), "smallest": self.space.smallest()}

    def describe(self) -> dict[str, Any]:
        """The rule's settings, stored in checkpoints."""
        return {"rule": self.name}


class SandwichRule(TrainingRule):
    """Largest, smallest and `random_subnets` random subnets per step."""

    name = "sandwich"

    def __init__(self, space: SearchSpace, random_subnets: int = 2):
        super().__init__(space)
        self.random_subnets = random_subnets

    def step_configs(self, rng: np.random.Generator) -> list[Config]:
        randoms = [self.space.sample(rng) for _ in range(self.random_subnets)]
        return [self.space.largest(), self.space.smallest(), *randoms]

    def describe(self) -> dict[str, Any]:
        return {"rule": self.name, "random_subnets": self.random_subnets}


class RobustRule(TrainingRule):
    """The base subnet every step, each of its blocks skipped with probability `skip_prob` (train mode)."""

    name = "robust"

    def __init__(
        self,
        space: SearchSpace,
        skip_prob: float = DEFAULT_SKIP_PROB,
        base: Config | None = None,
        distill_subnets: int = 0,
    ):
        super().__init__(space)
        self.skip_prob = skip_prob
        self.base = space.canonicalize(base) if base is not None else space.largest()
        self.distill_subnets = distill_subnets
        self.distills = distill_subnets > 0

    def prepare(self, supernet: Supernet) -> None:
        if not hasattr(supernet, "skip_prob"):
            raise TrainingConfigError(
                f"rule 'robust' needs a supernet that can skip blocks (a `skip_prob` attribute); the "
                f"supernet of space {self.space.name!r} has none; use rule 'sandwich'",
                field="rule",
                allowed=["sandwich"],
            )
        supernet.skip_prob = self.skip_prob

    def step_configs(self, rng: np.random.Generator) -> list[Config]:
        return [self.base, *(self.space.sample(rng) for _ in range(self.distill_subnets))]

    def eval_configs(self) -> dict[str, Config]:
        if not self.distills:
            return {"base": self.base}
        return {"base": self.base, "smallest": self.space.smallest()}

    def describe(self) -> dict[str, Any]:
        out = {"rule": self.name, "skip_prob": self.skip_prob, "base": self.base}
        return {**out, "distill_subnets": self.distill_subnets} if self.distills else out


class TemporalRule(TrainingRule):
    """Temporal layers only, on the frozen spatial UNet; `random_subnets` (at least one) random
    temporal configs a step."""

    name = "temporal"

    def __init__(self, space: SearchSpace, random_subnets: int = 2, distill_subnets: int = 0):
        super().__init__(space)
        self.random_subnets = max(1, random_subnets)
        self.distill_subnets = distill_subnets
        self.distills = distill_subnets > 0

    def prepare(self, supernet: Supernet) -> None:
        super().prepare(supernet)
        if not hasattr(supernet, "temporal_parameters"):
            raise TrainingConfigError(
                f"rule 'temporal' needs a supernet with `temporal_parameters()`; the supernet of space "
                f"{self.space.name!r} has none",
                field="rule",
                allowed=["sandwich", "robust"],
            )
        # The temporal supernet freezes its spatial part itself; freezing here as well keeps the rule's
        # promise even for a supernet that forgot to.
        temporal = {id(p) for p in supernet.temporal_parameters()}
        for parameter in supernet.parameters():
            parameter.requires_grad_(id(parameter) in temporal)

    def trainable_parameters(self, supernet: Supernet) -> list[nn.Parameter]:
        return list(supernet.temporal_parameters())

    def step_configs(self, rng: np.random.Generator) -> list[Config]:
        if self.distills:
            return [self.space.largest(), *(self.space.sample(rng) for _ in range(self.distill_subnets))]
        return [self.space.sample(rng) for _ in range(self.random_subnets)]

    def eval_configs(self) -> dict[str, Config]:
        rng = np.random.default_rng(_EVAL_CONFIG_SEED)
        return {"largest": self.space.largest(), "random0": self.space.sample(rng)}

    def describe(self) -> dict[str, Any]:
        if self.distills:
            return {"rule": self.name, "distill_subnets": self.distill_subnets}
        return {"rule": self.name, "random_subnets": self.random_subnets}


RULES: dict[str, type[TrainingRule]] = {rule.name: rule for rule in (SandwichRule, RobustRule, TemporalRule)}


def make_rule(
    name: str,
    space: SearchSpace,
    *,
    skip_prob: float = DEFAULT_SKIP_PROB,
    random_subnets: int = 2,
    base_config: str | Mapping[str, Any] | None = None,
    distill_subnets: int = 0,
) -> TrainingRule:
    """The rule `name` for `space` with the settings that apply to it (the others are ignored)."""
    if name == "sandwich":
        if distill_subnets:
            raise TrainingConfigError(
                "distill_subnets applies to the rules 'robust' and 'temporal' (noise-prediction "
                "distillation); rule 'sandwich' trains every subnet on the task loss",
                field="distill_subnets",
                allowed=[0],
            )
        return SandwichRule(space, random_subnets)
    if name == "robust":
        base = space.canonicalize(base_config) if base_config is not None else None
        return RobustRule(space, skip_prob, base, distill_subnets)
    if name == "temporal":
        return TemporalRule(space, random_subnets, distill_subnets)
    raise TrainingConfigError(
        f"unknown rule {name!r}; known rules: {sorted(RULES)}", field="rule", allowed=sorted(RULES)
    )
