"""Supernet-inherited proxies: a subnet takes its weights from a trained supernet checkpoint.

`supernet_loss` (minimise) and `supernet_accuracy` (maximise, classification spaces only) extract the
subnet from the supernet (`Supernet.extract`), recalibrate its BatchNorm running statistics on
training batches (reset, then forward passes in train mode without gradients: the supernet shares
one set of statistics between all widths, which describes no single subnet), then evaluate it in
eval mode on the task's held-out batch. Spaces without BatchNorm skip the recalibration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.proxies._base import Proxy, ProxyError, register_proxy
from nas.proxies.context import ProxyContext
from nas.proxies.tasks import classification_output, is_classification, make_task
from nas.training.checkpoint import latest_checkpoint, load_checkpoint
from nas.training.tasks import TrainingTask
from search_spaces import SearchSpace, Supernet, config_id

#: Environment variable naming the directory of trained supernets (one run directory per space
#: and options, see `supernet_run_dir`).
SUPERNET_DIR_ENV = "NAS_SUPERNET_DIR"
DEFAULT_SUPERNET_DIR = "var/supernets"

#: Held-out samples the inherited subnet is scored on.
HELD_OUT_SIZE = 256
#: Training batches (of `RECALIBRATION_BATCH` samples) that re-estimate BatchNorm statistics.
RECALIBRATION_BATCHES = 4
RECALIBRATION_BATCH = 64


@dataclass
class LoadedSupernet:
    """A trained supernet in eval mode, with where it came from and the step it was saved at."""

    supernet: Supernet
    path: Path
    step: int | None


def supernet_root() -> Path:
    """Where trained supernets live: `$NAS_SUPERNET_DIR`, by default `var/supernets`."""
    return Path(os.environ.get(SUPERNET_DIR_ENV) or DEFAULT_SUPERNET_DIR)


def supernet_run_dir(space: SearchSpace, root: str | Path | None = None) -> Path:
    """The run directory of `space`'s supernet at its options: `<root>/<space>-<options id>`.

    Training into this directory (`nas supernet train --out-dir ...`) is what makes the `supernet_*`
    proxies available to searches of the space at those options without naming a checkpoint.
    """
    base = supernet_root() if root is None else Path(root)
    return base / f"{space.name}-{config_id(space.options)}"


def find_checkpoint(space: SearchSpace) -> Path | None:
    """The checkpoint the `supernet_*` proxies use for `space` at its options, if there is one.

    The newest checkpoint in `supernet_run_dir(space)`; failing that, of the run directories under
    `supernet_root()`, the most recently written newest checkpoint trained on this space and options
    (so `nas supernet train --out $NAS_SUPERNET_DIR/any-name ...` is found too).
    """
    canonical = latest_checkpoint(supernet_run_dir(space))
    if canonical is not None:
        return canonical
    root = supernet_root()
    if not root.is_dir():
        return None
    candidates = [path for run in root.iterdir() if (path := latest_checkpoint(run)) is not None]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if _trained_on(path) == (space.name, dict(space.options)):
            return path
    return None


def _trained_on(path: Path) -> tuple[str | None, dict[str, Any]]:
    """Space name and options of a checkpoint, read without loading its tensors (memory-mapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, ValueError):
        return None, {}
    return state.get("space"), dict(state.get("options") or {})


def _checkpoint_file(path: Path) -> Path:
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise ProxyError(f"supernet checkpoint directory {str(path)!r} holds no step-*.pt checkpoint")
        return latest
    if not path.is_file():
        raise ProxyError(f"supernet checkpoint {str(path)!r} does not exist")
    return path


def load_supernet(space: SearchSpace, path: str | Path) -> LoadedSupernet:
    """The supernet of `space` with the weights of the checkpoint at `path` (a file or a run directory).

    The checkpoint must have been trained on the same space and options.
    """
    file = _checkpoint_file(Path(path))
    try:
        state = load_checkpoint(file)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ProxyError(f"cannot read supernet checkpoint {str(file)!r}: {exc}") from None
    name, options = state.get("space"), state.get("options")
    if name != space.name or dict(options or {}) != dict(space.options):
        raise ProxyError(
            f"checkpoint {str(file)!r} holds a supernet of space {name!r} at options {options}; "
            f"this search needs space {space.name!r} at options {space.options}"
        )
    supernet = space.supernet()
    supernet.load_state_dict(state["model"])
    return LoadedSupernet(supernet.eval(), file, state.get("step"))


def recalibrate(model: nn.Module, task: TrainingTask) -> None:
    """Re-estimate every BatchNorm's running statistics of `model` on training batches (no gradients)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        # Cumulative average: every recalibration batch counts equally.
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for index in range(RECALIBRATION_BATCHES):
            task.loss(model, task.train_batch(index, RECALIBRATION_BATCH))


def inherited_subnet(context: ProxyContext, config: dict[str, Any]) -> nn.Module:
    """The subnet with inherited weights and recalibrated statistics, in eval mode."""
    loaded = context.supernet()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.seed)
        model = loaded.supernet.extract(config)
    recalibrate(model, context.task)
    return model.eval()


@register_proxy
class SupernetLoss(Proxy):
    name = "supernet_loss"
    direction = "minimize"
    needs = "supernet"
    cost = "inherited"
    description = "held-out task loss of the subnet inherited from the trained supernet (BN recalibrated)"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        model = inherited_subnet(context, config)
        with torch.no_grad():
            return float(context.task.loss(model, context.task.held_out_batch(HELD_OUT_SIZE)))


@register_proxy
class SupernetAccuracy(Proxy):
    name = "supernet_accuracy"
    needs = "supernet"
    cost = "inherited"
    description = "held-out accuracy of the subnet inherited from the trained supernet (classification)"

    def supports(self, space: SearchSpace) -> bool:
        return is_classification(make_task(space))

    def requirement(self) -> str:
        return f"{super().requirement()}, and a classification space"

    def compute(self, context: ProxyContext, config: dict[str, Any]) -> float:
        if not is_classification(context.task):
            raise ProxyError(f"supernet_accuracy needs a classification space; {context.space.name!r} is not")
        model = inherited_subnet(context, config)
        with torch.no_grad():
            logits, labels = classification_output(
                context.task, model, context.task.held_out_batch(HELD_OUT_SIZE)
            )
        return float((logits.argmax(-1) == labels).float().mean())
