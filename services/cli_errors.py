"""What every `nas` command does with the errors a user can cause: one paragraph on stderr and an exit
code (2 for bad input or a refused request, 1 when the server is unreachable or failed, 130 when
interrupted); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from services.client import ClientError, ServerUnreachableError, format_detail

err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(
    user_errors: tuple[type[BaseException], ...], *, interrupted: str | None = None
) -> Callable[[F], F]:
    """A decorator: `user_errors` (besides the client's and the spaces' errors) exit 2 with their
    message; with `interrupted`, Ctrl-C exits 130 with that message."""
    from search_spaces import SpaceError

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except ServerUnreachableError as exc:
                fail(f"{exc}. Start a server with `nas serve` or point --server / NAS_SERVER_URL at one.", 1)
            except ClientError as exc:
                if exc.status >= 500:
                    fail(f"the server failed: {format_detail(exc.detail)}", 1)
                fail(f"the server refused the request ({exc.status}): {format_detail(exc.detail)}", 2)
            except SpaceError as exc:
                allowed = f" (allowed: {exc.allowed})" if exc.allowed not in (None, "", []) else ""
                fail(f"{exc}{allowed}", 2)
            except user_errors as exc:
                fail(str(exc), 2)
            except KeyboardInterrupt:
                if interrupted is None:
                    raise
                fail(interrupted, 130)

        return wrapper  # type: ignore[return-value]

    return decorate
