"""Helpers of the service tests: a live uvicorn server, throw-away settings, a small search spec."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import Engine

from services.settings import Settings


class LiveServer:
    """The real app served by uvicorn on a free port in a background thread."""

    def __init__(self, app) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        host, port = self._sock.getsockname()
        self.url = f"http://{host}:{port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(120)
        self._sock.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_spec(path: Path, objectives: str, trials: int) -> Path:
    """A tiny demo spec file for `nas serve --demo`: EfficientFormerV2 at 32 px, random strategy."""
    path.write_text(
        "name: demo\nspace: efficientformerv2\nspace_options: {resolution: 32, num_classes: 10}\n"
        f"objectives: [{objectives}]\nstrategy: random\nbudget: {{trials: {trials}, parallelism: 1}}\n"
    )
    return path


def serve_env(database: Path, **extra: str) -> dict[str, str]:
    """The environment of a `nas serve` subprocess: its own SQLite file, joined to this test session's
    Ray (not a second one on a small machine), unbuffered output, plus `extra`."""
    import ray

    return {
        **os.environ,
        "NAS_DATABASE_URL": f"sqlite:///{database}",
        "NAS_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "NAS_WARM_EVALUATORS": "0",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def throwaway_server(tmp_path: Path, *, scheduler: bool = False, **overrides) -> LiveServer:
    """A live server on throw-away settings (`service_settings(tmp_path, **overrides)`); without a
    `scheduler` (the default) searches stay queued. Use it as a context manager."""
    from services.server.app import create_app

    return LiveServer(create_app(service_settings(tmp_path, **overrides), start_scheduler=scheduler))


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout_s: float = 300,
    *,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    """Poll `condition`; the bound only guards against hangs (no timing is asserted). `on_timeout`
    adds context (a server's log) to the failure."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            context = f"\n{on_timeout()}" if on_timeout is not None else ""
            raise AssertionError(f"timed out waiting for {what}{context}")
        time.sleep(0.05)


@contextlib.contextmanager
def empty_service_database(tmp_path: Path, postgres: Engine | None = None) -> Iterator[tuple[str, Engine]]:
    """(URL, engine) of an empty service database that other processes can open by its URL: a SQLite
    file under `tmp_path`, or with `postgres` (an engine on the test database) a PostgreSQL schema of
    its own, dropped afterwards."""
    from services.core.db import make_engine
    from services.core.migrations import init_db

    schema = None if postgres is None else f"nas_test_{uuid.uuid4().hex[:12]}"
    if postgres is None:
        url = f"sqlite:///{tmp_path / 'nas.db'}"
    else:
        with postgres.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        # libpq's `options` sets the search path of every connection, the server's included.
        base = postgres.url.render_as_string(hide_password=False)
        url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    try:
        init_db(engine)
        yield url, engine
    finally:
        engine.dispose()
        if postgres is not None:
            with postgres.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def service_settings(tmp_path: Path, **overrides) -> Settings:
    """Settings for a throw-away service: its own SQLite file, quick LUT measurements, fast polling.

    Auth is off (these servers bind to 127.0.0.1); tests of auth pass `auth_disabled=False`.
    """
    values = {
        "auth_disabled": True,
        "database_url": f"sqlite:///{tmp_path / 'nas.db'}",
        "lut_warmup": 1,
        "lut_repeats": 2,
        "scheduler_poll_s": 0.1,
        "ray_num_cpus": 2,
        # The session's Ray (2 CPUs) is shared by every test's scheduler: none may keep actors idle.
        "warm_evaluators": 0,
    }
    values.update(overrides)
    return Settings(**values)


#: A small real search: EfficientFormerV2 at 32 px with 10 classes, latency on this CPU and params.
SMALL_SPEC = {
    "name": "small-test-search",
    "space": "efficientformerv2",
    "space_options": {"resolution": 32, "num_classes": 10},
    "objectives": ["latency:host-cpu-torch", "params"],
    "strategy": "nsga2",
    "strategy_params": {"population_size": 4},
    "budget": {"trials": 8, "parallelism": 2},
    "seed": 3,
}


def wait_for(http_client: httpx.Client, search_id: str, statuses: set[str], timeout_s: float = 240) -> dict:
    """Poll a search until its status is one of `statuses` (a generous bound only against hangs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        search = http_client.get(f"/v1/searches/{search_id}").json()
        if search["status"] in statuses:
            return search
        if time.monotonic() > deadline:
            raise AssertionError(f"search {search_id} still {search['status']}: {search['status_message']}")
        time.sleep(0.2)


@contextlib.contextmanager
def backend_live_server(request, tmp_path_factory, prefix: str) -> Iterator[LiveServer]:
    """A live app (auth on, no scheduler) over an empty database of the backend `request.param`
    ("sqlite" or "postgres"): what module fixtures parametrized over both backends serve."""
    from services.server.app import create_app

    tmp_path = tmp_path_factory.mktemp(f"{prefix}-{request.param}")
    postgres = request.getfixturevalue("postgres_engine") if request.param == "postgres" else None
    with empty_service_database(tmp_path, postgres) as (url, _engine):
        settings = service_settings(tmp_path, database_url=url, auth_disabled=False)
        with LiveServer(create_app(settings, start_scheduler=False)) as live:
            yield live
