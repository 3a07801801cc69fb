"""Trained supernets on disk: where they live, finding the one of a space, loading it.

Trained supernets live under a *supernet directory* (`supernet_dir`, by default `var/supernets`): one
run directory per space and options, `<supernet_dir>/<space>-<options id>` (`supernet_run_dir`).
The callers pass the directory (the service from its settings, the CLI from its flags); nothing here
reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.proxies.errors import ProxyError
from nas.training.checkpoint import latest_checkpoint, load_checkpoint
from search_spaces import SearchSpace, Supernet, config_id

#: Where trained supernets live unless a caller says otherwise (relative to the working directory).
DEFAULT_SUPERNET_DIR = Path("var/supernets")
#: File name of a fitted quality predictor (`nas.proxies.predictor`), beside the checkpoint its
#: targets were measured on.
PREDICTOR_FILE = "predictor.json"


def predictor_path(checkpoint: str | Path) -> Path:
    """Where the quality predictor of a checkpoint (a file, or a run directory) lives."""
    checkpoint = Path(checkpoint)
    return (checkpoint if checkpoint.is_dir() else checkpoint.parent) / PREDICTOR_FILE


@dataclass
class LoadedSupernet:
    """A trained supernet in eval mode, with where it came from and the step it was saved at."""

    supernet: Supernet
    path: Path
    step: int | None


def supernet_run_dir(space: SearchSpace, supernet_dir: str | Path = DEFAULT_SUPERNET_DIR) -> Path:
    """The run directory of `space`'s supernet at its options: `<supernet_dir>/<space>-<options id>`.

    Training into this directory (`nas supernet train --out-dir ...`) is what makes the `supernet_*`
    proxies available to searches of the space at those options without naming a checkpoint.
    """
    return Path(supernet_dir) / f"{space.name}-{config_id(space.options)}"


def find_checkpoint(space: SearchSpace, supernet_dir: str | Path = DEFAULT_SUPERNET_DIR) -> Path | None:
    """The checkpoint the `supernet_*` proxies use for `space` at its options, if there is one.

    The newest checkpoint in `supernet_run_dir(space, supernet_dir)`; failing that, of the run
    directories under `supernet_dir`, the most recently written newest checkpoint trained on this
    space and options (so `nas supernet train --out <supernet_dir>/any-name ...` is found too).
    """
    canonical = latest_checkpoint(supernet_run_dir(space, supernet_dir))
    if canonical is not None:
        return canonical
    root = Path(supernet_dir)
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
