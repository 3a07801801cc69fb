"""ASGI middleware of the API: a request body size limit, per-request access records (logged, and
counted for `/metrics`, each with a request id), and the logging set-up (plain text or one JSON
object per line). The checks of every request's input are `services.server.input_checks`.

Both middlewares are plain ASGI (no `BaseHTTPMiddleware`), so streamed responses (server-sent events,
exports) pass through unbuffered.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("services.access")

#: A request id a client may choose (`X-Request-ID`); any other value is replaced by a fresh one.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

#: Attributes every `logging.LogRecord` has; anything else on a record came from `extra=`.
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _too_large(limit: int) -> dict[str, Any]:
    return {
        "field": "body",
        "message": f"request body larger than {limit:,} bytes (NAS_MAX_BODY_BYTES); send smaller batches",
        "allowed": f"<= {limit} bytes",
    }


class BodySizeLimit:
    """Refuse request bodies above `max_bytes` with 413 and the API's JSON error body.

    A declared `Content-Length` above the limit is refused before the body is read; a body without one
    (chunked) is counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await _send_json(send, 413, {"detail": [_too_large(limit)]})
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # FastAPI re-raises HTTPExceptions raised while it reads the body.
                    raise HTTPException(413, detail=[_too_large(limit)])
            return message

        await self.app(scope, counted, send)


async def _send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestStats:
    """Requests served by this process, by method and status (what `/metrics` exports)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._seconds = 0.0

    def add(self, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._counts[(method, status)] += 1
            self._seconds += seconds

    def snapshot(self) -> tuple[dict[tuple[str, int], int], float]:
        with self._lock:
            return dict(self._counts), self._seconds


def request_id_of(scope: Scope) -> str:
    """The id of a request: the client's `X-Request-ID` when it is a short token, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _CLIENT_REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex[:16]


class AccessLog:
    """Log one record per request (`services.access`: method, path, status, duration, request id) and
    count it. The request id is in `request.state.request_id` and the `X-Request-ID` response header;
    an error's log lines and its 500 body carry it, so a report can be matched with the log."""

    def __init__(self, app: ASGIApp, stats: RequestStats):
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - start
            method = scope.get("method", "")
            self.stats.add(method, status, seconds)
            access_log.info(
                "%s %s %d %.1fms %s",
                method,
                scope.get("path", ""),
                status,
                seconds * 1000,
                request_id,
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": scope.get("path", ""),
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time` (ISO 8601 UTC), `level`, `logger`, `message`, the record's
    `extra=` fields, and `exception` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(log_format: str, level: str = "INFO") -> None:
    """Route the service's and uvicorn's loggers to stderr as `text` or `json` lines.

    Idempotent: the handler installed here replaces the one a previous call installed.
    """
    formatter: logging.Formatter = (
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("nas")
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "nas"] + [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # The access middleware logs every request with its fields; uvicorn's own access line repeats it.
    logging.getLogger("uvicorn.access").disabled = True
