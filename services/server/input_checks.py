"""What every request's input must satisfy before any handler sees it, in one place for every route.

- No NUL character, anywhere: in the URL path, a query parameter's name or value, or a string (or
  object key) of a JSON body. PostgreSQL's text and JSON types cannot hold one (it answered 500) and
  SQLite stored it, so both backends now refuse it alike with a 422.
- JSON bodies nest at most `MAX_JSON_DEPTH` levels: deeper documents were stored and then could not
  be serialised again (every later read of them was a 500).
- Free-form JSON fields (`metadata`, `provenance`) hold at most `MAX_FREE_JSON_BYTES` bytes as JSON
  (`bounded_json`, used by the schemas, so the refusal names the field).

`RequestInputCheck` is the ASGI middleware that applies the first two to every request; a refusal is
the API's error shape, naming the parameter or the dotted path into the body.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Levels of nesting a JSON body may have (the body itself is level 1).
MAX_JSON_DEPTH = 32
#: Bytes a free-form JSON field (`metadata`, `provenance`) may take, serialised as compact JSON.
MAX_FREE_JSON_BYTES = 64 * 1024

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class InputProblem(ValueError):
    """What is wrong with a request's input: the field (parameter name or dotted body path) and why."""

    def __init__(self, field: str, message: str, allowed: Any):
        super().__init__(message)
        self.field = field
        self.allowed = allowed

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": str(self), "allowed": self.allowed}


class NotJsonBody(InputProblem):
    """A body that does not parse as JSON at all."""


def _path(trail: tuple[Any, str | int] | None, root: str) -> str:
    """The dotted path of a trail of (parent trail, key) pairs, built only for an error message."""
    parts: list[str | int] = []
    while trail is not None:
        trail, part = trail
        parts.append(part)
    text = root
    for part in reversed(parts):
        text = f"{text}[{part}]" if isinstance(part, int) else (f"{text}.{part}" if text else part)
    return text or "body"


def check_json(value: Any, *, root: str = "", max_depth: int = MAX_JSON_DEPTH, strings: bool = True) -> None:
    """Raise `InputProblem` for a JSON value nested deeper than `max_depth` or (with `strings`) holding a
    NUL character in a string or an object key; the field is the dotted path, under `root`.

    Only containers are walked one by one (scalars are looked at in their parent's loop), so a body of
    many numbers costs little more than reading it."""
    if isinstance(value, str):
        if strings and "\x00" in value:
            raise InputProblem(
                root or "body", f"{root or 'body'} contains a NUL character (\\u0000)", "text without NUL"
            )
        return
    if not isinstance(value, dict | list):
        return
    stack: list[tuple[Any, int, tuple[Any, str | int] | None]] = [(value, 1, None)]
    while stack:
        item, depth, trail = stack.pop()
        if depth > max_depth:
            where = _path(trail, root)
            raise InputProblem(
                where,
                f"{where}: JSON nested deeper than {max_depth} levels",
                f"at most {max_depth} levels of nesting",
            )
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if strings and isinstance(key, str) and "\x00" in key:
                where = _path(trail, root)
                raise InputProblem(
                    where, f"{where} has a key containing a NUL character (\\u0000)", "keys without NUL"
                )
            if isinstance(child, str):
                if strings and "\x00" in child:
                    where = _path((trail, key), root)
                    raise InputProblem(
                        where, f"{where} contains a NUL character (\\u0000)", "text without NUL"
                    )
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1, (trail, key)))


def bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    """A pydantic after-validator of free-form JSON fields: at most `MAX_JSON_DEPTH` levels, no NUL,
    at most `MAX_FREE_JSON_BYTES` bytes as compact JSON (`ValueError` saying which limit)."""
    try:
        check_json(value)
    except InputProblem as exc:
        raise ValueError(str(exc).removeprefix("body").lstrip(": ") or str(exc)) from None
    size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    if size > MAX_FREE_JSON_BYTES:
        raise ValueError(f"{size:,} bytes as JSON; at most {MAX_FREE_JSON_BYTES:,} bytes are stored")
    return value


def check_path_and_query(scope: Scope) -> None:
    """Raise `InputProblem` for a NUL character in the URL path or in a query parameter."""
    if "\x00" in scope.get("path", ""):
        raise InputProblem("path", "the URL path contains a NUL character (%00)", "a path without %00")
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" not in query and "\x00" not in query:
        return
    for name, value in parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace"):
        if "\x00" in name or "\x00" in value:
            field = name.replace("\x00", "") or "query"
            raise InputProblem(
                field, f"query parameter {field!r} contains a NUL character (%00)", "text without %00"
            )


def _declared_json(scope: Scope) -> bool | None:
    """Whether the request declares a JSON body: True for a JSON content type, False for another one,
    None without a content type (FastAPI reads such a body as JSON on JSON routes; routes that take
    raw bytes, such as table files, take it as it is)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return media == "application/json" or (
                media.startswith("application/") and media.endswith("+json")
            )
    return None


class RequestInputCheck:
    """Refuse (422, the API's error shape) requests with a NUL character in the path, the query or a
    JSON body, or a JSON body nested deeper than `MAX_JSON_DEPTH`; see the module docstring.

    A JSON body (declared JSON, or undeclared: FastAPI reads those as JSON too) is read whole (the body
    size limit outside this middleware bounds it), checked, and handed on unchanged; one that is not
    UTF-8 JSON is a 422 naming `body` (FastAPI answered some of those with a 400 in another shape).
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_path_and_query(scope)
        except InputProblem as exc:
            await send_error(send, 422, [exc.to_dict()])
            return
        declared = _declared_json(scope)
        if scope.get("method", "") not in _BODY_METHODS or declared is False:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break  # the client went away; the route will see the same
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except HTTPException as exc:  # the body size limit refused the body while it arrived
            await send_error(send, exc.status_code, exc.detail)
            return
        body = b"".join(chunks)
        problem = _body_problem(body)
        # An undeclared body that is no JSON at all may be a file for a raw-bytes route: the route
        # answers for it (JSON routes refuse it with the API's 422 too).
        if problem is not None and not (declared is None and isinstance(problem, NotJsonBody)):
            await send_error(send, 422, [problem.to_dict()])
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _body_problem(body: bytes) -> InputProblem | None:
    if not body.strip():
        return None
    try:
        value = json.loads(body)
    except RecursionError:
        return InputProblem(
            "body",
            f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels",
            f"at most {MAX_JSON_DEPTH} levels",
        )
    except UnicodeDecodeError as exc:
        return NotJsonBody("body", f"the request body is not UTF-8 text ({exc.reason})", "a JSON object")
    except json.JSONDecodeError as exc:
        return NotJsonBody(
            "body", f"the request body is not valid JSON ({exc.msg} at character {exc.pos})", "a JSON object"
        )
    except ValueError:  # e.g. an integer of more digits than Python converts: the route's parsing answers
        return None
    try:
        # A JSON text can hold a NUL only as the escape \u0000 (a raw one is invalid JSON): without
        # one, only the nesting needs a look.
        check_json(value, strings=b"\\u0000" in body)
    except InputProblem as exc:
        return exc
    return None


async def send_error(send: Send, status: int, detail: Any) -> None:
    """Answer with the API's JSON error body (`{"detail": [...]}`)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
