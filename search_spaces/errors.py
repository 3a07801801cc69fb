"""`FieldError`: bad input that names the offending field and what would be valid.

Every package raises its input errors as subclasses (`SpaceError`, `TrainingConfigError`, ...), so a
boundary (the API, the CLI) reports any of them the same way: `{field, message, allowed}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FieldError(ValueError):
    """Bad input: `field` names what was wrong, `allowed` says what would do (a list or a sentence)."""

    def __init__(self, message: str, *, field: str, allowed: Sequence[Any] | str | None = None):
        super().__init__(message)
        self.field = field
        self.allowed = list(allowed) if isinstance(allowed, (list, tuple, range)) else allowed

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": str(self), "allowed": self.allowed}

    def details(self) -> list[dict[str, Any]]:
        """Every error this one reports (one item; a collection of errors lists each)."""
        return [self.to_dict()]
