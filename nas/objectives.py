"""Objectives (`latency:<device>`, `params`, `macs`, `size_mb`, `bits`, `proxy:<name>`) and
constraints (`latency:host-cpu-torch <= 5`).

Units: latency in milliseconds, `params` in parameters, `macs` in multiply-accumulates of one forward
pass at the space's options, `size_mb` the weights' storage in 10^6 bytes and `bits` the mean bits
per conv / linear weight, both counted as BitsFusion counts them (`search_spaces.precision`; a space
without a precision dimension stores every parameter at 16 bits); these are minimised.
`proxy:<name>` is a quality proxy of `nas.proxies` (e.g. `proxy:synflow`), in the proxy's own units
and direction (most are maximised; `proxy:supernet_loss` is minimised). Which proxies a space
offers depends on the space (see `nas.proxies.available_proxies`); `nas.spec.resolve` checks them
against the chosen space.

This module is the one grammar of objectives: specs hold the names as strings, everything past
`nas.spec.resolve` passes the parsed `Objective`s (the runner hands them to the evaluators), and
`objective_direction` is the direction of a name wherever only the name is at hand (stored trials,
the API, the dashboard).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nas.directions import Direction
from search_spaces import FieldError, SpaceError

#: Objectives that take no argument, with their directions.
PLAIN_OBJECTIVES: dict[str, Direction] = {
    "params": "minimize",
    "macs": "minimize",
    "size_mb": "minimize",
    "bits": "minimize",
}
#: Objectives written `<kind>:<argument>`, with the kind's usual direction (a proxy's own direction,
#: see `objective_direction`, takes precedence).
PARAMETRIZED_OBJECTIVES: dict[str, Direction] = {"latency": "minimize", "proxy": "maximize"}


class SpecError(SpaceError):
    """A search spec is invalid; `field` names the offending field, `allowed` what would be valid."""


class UnknownDeviceError(SpecError):
    """An objective or constraint names a device with no latency table here (`device`)."""

    def __init__(self, message: str, *, device: str, field: str, allowed: Any = None):
        super().__init__(message, field=field, allowed=allowed)
        self.device = device


class SpecErrors(SpecError):
    """Every error found in one spec, reported together (`errors`; `details()` lists each); its own
    field and allowed values are the first error's."""

    def __init__(self, errors: Sequence[FieldError]):
        first = errors[0]
        super().__init__(
            "; ".join(f"{e.field}: {e}" for e in errors), field=first.field, allowed=first.allowed
        )
        self.errors = list(errors)

    def details(self) -> list[dict[str, Any]]:
        return [error.to_dict() for error in self.errors]


#: The shapes of objective names, for errors that cannot list the known devices and proxies.
OBJECTIVE_SHAPES = [*PLAIN_OBJECTIVES, "latency:<device>", "proxy:<name>"]


@dataclass(frozen=True)
class Objective:
    """One objective: `name` as written in specs, e.g. `latency:host-cpu-torch`, and its direction.

    Construction checks the name's shape (a plain objective, or `latency:`/`proxy:` with an argument;
    `SpecError` otherwise); which devices and proxies exist is checked by `parse_objective`.
    """

    name: str
    direction: Direction

    def __post_init__(self) -> None:
        kind, sep, argument = self.name.partition(":")
        plain = not sep and kind in PLAIN_OBJECTIVES
        if not plain and not (sep and argument and kind in PARAMETRIZED_OBJECTIVES):
            raise SpecError(
                f"unknown objective {self.name!r}; allowed: {OBJECTIVE_SHAPES}",
                field="objectives",
                allowed=OBJECTIVE_SHAPES,
            )

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def argument(self) -> str | None:
        return self.name.split(":", 1)[1] if ":" in self.name else None

    @property
    def device(self) -> str | None:
        """The device of a `latency:<device>` objective."""
        return self.argument if self.kind == "latency" else None

    @property
    def proxy(self) -> str | None:
        """The proxy of a `proxy:<name>` objective."""
        return self.argument if self.kind == "proxy" else None

    def to_min(self, value: float) -> float:
        """The value as a quantity to minimise."""
        return value if self.direction == "minimize" else -value


def registered_proxies() -> dict[str, Direction]:
    """Every registered proxy with its direction, whatever space it suits."""
    from nas.proxies import get_proxy, list_proxies

    return {name: get_proxy(name).direction for name in list_proxies()}


def objective_direction(name: str) -> Direction:
    """The direction of the objective `name` (a proxy's own; unknown kinds are minimised)."""
    name = name.strip()
    if name in PLAIN_OBJECTIVES:
        return PLAIN_OBJECTIVES[name]
    kind, _, arg = name.partition(":")
    if kind == "proxy":
        return registered_proxies().get(arg, PARAMETRIZED_OBJECTIVES["proxy"])
    return PARAMETRIZED_OBJECTIVES.get(kind, "minimize")


def _proxy_problem(proxy: str, objective: str) -> str:
    from nas.proxies import get_proxy

    if proxy not in registered_proxies():
        return f"unknown proxy {proxy!r} in objective {objective!r}"
    return f"proxy {proxy!r} is not available here: {get_proxy(proxy).requirement()}"


def _offered_direction(
    proxy: str,
    objective: str,
    offered: Mapping[str, Direction],
    *,
    devices: Iterable[str],
    field: str,
    space: str | None,
) -> Direction:
    if proxy in offered:
        return offered[proxy]
    where = f" for space {space!r}" if space else ""
    raise SpecError(
        f"{_proxy_problem(proxy, objective)}; available proxies{where}: {sorted(offered)}",
        field=field,
        allowed=allowed_objectives(devices, offered),
    )


def check_offered(
    objective: Objective, offered: Mapping[str, Direction], *, space: str | None = None
) -> None:
    """Raise `SpecError` if `objective` is a proxy that is not `offered` (name -> direction: those
    available for `space`, see `nas.proxies.available_proxies`), saying why and what is available."""
    if objective.proxy is not None:
        _offered_direction(
            objective.proxy, objective.name, offered, devices=(), field="objectives", space=space
        )


def allowed_objectives(known_devices: Iterable[str], proxies: Iterable[str] = ()) -> list[str]:
    return [
        *PLAIN_OBJECTIVES,
        *(f"latency:{d}" for d in sorted(known_devices)),
        *(f"proxy:{p}" for p in sorted(proxies)),
    ]


def parse_objective(
    text: str,
    known_devices: Iterable[str],
    *,
    field: str = "objectives",
    proxies: Mapping[str, Direction] | None = None,
    space: str | None = None,
) -> Objective:
    """Parse an objective name, checking devices against `known_devices`.

    `proxy:<name>` is checked against `proxies` (name -> direction: those available for the chosen
    `space`, see `nas.proxies.available_proxies`), or against every registered proxy when None.
    """
    devices = sorted(known_devices)
    name = text.strip()
    if name in PLAIN_OBJECTIVES:
        return Objective(name, PLAIN_OBJECTIVES[name])
    kind, sep, arg = name.partition(":")
    if sep and kind == "latency":
        if arg not in devices:
            raise UnknownDeviceError(
                f"unknown device {arg!r} in objective {name!r}; known devices: {devices}",
                device=arg,
                field=field,
                allowed=allowed_objectives(devices, proxies or ()),
            )
        return Objective(name, PARAMETRIZED_OBJECTIVES[kind])
    if sep and kind == "proxy":
        offered = registered_proxies() if proxies is None else dict(proxies)
        direction = _offered_direction(arg, name, offered, devices=devices, field=field, space=space)
        return Objective(name, direction)
    raise SpecError(
        f"unknown objective {name!r}; allowed: {allowed_objectives(devices, proxies or ())}",
        field=field,
        allowed=allowed_objectives(devices, proxies or ()),
    )


#: The largest magnitude of a constraint's bound (far beyond any latency, parameter or MAC count).
MAX_BOUND = 1e15
# Longer number texts are refused without parsing them.
_MAX_BOUND_CHARS = 32
_CONSTRAINT = re.compile(r"^\s*(?P<objective>[^<>=\s]+)\s*(?P<op><=|>=)\s*(?P<bound>[-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`objective op bound`: a trial is feasible when every constraint holds."""

    objective: Objective
    op: Literal["<=", ">="]
    bound: float

    def __str__(self) -> str:
        return f"{self.objective.name} {self.op} {self.bound:g}"

    def violation(self, values: Mapping[str, float]) -> float:
        """How far the constraint is violated (<= 0 when satisfied), as Optuna's constraints expect."""
        value = values[self.objective.name]
        return value - self.bound if self.op == "<=" else self.bound - value

    def satisfied(self, values: Mapping[str, float]) -> bool:
        return self.violation(values) <= 0


def upper_bound(constraints: Iterable[Constraint], name: str) -> float | None:
    """The bound of the first `name <= bound` among `constraints`, or None."""
    return next((c.bound for c in constraints if c.objective.name == name and c.op == "<="), None)


def parse_constraint(
    text: str,
    known_devices: Iterable[str],
    *,
    field: str = "constraints",
    proxies: Mapping[str, Direction] | None = None,
    space: str | None = None,
) -> Constraint:
    """Parse `"<objective> <= <number>"` or `">="` (`proxies` and `space` as in `parse_objective`)."""
    match = _CONSTRAINT.match(text)
    if not match:
        raise SpecError(
            f"constraint {text!r} is not of the form '<objective> <= <number>' or '<objective> >= <number>'",
            field=field,
            allowed="<objective> <= <number> | <objective> >= <number>",
        )
    objective = parse_objective(match["objective"], known_devices, field=field, proxies=proxies, space=space)
    text_bound = match["bound"]
    allowed = f"a number in [{-MAX_BOUND:g}, {MAX_BOUND:g}]"
    try:
        bound = float(text_bound) if len(text_bound) <= _MAX_BOUND_CHARS else math.inf
    except ValueError:
        raise SpecError(
            f"constraint bound {text_bound!r} is not a number", field=field, allowed=allowed
        ) from None
    if not math.isfinite(bound) or abs(bound) > MAX_BOUND:
        shown = (
            text_bound if len(text_bound) <= 40 else f"{text_bound[:20]}... ({len(text_bound)} characters)"
        )
        raise SpecError(
            f"constraint bound {shown} is out of range; allowed: {allowed}", field=field, allowed=allowed
        )
    return Constraint(objective, match["op"], bound)  # type: ignore[arg-type]
