"""Shared fixtures of the service tests: databases, Ray, a live API server on a real port."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from svc_helpers import SMALL_SPEC, LiveServer, throwaway_server, wait_for

from services.core.db import make_engine
from services.core.migrations import init_db

POSTGRES_URL = os.environ.get("NAS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    """The PostgreSQL test database with the service's tables; skips when no server answers."""
    engine = make_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        init_db(engine)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig or exc).splitlines()[0]
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} (env NAS_TEST_POSTGRES_URL) is not reachable: {reason}")
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_isolated_engine(postgres_engine: Engine) -> Iterator[Engine]:
    """The service's tables in a PostgreSQL schema of their own, dropped afterwards: tests that look
    at every row (claims, orphan recovery) cannot meet rows of parallel runs."""
    schema = f"nas_test_{uuid.uuid4().hex[:12]}"
    with postgres_engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = postgres_engine.execution_options(schema_translate_map={None: schema})
    try:
        init_db(engine)
        yield engine
    finally:
        with postgres_engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'nas.db'}")
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session (2 CPUs), as the scheduler would start it."""
    import ray

    from nas.runner import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def server(tmp_path_factory, ray_session) -> Iterator[LiveServer]:
    """One live server with its scheduler for the session's API and CLI tests."""
    with throwaway_server(tmp_path_factory.mktemp("live"), scheduler=True) as live:
        yield live


@pytest.fixture(scope="session")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def finished_search(http: httpx.Client) -> dict:
    """The small search, submitted once and run to its end by the live server."""
    created = http.post("/v1/searches", json=SMALL_SPEC)
    assert created.status_code == 202, created.text
    return wait_for(http, created.json()["id"], {"succeeded", "failed", "cancelled"})


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database (dropped afterwards), for tests that need the whole
    database to themselves: migrations from nothing, a live server whose scheduler must meet no rows
    of other runs. Skips when no server answers."""
    admin = sa.create_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}, poolclass=sa.NullPool
    )
    name = f"nas_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        reason = str(exc.orig or exc).splitlines()[0]
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} (env NAS_TEST_POSTGRES_URL) is not reachable: {reason}")
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
