"""Search specs: what a user submits (YAML file, REST body), validated into a `ResolvedSpec`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.objectives import Constraint, Objective, SpecError, SpecErrors, parse_constraint, parse_objective
from nas.proxies import DEFAULT_SUPERNET_DIR, available_proxies, default_proxy
from nas.strategies import default_strategy, strategy_class
from search_spaces import FieldError, SearchSpace, SpaceError, get_space

T = TypeVar("T")

MAX_TRIALS = 100_000
MAX_SECONDS = 7 * 24 * 3600
MAX_PARALLELISM = 256


class Budget(BaseModel):
    """When a search stops: after `trials` evaluations or `seconds` of wall time, whichever first."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(100, ge=1, le=MAX_TRIALS, description="evaluations to run")
    seconds: float | None = Field(None, gt=0, le=MAX_SECONDS, description="wall-clock limit")
    parallelism: int = Field(2, ge=1, le=MAX_PARALLELISM, description="evaluations in flight at once")


class SearchSpec(BaseModel):
    """A search as submitted. Field names are those of the YAML files in `examples/`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200)
    space: str = Field(..., description="registered search space, see GET /v1/spaces")
    space_options: dict[str, Any] = Field(default_factory=dict)
    objectives: list[str] = Field(..., min_length=1, max_length=3)
    constraints: list[str] = Field(default_factory=list, max_length=16)
    strategy: str = Field(
        "",
        description="registered strategy; omitted: the space's measured default "
        "(nas.strategies.DEFAULT_STRATEGY, chosen by benchmarks/search_quality.py)",
    )
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    budget: Budget = Field(default_factory=Budget)
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _space_default_strategy(self) -> SearchSpec:
        if not self.strategy:
            self.strategy = default_strategy(self.space)
        return self


@dataclass
class ResolvedSpec:
    """A validated spec with its space instance and parsed objectives and constraints."""

    spec: SearchSpec
    space: SearchSpace
    objectives: list[Objective]
    constraints: list[Constraint]

    @property
    def devices(self) -> list[str]:
        names = [o.device for o in self.objectives] + [c.objective.device for c in self.constraints]
        return sorted({d for d in names if d})


#: Written in an objective or constraint, the space's measured best proxy (`nas.proxies.default_proxy`).
DEFAULT_PROXY_OBJECTIVE = "proxy:default"
_DEFAULT_PROXY_TOKEN = re.compile(r"(?<![\w:])proxy:default(?![\w])")


def with_default_proxy(spec: SearchSpec, proxy: str) -> SearchSpec:
    """`spec` with every `proxy:default` replaced by `proxy:<proxy>` (the spec as stored and run)."""

    def expand(text: str) -> str:
        return _DEFAULT_PROXY_TOKEN.sub(f"proxy:{proxy}", text)

    if not any(_DEFAULT_PROXY_TOKEN.search(t) for t in [*spec.objectives, *spec.constraints]):
        return spec
    return spec.model_copy(
        update={
            "objectives": [expand(t) for t in spec.objectives],
            "constraints": [expand(t) for t in spec.constraints],
        }
    )


def resolve(
    spec: SearchSpec, known_devices: Iterable[str], *, supernet_dir: str | Path = DEFAULT_SUPERNET_DIR
) -> ResolvedSpec:
    """Check every name in `spec` against what exists; raise `SpecError`/`SpaceError` naming the field.

    `proxy:default` becomes the space's default proxy (`params` where the space offers no better one);
    the resolved `spec` is the one to store. The `supernet_*` proxies are offered when a trained
    supernet of the space at its options is under `supernet_dir` (`nas.proxies.find_checkpoint`)."""
    devices = sorted(known_devices)
    # Every error of the spec in one answer: each field is checked even when another one failed.
    errors: list[FieldError] = []

    def checked(check: Callable[[], T]) -> T | None:
        try:
            return check()
        except FieldError as exc:
            errors.append(exc)
            return None

    try:
        space: SearchSpace | None = get_space(spec.space, **spec.space_options)
    except SpaceError as exc:
        field = "space" if exc.field == "space" else f"space_options.{exc.field}"
        errors.append(SpecError(str(exc), field=field, allowed=exc.allowed))
        space = None
    proxies = available_proxies(space, supernet_dir=supernet_dir) if space is not None else None
    if space is not None:
        spec = with_default_proxy(spec, default_proxy(space.name, proxies))
    space_name = space.name if space is not None else None
    # Without a space its proxies are unknown: only the other objectives can be checked.
    parsed = [
        checked(
            lambda i=i, text=text: parse_objective(
                text, devices, field=f"objectives[{i}]", proxies=proxies, space=space_name
            )
        )
        for i, text in enumerate(spec.objectives)
        if space is not None or not text.strip().startswith("proxy:")
    ]
    objectives = [o for o in parsed if o is not None]
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        errors.append(SpecError(f"objectives repeat a name: {names}", field="objectives"))
    parsed_constraints = [
        checked(
            lambda i=i, text=text: parse_constraint(
                text, devices, field=f"constraints[{i}]", proxies=proxies, space=space_name
            )
        )
        for i, text in enumerate(spec.constraints)
        if space is not None or not text.strip().startswith("proxy:")
    ]
    checked(lambda: strategy_class(spec.strategy))
    if errors:
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)
    assert space is not None
    constraints = [c for c in parsed_constraints if c is not None]
    return ResolvedSpec(spec=spec, space=space, objectives=objectives, constraints=constraints)
