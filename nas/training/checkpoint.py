"""Training checkpoints: one `step-NNNNNNNN.pt` file per saved step in a run's directory.

A checkpoint holds everything a resumed run needs to continue exactly as if never stopped: the
supernet's state dict, the optimizer's, the step count, the random states of Python, NumPy and torch
(CPU and every CUDA device), the run's settings (space name and options, rule and its settings) and
the loss history. Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint under a valid name; they load with `weights_only=True` (plain containers
and tensors, no pickled code).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in `directory`, oldest step first (empty when there is no such directory)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: Path) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 0) -> Path:
    """Write `state` as the checkpoint of `step`; then keep only the newest `keep` (all when 0)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    partial = path.with_name(path.name + ".partial")
    torch.save({"format_version": FORMAT_VERSION, **state}, partial)
    os.replace(partial, path)
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink()
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, tensors on the CPU."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {version!r}; this code reads {FORMAT_VERSION}"
        )
    return state


def rng_state() -> dict[str, Any]:
    """The global random states, in containers `weights_only` loading accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global random states from `rng_state()`'s result (CUDA states only where devices match)."""
    random.setstate(_as_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuples(value: Any) -> Any:
    """`random.setstate` wants the tuples `getstate` gave; serialisation may turn them into lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value
