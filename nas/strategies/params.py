"""Checks of `strategy_params`: each turns a spec's value into the strategy's, or says what is allowed.

A check returns the (possibly converted) value or raises `ValueError` with a description of what is
allowed ("an int in [2, 1000000]"); `check_strategy_params` turns that into a `SpecError` naming the field
`strategy_params.<name>`, which the API answers with a 422.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nas.objectives import SpecError

#: A strategy parameter's check: returns the (possibly converted) value or raises ValueError with a
#: description of what is allowed.
ParamCheck = Callable[[Any], Any]


#: The largest integer a strategy parameter may be (population sizes, attempts, startup trials): ten
#: times the largest trial budget, so no meaningful setting is refused and no absurd one is tried.
MAX_INT_PARAM = 1_000_000
#: The largest positive number a strategy parameter may be (a latency target in ms).
MAX_NUMBER_PARAM = 1e9


def int_at_least(minimum: int, maximum: int = MAX_INT_PARAM) -> ParamCheck:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ValueError(f"an int in [{minimum}, {maximum}]")
        return value

    return check


def probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError("a number in [0, 1]")
    return float(value)


def check_strategy_params(
    strategy: str, params: Mapping[str, Any], allowed: Mapping[str, ParamCheck]
) -> dict[str, Any]:
    """Validate `strategy_params`: unknown names and bad values raise `SpecError` naming the field."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise SpecError(
            f"unknown parameter {unknown[0]!r} for strategy {strategy!r}; allowed: {sorted(allowed)}",
            field=f"strategy_params.{unknown[0]}",
            allowed=sorted(allowed),
        )
    checked = {}
    for name, value in params.items():
        try:
            checked[name] = allowed[name](value)
        except ValueError as exc:
            raise SpecError(
                f"strategy parameter {name!r} of {strategy!r} must be {exc}, got {value!r}",
                field=f"strategy_params.{name}",
                allowed=str(exc),
            ) from None
    return checked


def positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_NUMBER_PARAM:
        raise ValueError(f"a number in (0, {MAX_NUMBER_PARAM:g}]")
    return float(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def config_or_reference(value: Any) -> Any:
    """A start config as a spec gives it: a reference config's name or a config object (the
    strategy canonicalises it against its space)."""
    if not isinstance(value, (str, dict)):
        raise ValueError("a reference config name or a config object")
    return value
