"""What `NasClient` returns: typed, read-only views of the API's JSON answers.

Like Optuna's `FrozenTrial` or Vizier's `Trial`: attributes instead of dict keys, timestamps as
`datetime`, and the answer's JSON kept in `raw` for anything newer than this client. Every list
answer is a `Page` (the API's one envelope: `items`, `total`, `offset`, `limit`), iterable like a
list of its items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")

FINISHED = ("succeeded", "failed", "cancelled")


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 timestamp of the API (`...Z` or `+00:00`) as an aware `datetime`; None stays None."""
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: `items`, the `total` on all pages, and the `offset`/`limit` that chose it."""

    items: list[T]
    total: int
    offset: int
    limit: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]

    @classmethod
    def of(cls, data: Mapping[str, Any], item: Callable[[Any], T]) -> Page[T]:
        return cls(
            items=[item(x) for x in data["items"]],
            total=int(data["total"]),
            offset=int(data["offset"]),
            limit=int(data["limit"]),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Trial:
    """One evaluated subnet of a search (`GET /v1/searches/{id}/trials/{number}`)."""

    number: int
    config: dict[str, Any]
    config_id: str
    state: str
    values: dict[str, float]
    feasible: bool
    metrics: dict[str, Any]
    error: str | None
    duration_s: float
    finished_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Trial:
        return cls(
            number=int(data["number"]),
            config=dict(data["config"]),
            config_id=data["config_id"],
            state=data["state"],
            values=dict(data.get("values") or {}),
            feasible=bool(data.get("feasible", False)),
            metrics=dict(data.get("metrics") or {}),
            error=data.get("error"),
            duration_s=float(data.get("duration_s") or 0.0),
            finished_at=parse_time(data.get("finished_at")),
            raw=dict(data),
        )


#: A member of a Pareto front is a trial.
ParetoMember = Trial


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str


@dataclass(frozen=True)
class ParetoFront(Page[Trial]):
    """One page of a search's Pareto front (`GET /v1/searches/{id}/pareto`): its members by trial
    number in `items` (also `members`), with the search's objectives and constraints."""

    search_id: str = ""
    status: str = ""
    objectives: list[Objective] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    hypervolume: float | None = None

    @property
    def members(self) -> list[Trial]:
        return self.items

    @classmethod
    def of_front(cls, data: Mapping[str, Any]) -> ParetoFront:
        return cls(
            items=[Trial.of(t) for t in data["items"]],
            total=int(data["total"]),
            offset=int(data["offset"]),
            limit=int(data["limit"]),
            raw=dict(data),
            search_id=data["search_id"],
            status=data["status"],
            objectives=[Objective(o["name"], o["direction"]) for o in data["objectives"]],
            constraints=list(data["constraints"]),
            hypervolume=data.get("hypervolume"),
        )


@dataclass(frozen=True)
class Search:
    """A submitted search with its progress (`GET /v1/searches/{id}`). `spec` is empty in the
    events of `watch` (they leave it out)."""

    id: str
    name: str
    status: str
    status_message: str
    error: str | None
    warnings: list[str]
    owner: str
    trials_done: int
    trials_failed: int
    budget_trials: int
    front_size: int
    hypervolume: float | None
    elapsed_s: float
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    spec: dict[str, Any]
    progress: dict[str, Any]
    links: dict[str, str]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Search:
        return cls(
            id=data["id"],
            name=data.get("name", ""),
            status=data["status"],
            status_message=data.get("status_message", ""),
            error=data.get("error"),
            warnings=list(data.get("warnings") or []),
            owner=data.get("owner", ""),
            trials_done=int(data.get("trials_done", 0)),
            trials_failed=int(data.get("trials_failed", 0)),
            budget_trials=int(data.get("budget_trials", 0)),
            front_size=int(data.get("front_size", 0)),
            hypervolume=data.get("hypervolume"),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            created_at=parse_time(data.get("created_at")),
            started_at=parse_time(data.get("started_at")),
            finished_at=parse_time(data.get("finished_at")),
            updated_at=parse_time(data.get("updated_at")),
            spec=dict(data.get("spec") or {}),
            progress=dict(data.get("progress") or {}),
            links=dict(data.get("links") or {}),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Submission:
    """The answer to a submit: the new search's id and status, its links, warnings about the spec
    (a budget too small for the strategy's target, for example), the latency-table entries the
    server measures before the first trial (`measure_first`: device, blocks, entries) and what
    happens next in words (`message`)."""

    id: str
    status: str
    links: dict[str, str]
    warnings: list[str]
    measure_first: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Submission:
        return cls(
            data["id"],
            data["status"],
            dict(data["links"]),
            list(data.get("warnings") or []),
            [dict(m) for m in data.get("measure_first") or []],
            str(data.get("message") or ""),
        )


@dataclass(frozen=True)
class Device:
    """A latency target (`GET /v1/devices/{name}`)."""

    name: str
    runtime: str
    hardware: str
    backend: str | None
    description: str
    builtin: bool
    entries: int
    registered: bool
    metadata: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Device:
        return cls(
            name=data["name"],
            runtime=data["runtime"],
            hardware=data["hardware"],
            backend=data.get("backend"),
            description=data.get("description", ""),
            builtin=bool(data.get("builtin", False)),
            entries=int(data.get("entries", 0)),
            registered=bool(data.get("registered", False)),
            metadata=dict(data.get("metadata") or {}),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Space:
    """A search space (`GET /v1/spaces/{name}`; the list gives only name, description, cardinality
    and options, and leaves the rest empty)."""

    name: str
    description: str
    cardinality: int
    options: list[dict[str, Any]]
    choices: list[dict[str, Any]]
    option_values: dict[str, Any]
    reference_configs: dict[str, dict[str, Any]]
    proxies: list[dict[str, Any]]
    default_proxy: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Space:
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            cardinality=int(data["cardinality"]),
            options=list(data.get("options") or []),
            choices=list(data.get("choices") or []),
            option_values=dict(data.get("option_values") or {}),
            reference_configs=dict(data.get("reference_configs") or {}),
            proxies=list(data.get("proxies") or []),
            default_proxy=data.get("default_proxy"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Step:
    """One decision of a stepwise strategy (`GET /v1/searches/{id}/steps`): what it took, the quality
    and latency change, its score under the strategy's rule and the runner-up."""

    step: int
    kind: str
    taken: list[dict[str, Any]]
    d_quality: float | None
    d_latency_ms: float | None
    score: list[float]
    runner_up: dict[str, Any] | None
    ranked_by: str | None
    reason: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Step:
        return cls(
            step=int(data["step"]),
            kind=data["kind"],
            taken=list(data.get("taken") or []),
            d_quality=data.get("d_quality"),
            d_latency_ms=data.get("d_latency_ms"),
            score=list(data.get("score") or []),
            runner_up=data.get("runner_up"),
            ranked_by=data.get("ranked_by"),
            reason=data.get("reason"),
            raw=dict(data),
        )
