"""The error a training run raises for bad input."""

from __future__ import annotations

from search_spaces import FieldError


class TrainingConfigError(FieldError):
    """A training setting is invalid or contradicts the checkpoint being resumed.

    `field` names the setting (as the CLI and `TrainConfig` call it); `allowed` says what would do.
    """
