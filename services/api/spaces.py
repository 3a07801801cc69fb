"""`GET /v1/spaces[/{name}]`: the registered search spaces, their choices, options and references."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from search_spaces import UnknownSpaceError, get_space, list_spaces, space_class
from services.api.errors import ResourceNotFoundError
from services.schemas import SpaceDetail, SpaceSummary

router = APIRouter(prefix="/v1/spaces", tags=["spaces"])


@router.get("", response_model=list[SpaceSummary])
def list_all() -> list[SpaceSummary]:
    out = []
    for name in list_spaces():
        space = get_space(name)
        out.append(
            SpaceSummary(
                name=name,
                description=space.description,
                cardinality=str(space.cardinality),
                options=[spec.to_dict() for spec in space.option_specs()],
            )
        )
    return out


@router.get("/{name}", response_model=SpaceDetail)
def describe(name: str, request: Request) -> SpaceDetail:
    """One space at the options given as query parameters (e.g. `?resolution=64`; defaults otherwise)."""
    try:
        space_class(name)
    except UnknownSpaceError as exc:
        raise ResourceNotFoundError(str(exc), field="name", allowed=exc.allowed) from None
    options = {key: parse_option_value(value) for key, value in request.query_params.items()}
    return SpaceDetail(**get_space(name, **options).describe())


def parse_option_value(text: str) -> Any:
    """A query value as JSON when it is (`64`, `0.5`, `true`), else the text itself (`fp16`)."""
    try:
        return json.loads(text)
    except ValueError:
        return text
