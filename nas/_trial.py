"""Trials: one evaluated subnet of a search."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


class TrialState(enum.StrEnum):
    COMPLETE = "complete"
    FAILED = "failed"


def utcnow() -> datetime:
    """The current time in UTC, timezone-aware (what every stored timestamp is)."""
    return datetime.now(UTC)


@dataclass
class Trial:
    """One evaluated subnet.

    `number` counts from 0 within a search without gaps: it is the order in which the runner
    recorded trials, also across restarts. `values` maps objective names (`latency:host-cpu-torch`,
    `params`, ...) to values; a failed trial has no values and an `error` saying why. `feasible` is
    False when a constraint is violated (the trial still counts against the budget and is stored).
    `metrics` carries what else evaluation learned (latency coverage, evaluation seconds, ...).
    """

    number: int
    config: dict[str, Any]
    config_id: str
    state: TrialState = TrialState.COMPLETE
    values: dict[str, float] = field(default_factory=dict)
    feasible: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0
    finished_at: datetime = field(default_factory=utcnow)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        out["finished_at"] = self.finished_at.isoformat()
        return out
