"""What every `nas` command does with the errors a user can cause: one paragraph on stderr and an exit
code (2 for bad input or a refused request, 1 when the server or the database is unreachable or the
server failed, 130 when interrupted); anything else is a bug and keeps its traceback.

Errors of the domain packages are recognised by class *without importing* their modules: an exception
of `sqlalchemy` or `search_spaces` can only be raised once that module is loaded, so the decorator
looks in `sys.modules`. A command that only talks HTTP therefore never pays for importing torch or
sqlalchemy here.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from services.client import ClientError, ServerUnreachableError, format_detail

err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

#: Plain Python errors that mean bad input (a file that is not there, a malformed value).
BAD_INPUT = (ValueError, FileNotFoundError, PermissionError)
#: Domain errors that mean bad input, by (module, class): exit 2 with their message.
_BAD_INPUT_CLASSES = (
    ("search_spaces", "SpaceError"),
    ("nas.training.errors", "TrainingConfigError"),
    ("latency_lut", "NoLocalBackendError"),
    ("latency_lut.backends", "BackendUnavailableError"),
    ("services.farm.agent", "FarmError"),
    ("services.core.migrations", "MigrationError"),
    ("services.core.auth", "UnknownKeyError"),
)


def fail(message: str, code: int) -> NoReturn:
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _loaded_class(module: str, name: str) -> type[BaseException] | None:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _is(exc: BaseException, module: str, name: str) -> bool:
    cls = _loaded_class(module, name)
    return cls is not None and isinstance(exc, cls)


def with_allowed(exc: BaseException) -> str:
    """The error's message, with the values it allows unless the message already lists them."""
    allowed = getattr(exc, "allowed", None)
    if allowed in (None, "", []) or str(allowed) in str(exc):
        return str(exc)
    return f"{exc} (allowed: {allowed})"


def _exit_for(exc: BaseException) -> tuple[str, int] | None:
    """The message and exit code of an error a user can cause; None for a bug."""
    if isinstance(exc, ServerUnreachableError):
        return f"{exc}. Start a server with `nas serve` or point --server / NAS_SERVER_URL at one.", 1
    if isinstance(exc, ClientError):
        detail = format_detail(exc.detail)
        detail = detail if detail.startswith("\n") else f" {detail}"  # several errors: a line each
        if exc.status >= 500:
            return f"the server failed:{detail}", 1
        return f"the server refused the request ({exc.status}):{detail}", 2
    if _is(exc, "sqlalchemy.exc", "OperationalError"):
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return f"the database does not answer: {reason}", 1
    if _is(exc, "sqlalchemy.exc", "ArgumentError") or _is(exc, "sqlalchemy.exc", "NoSuchModuleError"):
        return f"bad database URL: {exc}", 2
    if any(_is(exc, module, name) for module, name in _BAD_INPUT_CLASSES) or isinstance(exc, BAD_INPUT):
        return with_allowed(exc), 2
    return None


def user_errors(*, interrupted: str | None = None) -> Callable[[F], F]:
    """A decorator for every `nas` command: errors a user can cause exit with one paragraph (see the
    module); with `interrupted`, Ctrl-C exits 130 with that message."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                if interrupted is None:
                    raise
                fail(interrupted, 130)
            except Exception as exc:
                outcome = _exit_for(exc)
                if outcome is None:
                    raise
                fail(*outcome)

        return wrapper  # type: ignore[return-value]

    return decorate
