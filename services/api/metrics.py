"""`GET /metrics`: the service's figures in the Prometheus text format (version 0.0.4).

Searches by status, trials recorded (by state) and evaluation errors, the trial throughput and the
evaluations in flight of the running searches, and the HTTP requests this process served. Every
figure comes from one aggregate query over `searches` (never a scan of `trials`), so a scrape costs
the same at any number of trials.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from services.api.deps import EngineDep
from services.auth import Scope, require_scope
from services.db import SearchRow, SearchStatus
from services.middleware import RequestStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["metrics"], dependencies=[require_scope(Scope.SEARCHES_READ)])

_S = SearchRow.__table__


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request, engine: EngineDep) -> PlainTextResponse:
    """Prometheus text exposition of searches by status, trials, evaluation errors, trials/s and
    HTTP requests (see docs/api.md)."""
    by_status = dict.fromkeys((s.value for s in SearchStatus), 0)
    totals = sa.select(
        sa.func.coalesce(sa.func.sum(_S.c.trials_done), 0),
        sa.func.coalesce(sa.func.sum(_S.c.trials_failed), 0),
    )
    running = sa.select(_S.c.trials_done, _S.c.elapsed_s, _S.c.budget_trials, _S.c.spec).where(
        _S.c.status == SearchStatus.RUNNING.value
    )
    with engine.connect() as conn:
        for status, count in conn.execute(sa.select(_S.c.status, sa.func.count()).group_by(_S.c.status)):
            by_status[status] = int(count)
        done, failed = (int(v) for v in conn.execute(totals).one())
        rate = 0.0
        in_flight = 0
        for trials_done, elapsed_s, budget, spec in conn.execute(running):
            if trials_done and elapsed_s > 0:
                rate += trials_done / elapsed_s
            parallelism = int(((spec or {}).get("budget") or {}).get("parallelism") or 1)
            in_flight += min(parallelism, max(0, budget - trials_done))
    lines: list[str] = []
    _family(
        lines,
        "nas_searches",
        "gauge",
        "Searches by status.",
        (({"status": s}, n) for s, n in by_status.items()),
    )
    _family(
        lines,
        "nas_trials_total",
        "counter",
        "Trials recorded, by state.",
        [({"state": "complete"}, done - failed), ({"state": "failed"}, failed)],
    )
    _family(
        lines, "nas_evaluation_errors_total", "counter", "Trials whose evaluation failed.", [({}, failed)]
    )
    _family(
        lines,
        "nas_trials_per_second",
        "gauge",
        "Trial throughput of the running searches (sum over them of trials / run time).",
        [({}, rate)],
    )
    _family(lines, "nas_trials_in_flight", "gauge", "Evaluations running now.", [({}, in_flight)])
    scheduler = getattr(request.app.state, "scheduler", None)
    _family(
        lines,
        "nas_scheduler_up",
        "gauge",
        "1 when this process runs searches.",
        [({}, int(scheduler is not None))],
    )
    stats: RequestStats | None = getattr(request.app.state, "request_stats", None)
    if stats is not None:
        counts, seconds = stats.snapshot()
        samples = [({"method": m, "status": str(s)}, n) for (m, s), n in sorted(counts.items())]
        _family(
            lines,
            "nas_http_requests_total",
            "counter",
            "HTTP requests served, by method and status.",
            samples,
        )
        _family(
            lines, "nas_http_request_seconds_total", "counter", "Seconds spent serving them.", [({}, seconds)]
        )
    return PlainTextResponse("\n".join(lines) + "\n", media_type=CONTENT_TYPE)


def _family(
    lines: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]
) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
