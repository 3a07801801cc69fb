"""`GET /metrics`: the service's figures in the Prometheus text format (version 0.0.4).

Searches by status, trials recorded (by state) and evaluation errors, the trial throughput and the
evaluations in flight of the running searches, and the HTTP requests this process served. Every
figure comes from one aggregate query over `searches` (never a scan of `trials`), so a scrape costs
the same at any number of trials.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from services.server.deps import QueueDep, RequestStatsDep, Scope, require_scope

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["metrics"], dependencies=[require_scope(Scope.SEARCHES_READ)])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request, queue: QueueDep, stats: RequestStatsDep) -> PlainTextResponse:
    """Prometheus text exposition of searches by status, trials, evaluation errors, trials/s and
    HTTP requests (see docs/api.md)."""
    figures = queue.figures()
    done, failed = figures.trials_done, figures.trials_failed
    lines: list[str] = []
    _family(
        lines,
        "nas_searches",
        "gauge",
        "Searches by status.",
        (({"status": s}, n) for s, n in figures.searches_by_status.items()),
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
        [({}, figures.trials_per_second)],
    )
    _family(
        lines, "nas_trials_in_flight", "gauge", "Evaluations running now.", [({}, figures.trials_in_flight)]
    )
    scheduler = getattr(request.app.state, "scheduler", None)
    _family(
        lines,
        "nas_scheduler_up",
        "gauge",
        "1 when this process runs searches.",
        [({}, int(scheduler is not None))],
    )
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
