"""The error a training run raises for bad input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TrainingConfigError(ValueError):
    """A training setting is invalid or contradicts the checkpoint being resumed.

    `field` names the setting (as the CLI and `TrainConfig` call it); `allowed` says what would do.
    """

    def __init__(self, message: str, *, field: str, allowed: Sequence[Any] | str | None = None):
        super().__init__(message)
        self.field = field
        self.allowed = list(allowed) if isinstance(allowed, (list, tuple, range)) else allowed

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": str(self), "allowed": self.allowed}
