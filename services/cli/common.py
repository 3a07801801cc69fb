"""What every `nas` sub-command shares: its consoles, the options that recur (`--server`, `--json`,
`-o NAME=VALUE`) and the client of the server those commands talk to."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.client import NasClient
from services.option_values import parse_option_pairs

# Reports are lines that scripts read: never hard-wrapped.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

#: Seconds between two progress lines when the output is not a terminal (a log file, a pipe).
PROGRESS_LINE_S = 10.0

ServerOpt = Annotated[
    str | None, typer.Option("--server", help="API URL (default: NAS_SERVER_URL or http://127.0.0.1:8000)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
OptionsOpt = Annotated[
    list[str] | None, typer.Option("--option", "-o", help="space option NAME=VALUE, repeatable")
]

#: The `--api-key` of the running `nas` command, set by the app's callback at every invocation.
_api_key: str | None = None


def set_api_key(value: str | None) -> None:
    global _api_key
    _api_key = value or None


def api_key() -> str | None:
    """The key given to `nas --api-key ...` (or NAS_API_KEY) for the running command, if any."""
    return _api_key


def client(server: str | None) -> NasClient:
    """A client of `server` (default: NAS_SERVER_URL) sending the command's API key."""
    return NasClient(server, api_key=api_key())


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """The `-o NAME=VALUE` options of a command as a dict (values as JSON when they parse)."""
    return parse_option_pairs(pairs)


def table(*headers: str, **kwargs: Any) -> Table:
    """A table whose cells fold instead of being cut with an ellipsis: names, ids and objectives are
    shown whole."""
    grid = Table(**kwargs)
    for header in headers:
        grid.add_column(header, overflow="fold")
    return grid


def print_table(grid: Table, console: Console = out) -> None:
    """Print a table at its natural width when the output is not a terminal (a pipe or a file has no
    80-column limit), else at the terminal's width."""
    if console.is_terminal:
        console.print(grid)
        return
    natural = Measurement.get(console, console.options.update_width(100_000), grid).maximum
    # A console's own width caps what it prints: print through one as wide as the table.
    wide = Console(file=console.file, width=max(console.width, natural), soft_wrap=True, color_system=None)
    wide.print(grid)


#: Units of the objectives as the CLI shows them: (unit, divisor).
_UNITS = {"params": ("M", 1e6), "macs": ("GMACs", 1e9)}


def objective_unit(name: str) -> str:
    """The unit `format_value` shows `name` in: ms for latency, M for params, GMACs for MACs."""
    if name.startswith("latency:"):
        return "ms"
    return _UNITS.get(name, ("", 1.0))[0]


def format_value(name: str, value: float) -> str:
    """An objective's value in its unit (`objective_unit`), with 4 significant digits."""
    _unit, divisor = _UNITS.get(name, ("", 1.0))
    return f"{value / divisor:.4g}"


_TASK_KEYS = {"description", "total", "completed", "printed", "start", "last"}


class LineProgress:
    """What `Progress` offers the commands (`add_task`, `update`, `console`), as plain lines: one per
    task when it starts, when its phase changes, at most every `PROGRESS_LINE_S` seconds, and when it
    completes. For output that is not a terminal (nohup, systemd, a pipe), where a live bar would
    show nothing until the end."""

    def __init__(self, console: Console):
        self.console = console
        self._tasks: dict[int, dict[str, Any]] = {}

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = {"description": description, "total": total, "completed": 0, "printed": 0.0}
        self._tasks[task_id].update(fields)
        self._tasks[task_id]["start"] = time.monotonic()
        self._line(task_id, force=True)
        return task_id

    def update(self, task_id: int, **changes: Any) -> None:
        task = self._tasks[task_id]
        phase = str(task["description"]).split(":", 1)[0]
        changes = {key: value for key, value in changes.items() if value is not None}
        if "advance" in changes:
            task["completed"] += changes.pop("advance")
        task.update(changes)
        done = task["total"] is not None and task["completed"] >= task["total"]
        self._line(task_id, force=done or str(task["description"]).split(":", 1)[0] != phase)

    def _line(self, task_id: int, *, force: bool) -> None:
        task = self._tasks[task_id]
        now = time.monotonic()
        if not force and now - task["printed"] < PROGRESS_LINE_S:
            return
        total = task["total"]
        count = f"{task['completed']:,.0f}" + ("" if total is None else f" / {total:,.0f}")
        if total:
            count += f" ({100 * task['completed'] / total:.0f}%)"
        extra = "".join(f", {k} {v}" for k, v in task.items() if k not in _TASK_KEYS)
        text = f"{task['description']}: {count}{extra}, {now - task['start']:.0f}s"
        if text != task.get("last"):
            self.console.print(text, markup=False, highlight=False)
            task["last"] = text
        task["printed"] = now


@contextmanager
def progress_bar(console: Console, *columns: Any) -> Iterator[Progress | LineProgress]:
    """A live progress bar on a terminal, else `LineProgress` (plain lines, see there)."""
    if not console.is_terminal:
        yield LineProgress(console)
        return
    columns = columns or (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        yield bar
