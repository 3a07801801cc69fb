"""Error handlers: every bad request gets a 4xx with `{"detail": [{"field", "message", "allowed"}]}`.

Pydantic's validation errors are rewritten into that shape: `field` is the dotted path into the body
(`budget.trials`, `objectives[0]`) or the query parameter's name, and `allowed` is read from the
declared type of that field (enum values, literal values, numeric range, known field names).
"""

from __future__ import annotations

import enum
import json
import logging
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import annotated_types as at
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from sqlalchemy.exc import OperationalError

from search_spaces import FieldError, OptionError, SearchSpace, SpaceError, UnknownSpaceError, get_space
from services.core.model_export import ExportRefusedError
from services.core.search_queue import SearchNotFoundError, SearchStateError

log = logging.getLogger(__name__)

_PARAM_SOURCES = ("query", "path", "header", "cookie")


class ResourceNotFoundError(LookupError):
    """A resource named in the URL does not exist: 404 naming the path parameter and what exists."""

    def __init__(self, message: str, *, field: str, allowed: Any = None):
        super().__init__(message)
        self.field = field
        self.allowed = allowed


def error_response(status: int, field: str, message: str, allowed: Any = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"detail": [{"field": field, "message": message, "allowed": allowed}]}
    )


def conflict(fields: list[str], message: str) -> HTTPException:
    """409 in the API's error shape, one item per conflicting field."""
    return HTTPException(409, detail=[{"field": f, "message": message, "allowed": None} for f in fields[:20]])


def space_at(name: str, options: dict[str, Any], *, field: str = "space_options") -> SearchSpace:
    """`get_space(name, **options)` with option errors named under `field` (`space_options.resolution`)."""
    try:
        return get_space(name, **options)
    except UnknownSpaceError:
        raise
    except OptionError as exc:
        raise OptionError(str(exc), field=f"{field}.{exc.field}", allowed=exc.allowed) from None


def canonical_at(space: SearchSpace, config: Any, *, field: str = "config") -> dict[str, Any]:
    """`space.canonicalize(config)` with its errors named under `field` (`configs[3].stage2.depth`)."""
    try:
        return space.canonicalize(config)
    except SpaceError as exc:
        where = field if exc.field in ("config", "", None) else f"{field}.{exc.field}"
        raise type(exc)(str(exc), field=where, allowed=exc.allowed) from None


class QueryParamError(ValueError):
    """A query parameter whose text is not what the route reads from it (422 naming the parameter)."""

    def __init__(self, field: str, message: str, allowed: Any = None):
        super().__init__(message)
        self.field, self.allowed = field, allowed


def json_query_param(name: str, text: str | None, kind: type[dict] | type[list]) -> Any:
    """A query parameter holding JSON (an object or a list), None when absent; else `QueryParamError`."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, kind):
        shape = "a JSON object" if kind is dict else "a JSON list"
        raise QueryParamError(name, f"{name} must be {shape}, got {text!r}", shape)
    return value


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    # FieldError: the base of SpaceError, TrainingConfigError and the other errors that name a field.
    app.add_exception_handler(FieldError, _space_error)
    app.add_exception_handler(ResourceNotFoundError, _resource_not_found)
    app.add_exception_handler(SearchNotFoundError, _search_not_found)
    app.add_exception_handler(SearchStateError, _search_state_error)
    app.add_exception_handler(ExportRefusedError, _export_refused)
    app.add_exception_handler(QueryParamError, _query_param_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _internal_error)


async def _space_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FieldError)
    return JSONResponse(status_code=422, content={"detail": exc.details()})


async def _resource_not_found(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ResourceNotFoundError)
    return error_response(404, exc.field, str(exc), exc.allowed)


async def _search_not_found(_request: Request, exc: Exception) -> JSONResponse:
    return error_response(404, "search_id", str(exc))


async def _search_state_error(_request: Request, exc: Exception) -> JSONResponse:
    return error_response(409, "status", str(exc), ["queued", "running"])


async def _query_param_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueryParamError)
    return error_response(422, exc.field, str(exc), exc.allowed)


async def _export_refused(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ExportRefusedError)
    return error_response(exc.status, exc.field, str(exc), exc.allowed)


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "-")


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The driver's message can hold the statement and its values: the log has it, the client does not.
    request_id = _request_id(request)
    log.error("database error in %s %s (request %s): %s", request.method, request.url.path, request_id, exc)
    response = error_response(
        503, "database", f"the database is unavailable; try again later (request id {request_id})"
    )
    response.headers["x-request-id"] = request_id
    return response


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Only bugs get here (bad input has its own handlers). The exception, and whatever it holds (on
    # PostgreSQL a statement with its bound values), goes to the log only; the body says "internal
    # error" with the request id that finds the log record.
    request_id = _request_id(request)
    log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id)
    message = f"internal error (request id {request_id})"
    content = {
        "error": "internal error",
        "request_id": request_id,
        "detail": [{"field": "", "message": message, "allowed": None}],
    }
    return JSONResponse(status_code=500, content=content, headers={"x-request-id": request_id})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    route = request.scope.get("route")
    endpoint = getattr(route, "endpoint", None)
    items = [_error_item(error, endpoint) for error in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": items})


def _error_item(error: dict[str, Any], endpoint: Callable[..., Any] | None) -> dict[str, Any]:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "json_invalid":
        position = loc[1] if len(loc) > 1 else "?"
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        return {
            "field": "body",
            "message": f"the request body is not valid JSON ({reason} at character {position})",
            "allowed": "a JSON object",
        }
    field = _dotted(loc)
    message = f"{field} is required" if kind == "missing" else f"{field}: {error.get('msg', 'invalid value')}"
    allowed = None
    if endpoint is not None:
        try:
            allowed = _allowed(endpoint, loc, kind)
        except (TypeError, NameError):  # annotations that cannot be resolved: fall back to the context
            allowed = None
    if allowed is None:
        allowed = _allowed_from_context(error.get("ctx") or {})
    return {"field": field, "message": message, "allowed": allowed}


def _dotted(loc: Sequence[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", *_PARAM_SOURCES):
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or (str(loc[0]) if loc else "request")


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """The bare type of an annotation and the constraint metadata around it (Annotated, Optional)."""
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            for item in extra:
                if isinstance(item, FieldInfo):
                    metadata.extend(item.metadata)
                else:
                    metadata.append(item)
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, metadata
            annotation = args[0]
        else:
            return annotation, metadata


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _allowed(endpoint: Callable[..., Any], loc: tuple[Any, ...], kind: str) -> Any:
    """What the endpoint's declared type accepts at `loc`."""
    hints = typing.get_type_hints(endpoint, include_extras=True)
    if not loc:
        return None
    if loc[0] == "body":
        models = [_unwrap(h)[0] for h in hints.values() if _is_model(_unwrap(h)[0])]
        if not models:
            return None
        annotation, metadata, path = models[0], [], loc[1:]
    elif loc[0] in _PARAM_SOURCES and len(loc) > 1 and loc[1] in hints:
        annotation, metadata = _unwrap(hints[loc[1]])
        path = loc[2:]
    else:
        return None
    parent: Any = None
    for part in path:
        if isinstance(part, int):
            args = typing.get_args(annotation)
            annotation, metadata = _unwrap(args[0]) if args else (Any, [])
        elif _is_model(annotation):
            parent = annotation
            info = annotation.model_fields.get(part)
            if info is None:
                return list(annotation.model_fields) if kind == "extra_forbidden" else None
            annotation, metadata = _unwrap(info.annotation)
            metadata = [*metadata, *info.metadata]
        else:
            return None
    if kind == "extra_forbidden" and parent is not None:
        return list(parent.model_fields)
    return _describe(annotation, metadata)


def _describe(annotation: Any, metadata: list[Any]) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if annotation is bool:
        return [True, False]
    if annotation in (int, float):
        low = high = None
        low_open = high_open = False
        for item in metadata:
            if isinstance(item, at.Ge):
                low = item.ge
            elif isinstance(item, at.Gt):
                low, low_open = item.gt, True
            elif isinstance(item, at.Le):
                high = item.le
            elif isinstance(item, at.Lt):
                high, high_open = item.lt, True
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        return f"{annotation.__name__} in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
    if _is_model(annotation):
        return f"a JSON object with the fields {list(annotation.model_fields)}"
    for item in metadata:
        if isinstance(item, at.MaxLen | at.MinLen):
            return _length_text(metadata)
    return None


def _length_text(metadata: list[Any]) -> str:
    low = next((m.min_length for m in metadata if isinstance(m, at.MinLen)), 0)
    high = next((m.max_length for m in metadata if isinstance(m, at.MaxLen)), None)
    return f"length between {low} and {high}" if high is not None else f"length at least {low}"


def _allowed_from_context(ctx: dict[str, Any]) -> Any:
    for key, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in ctx:
            return f"{symbol} {ctx[key]}"
    if "expected" in ctx:
        return str(ctx["expected"])
    return None


# ----------------------------------------------------------------------------- the OpenAPI document
_ERROR_ITEM = {
    "title": "ErrorItem",
    "type": "object",
    "required": ["field", "message"],
    "properties": {
        "field": {"type": "string", "description": "dotted path into the body, or the parameter's name"},
        "message": {"type": "string"},
        "allowed": {
            "description": "what would be accepted",
            "anyOf": [{"type": "array", "items": {}}, {"type": "string"}, {"type": "null"}],
        },
    },
}
_ERROR_BODY = {
    "title": "ErrorBody",
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "array", "items": {"$ref": "#/components/schemas/ErrorItem"}}},
}
_INTERNAL_ERROR_BODY = {
    "title": "InternalErrorBody",
    "type": "object",
    "required": ["error", "request_id", "detail"],
    "properties": {
        "error": {"type": "string", "enum": ["internal error"]},
        "request_id": {"type": "string", "description": "the id under which the log has the details"},
        "detail": {"type": "array", "items": {"$ref": "#/components/schemas/ErrorItem"}},
    },
}
_WHY = {
    "401": "no key, or an unknown, revoked or expired one",
    "403": "a key without the scope this operation needs",
    "404": "the resource the path names does not exist",
    "413": "the request body is larger than NAS_MAX_BODY_BYTES",
    "422": "invalid input: each item names the field and what is allowed",
    "500": "a bug: `internal error` and the request id; the details are in the server's log",
    "503": "the database (or another dependency) is unavailable",
}


def _json_error(status: str, schema: str) -> dict[str, Any]:
    return {
        "description": _WHY[status],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """The app's OpenAPI document with the error answers the API really gives: every 4xx/5xx body in
    the `{"detail": [{"field", "message", "allowed"}]}` shape (not FastAPI's `{loc, msg, type}`), 422 on
    every operation (the input checks apply to all), 401/403 where a key is needed, 404 where the
    path names a resource, 413 where there is a body, 500 and 503 everywhere."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorItem"] = _ERROR_ITEM
    schemas["ErrorBody"] = _ERROR_BODY
    schemas["InternalErrorBody"] = _INTERNAL_ERROR_BODY
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            responses = operation.setdefault("responses", {})
            wanted = ["422", "500", "503"]
            if operation.get("security"):
                wanted += ["401", "403"]
            if "{" in path:
                wanted.append("404")
            if "requestBody" in operation:
                wanted.append("413")
            for status in wanted:
                responses[status] = _json_error(
                    status, "InternalErrorBody" if status == "500" else "ErrorBody"
                )
            for status, response in responses.items():
                # Whatever a route declared for an error status, the body is the API's error shape.
                if status.startswith(("4", "5")) and status not in wanted:
                    response.setdefault("description", _WHY.get(status, "error"))
                    response["content"] = {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                    }
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve `document_errors` of FastAPI's generated document at `/openapi.json` (built once)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
