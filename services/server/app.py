"""The FastAPI application factory. OpenAPI docs at `/docs`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from latency_lut import SqlLatencyTable
from services.core.dashboard_data import TrialColumnsCache
from services.core.db import make_engine
from services.core.migrations import init_db
from services.core.scheduler import Scheduler
from services.core.search_queue import SearchQueue
from services.core.trial_reads import TrialReads
from services.core.trial_store import SqlTrialStore
from services.server.errors import install_error_handlers, install_openapi
from services.server.input_checks import RequestInputCheck
from services.server.middleware import AccessLog, BodySizeLimit, RequestStats, configure_logging
from services.server.routers import ROUTERS
from services.server.routers.dashboard import STATIC_DIR
from services.server.routers.health import service_version
from services.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, start_scheduler: bool = True) -> FastAPI:
    """The API on the database of `settings` (tables created if missing).

    With `start_scheduler`, the app's lifespan runs a `Scheduler` that executes queued searches in
    this process; without it the app only serves and queues (another process runs the searches).
    """
    settings = settings if settings is not None else get_settings()
    engine = make_engine(settings.database_url)
    init_db(engine)
    lut = SqlLatencyTable(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_scheduler:
            app.state.scheduler = Scheduler(settings, engine, lut=lut)
            app.state.scheduler.start()
        try:
            yield
        finally:
            scheduler = app.state.scheduler
            app.state.scheduler = None
            if scheduler is not None:
                # Joining waits for the evaluations in flight; off the event loop so it keeps serving.
                await anyio.to_thread.run_sync(scheduler.stop)
            engine.dispose()

    app = FastAPI(
        title="Hardware-aware NAS",
        version=service_version(),
        description="Submit architecture searches, follow them, read their Pareto fronts.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.queue = SearchQueue(engine)
    app.state.store = SqlTrialStore(engine)
    app.state.reads = TrialReads(engine)
    app.state.dashboard_columns = TrialColumnsCache(engine)
    app.state.lut = lut
    app.state.scheduler = None
    app.state.request_stats = RequestStats()
    if settings.log_format == "json":
        configure_logging("json", settings.log_level)
    # The last added is outermost: a too-large body is refused before anything else reads it; every
    # request gets its id and access record; then NUL characters and too deep JSON are refused.
    app.add_middleware(RequestInputCheck)
    app.add_middleware(AccessLog, stats=app.state.request_stats)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    install_openapi(app)
    for router in ROUTERS:
        app.include_router(router)
    # The dashboard page's own files (`/` and `/vendor/plotly.min.js` are routes of its router).
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
