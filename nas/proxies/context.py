"""`ProxyContext`: what proxies share while scoring subnets of one space (one per evaluator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.proxies.errors import ProxyError
from nas.proxies.supernet_checkpoints import (
    DEFAULT_SUPERNET_DIR,
    LoadedSupernet,
    find_checkpoint,
    load_supernet,
)
from nas.proxies.task_data import make_task, proxy_batch
from nas.training.data import Batch
from nas.training.tasks import TrainingTask
from search_spaces import SearchSpace

#: Samples in the batch that batch-based proxies see (NASWOT's kernel is this many samples square).
DEFAULT_BATCH_SIZE = 32


class ProxyContext:
    """The space, the seed, the task and its proxy batch (generated once), the supernet (loaded once).

    `model(config)` builds a fresh subnet whose random init depends only on `seed`, so a proxy gives
    the same value for the same config every time, in any process.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        supernet_checkpoint: str | Path | None = None,
        supernet_dir: str | Path = DEFAULT_SUPERNET_DIR,
    ):
        if batch_size < 2:
            raise ValueError(
                f"proxy batch_size must be >= 2 (kernels and statistics need two), got {batch_size}"
            )
        self.space = space
        self.seed = seed
        self.batch_size = batch_size
        self.supernet_checkpoint = None if supernet_checkpoint is None else Path(supernet_checkpoint)
        self.supernet_dir = Path(supernet_dir)
        self._task: TrainingTask | None = None
        self._batch: Batch | None = None
        self._supernet: LoadedSupernet | None = None
        #: What proxies compute once per context and reuse (e.g. the teacher's predictions).
        self.memo: dict[str, Any] = {}

    @property
    def task(self) -> TrainingTask:
        """The space's training task (data and loss), built on first use."""
        if self._task is None:
            self._task = make_task(self.space, self.seed)
        return self._task

    def batch(self) -> Batch:
        """The proxy batch: `batch_size` samples of the task's proxy stream (always the same)."""
        if self._batch is None:
            self._batch = proxy_batch(self.task, self.batch_size)
        return self._batch

    def mini_batches(self, parts: int) -> list[Batch]:
        """The proxy batch cut into `parts` consecutive mini-batches of (nearly) equal size."""
        chunks = {key: value.tensor_split(parts) for key, value in self.batch().items()}
        return [{key: chunk[i] for key, chunk in chunks.items()} for i in range(parts)]

    def model(self, config: dict[str, Any]) -> nn.Module:
        """A freshly built subnet in train mode, initialised from `seed` (global RNG state untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self.space.build(config)
        return model.float().train()

    def supernet(self) -> LoadedSupernet:
        """The trained supernet, loaded on first use: `supernet_checkpoint`, else the one
        `find_checkpoint` finds for the space under `supernet_dir`."""
        if self._supernet is None:
            path = self.supernet_checkpoint or find_checkpoint(self.space, self.supernet_dir)
            if path is None:
                raise ProxyError(
                    f"no trained supernet checkpoint for space {self.space.name!r} at options "
                    f"{self.space.options}; run `nas supernet train` first or pass a checkpoint"
                )
            self._supernet = load_supernet(self.space, path)
        return self._supernet
