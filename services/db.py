"""Database: engine factory and the service's tables (`searches`, `trials`, and for device farms
`devices`, `lut_samples`, `lut_accuracy`).

SQLite (the default, one file under `var/`) and PostgreSQL (`postgresql+psycopg://...`) are both
first-class: every query here is plain SQLAlchemy Core/ORM that both understand.
"""

from __future__ import annotations

import enum
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SQLITE_BUSY_TIMEOUT_MS = 30_000


class SearchStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (SearchStatus.SUCCEEDED, SearchStatus.FAILED, SearchStatus.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_search_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no timezone type and would hand back naive datetimes, so values are stored as naive
    UTC there and made aware again on the way out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the database stores timezone-aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the service's own tables (the LUT tables live in `latency_lut._sql`)."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: sa.JSON,
        float: sa.Double,
    }


class SearchRow(Base):
    """One submitted search and its progress; the scheduler is its only writer while it runs."""

    __tablename__ = "searches"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="ck_searches_status"
        ),
        sa.Index("ix_searches_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True, default=new_search_id)
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(sa.String(16), default=SearchStatus.QUEUED.value)
    status_message: Mapped[str] = mapped_column(sa.Text, default="")
    error: Mapped[str | None] = mapped_column(sa.Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    trials_done: Mapped[int] = mapped_column(default=0)
    trials_failed: Mapped[int] = mapped_column(default=0)
    budget_trials: Mapped[int]
    front_size: Mapped[int] = mapped_column(default=0)
    hypervolume: Mapped[float | None]
    elapsed_s: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TrialRow(Base):
    """One trial of a search, keyed by (search id, number) like `nas.Trial`."""

    __tablename__ = "trials"
    __table_args__ = (sa.Index("ix_trials_search_config", "search_id", "config_id"),)

    search_id: Mapped[str] = mapped_column(
        sa.String(32), sa.ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True
    )
    # No autoincrement: the runner chooses numbers, and (search_id, number) uniqueness is what makes a
    # resumed runner unable to record a trial twice.
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    config: Mapped[dict[str, Any]]
    config_id: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(16))
    values: Mapped[dict[str, Any]]
    feasible: Mapped[bool] = mapped_column(default=True)
    metrics: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(sa.Text)
    duration_s: Mapped[float] = mapped_column(default=0.0)
    finished_at: Mapped[datetime]
    on_front: Mapped[bool] = mapped_column(default=False)


class DeviceRow(Base):
    """A latency target registered by a farm or a user (built-in devices need no row)."""

    __tablename__ = "devices"

    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    runtime: Mapped[str] = mapped_column(sa.String(100))
    hardware: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    # `metadata` is taken by SQLAlchemy's declarative classes; the column keeps the API's name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SampleRow(Base):
    """The raw samples one agent run uploaded for one key of one device, with their provenance.

    Unique per (device, run id, key): that is what makes an upload retried by an agent a no-op.
    Table entries (`lut_entries`) are aggregated from these rows; `outlier` marks a run left out of
    its entry (see `latency_lut.aggregate`).
    """

    __tablename__ = "lut_samples"
    __table_args__ = (
        sa.UniqueConstraint("device", "run_id", "key", name="uq_lut_samples_run_key"),
        sa.Index("ix_lut_samples_device_key", "device", "key"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    device: Mapped[str] = mapped_column(sa.String(200))
    run_id: Mapped[str] = mapped_column(sa.String(64))
    key: Mapped[str] = mapped_column(sa.String(1024))
    kind: Mapped[str] = mapped_column(sa.String(200))
    space: Mapped[str] = mapped_column(sa.String(100))
    samples_ms: Mapped[list[float]] = mapped_column(sa.JSON)
    median_ms: Mapped[float]
    features: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    provenance: Mapped[dict[str, Any]]
    outlier: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AccuracyPairRow(Base):
    """One whole subnet measured end to end on a device next to the latency its table predicted.

    `role` is `validation` (pairs the accuracy report is computed from) or `calibration` (subnets
    the device's subnet calibration is fitted on). Unique per (device, run id, config id), so a
    retried upload is a no-op.
    """

    __tablename__ = "lut_accuracy"
    __table_args__ = (
        sa.UniqueConstraint("device", "run_id", "config_id", name="uq_lut_accuracy_run_config"),
        sa.Index("ix_lut_accuracy_device_space", "device", "space"),
        sa.CheckConstraint("role IN ('validation', 'calibration')", name="ck_lut_accuracy_role"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    device: Mapped[str] = mapped_column(sa.String(200))
    run_id: Mapped[str] = mapped_column(sa.String(64))
    role: Mapped[str] = mapped_column(sa.String(16))
    space: Mapped[str] = mapped_column(sa.String(100))
    space_options: Mapped[dict[str, Any]]
    config: Mapped[dict[str, Any]]
    config_id: Mapped[str] = mapped_column(sa.String(64))
    n_blocks: Mapped[int]
    params: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    block_sum_ms: Mapped[float | None]
    predicted_ms: Mapped[float | None]
    measured_ms: Mapped[float]
    samples_ms: Mapped[list[float]] = mapped_column(sa.JSON)
    prediction: Mapped[dict[str, Any]]
    provenance: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url` set up for this service's access pattern (many threads, short transactions).

    SQLite gets WAL journaling (readers never block the writer), a busy timeout (writers queue instead
    of failing) and enforced foreign keys; its connections may cross threads because the pool hands
    them out one thread at a time.
    """
    backend = sa.make_url(url).get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            # A fresh checkout has no var/ folder; SQLite would fail with "unable to open database file".
            path.parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = sa.create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///...` URL, or None for other databases and in-memory SQLite."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # SQLite's documented setting for WAL: a killed process loses nothing, a power cut at most the
        # last commits (never the file); it removes one fsync per trial (172 -> 267 trials/s measured).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def init_db(engine: Engine) -> None:
    """Create the service's tables and the latency tables if they do not exist (idempotent)."""
    from latency_lut._sql import metadata as lut_metadata

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes starting at once would both find no table and both CREATE it; the
            # transaction-scoped advisory lock makes the second wait and then find the tables.
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(zlib.crc32(b"services.init_db"))))
        Base.metadata.create_all(conn)
        lut_metadata.create_all(conn)


def check_db(engine: Engine) -> str | None:
    """None when the database answers a trivial query, else the error text (for the health check)."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return str(exc).splitlines()[0]
    return None
