"""Database: engine factory and the service's tables (`searches`, `trials`, and for device farms
`devices`, `lut_samples`, `lut_accuracy`; `api_keys` for auth).

SQLite (the default, one file under `var/`) and PostgreSQL (`postgresql+psycopg://...`) are both
first-class: every query here is plain SQLAlchemy Core/ORM that both understand.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from nas import utcnow

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: The owner of searches submitted before searches had owners (migration 0003) and with auth disabled.
LEGACY_OWNER = "legacy"


class SearchStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (SearchStatus.SUCCEEDED, SearchStatus.FAILED, SearchStatus.CANCELLED)


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
    """Declarative base of the service's own tables (the LUT tables live in `latency_lut.sql_table`)."""

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
        sa.Index("ix_searches_owner_created", "owner", "created_at"),
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
    # The lease of a running search: the scheduler replica that claimed it and when it last said it is
    # alive. A running search whose heartbeat is older than the lease (or that has no claimant) may be
    # reclaimed by any replica; see `services.core.search_queue`.
    # Kept on a finished search: the replica that ran it last.
    claimed_by: Mapped[str | None] = mapped_column(sa.String(200))
    heartbeat_at: Mapped[datetime | None]
    # How many times a scheduler claimed the search (1 plus one per resume after a stop or a lost lease).
    claims: Mapped[int] = mapped_column(default=0, server_default="0")
    # Who may cancel it and read it without `searches:read-all`: the submitting key's team, else its
    # name (see `services.core.auth`). Searches stored before owners existed belong to `LEGACY_OWNER`.
    owner: Mapped[str] = mapped_column(sa.String(200), default=LEGACY_OWNER, server_default=LEGACY_OWNER)
    # What a `succeeded` search did not achieve (no feasible trial, a budget too small for its
    # strategy to take a step): `nas.runner.RunResult.warnings`. None before the search finished.
    warnings: Mapped[list[str] | None] = mapped_column(sa.JSON)
    # The decisions of a stepwise strategy (`nas.strategies.Strategy.step_log`), written when the run
    # ends (also when it is cancelled or interrupted). None for other strategies or before that.
    steps: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON)
    # What a running search is doing, for every API process to read: `{"name": "measuring latency
    # table" | "searching", "table": {"device", "done", "total", "seconds"}}`, the table part being the
    # latency-table entries the scheduler measures on this host before the first trial (kept once done).
    # None before a scheduler first claimed the search (and for searches stored before phases existed).
    phase: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)


class TrialRow(Base):
    """One trial of a search, keyed by (search id, number) like `nas.Trial`."""

    __tablename__ = "trials"
    __table_args__ = (
        # Not unique: the runner never stores a config twice in one search, but synthetic data sets
        # (services/dashboard/demo.py) reuse configs across trials.
        sa.Index("ix_trials_search_config", "search_id", "config_id"),
        # The front is read by flag (`WHERE search_id = ? AND on_front`): with this index the read
        # touches only the members, at 100 trials as at 100,000.
        sa.Index("ix_trials_search_front", "search_id", "on_front", "number"),
    )

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

    `role` is `validation` (held-out pairs the accuracy report is computed from) or `calibration`
    (subnets the device's learned predictors are fitted on). `repeat_samples_ms` is a second
    measurement of the same subnet by the same run (validation runs take one, so the report can say
    how well the measurement agrees with itself). Unique per (device, run id, config id), so a retried
    upload is a no-op.
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
    repeat_samples_ms: Mapped[list[float] | None] = mapped_column(sa.JSON)
    prediction: Mapped[dict[str, Any]]
    provenance: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of the token is stored (see `services.core.auth`); `id` is the visible
    prefix of the token, so a key can be named in `nas keys revoke` without its secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    token_sha256: Mapped[str] = mapped_column(sa.String(64))
    scopes: Mapped[list[str]] = mapped_column(sa.JSON)
    # A team the key acts for: searches it submits belong to the team (see `SearchRow.owner`).
    team: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url` set up for this service's access pattern (many threads, short transactions).

    SQLite gets WAL journaling (readers never block the writer), a busy timeout, enforced foreign keys
    and the single-writer discipline of `SqliteWriteGate`; its connections may cross threads because
    the pool hands them out one thread at a time. PostgreSQL gets pre-ping (a server restart costs
    no request).
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
        SqliteWriteGate.install(engine, path)
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
    # The driver's own transaction handling (a deferred BEGIN before INSERT/UPDATE/DELETE only, none
    # before DDL) is off: `SqliteWriteGate` emits BEGIN IMMEDIATE itself, so a write transaction holds
    # the lock from its first statement and DDL (migrations) is transactional.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        # SQLite's documented setting for WAL: a killed process loses nothing, a power cut at most the
        # last commits (never the file); it removes one fsync per trial (172 -> 267 trials/s measured).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL journaling (once per file; later connections find it set).

    The switch needs the file to itself, and SQLite answers "database is locked" at once, without the
    busy timeout, when another connection holds a lock at that moment (two replicas starting on a new
    database): so it is retried until the busy timeout has passed."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# ------------------------------------------------------------------ SQLite: one writer at a time
# Statements that only read; anything else (INSERT, UPDATE, DELETE, DDL, WITH ..., SAVEPOINT) is taken
# for a write.
_READ_VERBS = frozenset({"SELECT", "PRAGMA", "EXPLAIN", "VALUES"})
# `Connection.info` keys: the state of the connection's transaction ("explicit" or "lazy" until its
# BEGIN, then "write"), and "the next BEGIN is an autobegin" (set by `before_execute` when a statement
# runs on a connection with no transaction).
_TXN = "nas.sqlite.txn"
_AUTOBEGIN = "nas.sqlite.autobegin"


def _is_write(statement: str) -> bool:
    verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
    return verb not in _READ_VERBS


class SqliteWriteGate:
    """The single-writer discipline of a SQLite database within this process.

    SQLite has one writer at a time. A writer that finds the lock taken waits up to the busy timeout,
    but two cases fail at once with "database is locked", whatever the timeout: a transaction that
    read first (a deferred BEGIN) and then writes after another connection committed (its snapshot is
    stale and cannot be upgraded), and waiters that lose SQLite's polling race for longer than the
    timeout. So:

    - a transaction opened with `engine.begin()` / `conn.begin()` (the service's way of saying "this
      writes") starts with `BEGIN IMMEDIATE`: it takes the write lock before its first statement, so
      what it reads and what it writes are one atomic step, and it never has to upgrade;
    - any other transaction (`engine.connect()`, ORM sessions, which open theirs even to query) runs
      its reads without a transaction, each statement on the latest snapshot, as the driver does by
      default; at its first write it begins with `BEGIN IMMEDIATE` too. Reads never wait and never
      block the writer (WAL): they stay concurrent;
    - a write transaction first takes this process's lock for the database file (one per file,
      shared by every engine on it), so the threads of one process queue in order on a Python lock
      instead of polling SQLite's; the lock is released when the transaction commits or rolls back.
      Other processes (a CLI next to the server) still meet SQLite's own lock and busy timeout.

    A thread that opens a second write transaction while it holds one would wait for itself; that
    fails at once with a clear error instead of after the busy timeout.
    """

    _by_file: ClassVar[dict[str, SqliteWriteGate]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._holder: Any = None
        self._holder_thread: int | None = None
        #: how many write transactions had to wait for another one of this process (for tests/metrics)
        self.waits = 0

    @classmethod
    def for_file(cls, path: Path | None) -> SqliteWriteGate:
        if path is None:  # in-memory: one database per engine
            return cls(":memory:")
        key = str(path.resolve())
        with cls._registry_lock:
            gate = cls._by_file.get(key)
            if gate is None:
                gate = cls._by_file[key] = cls(key)
            return gate

    @classmethod
    def install(cls, engine: Engine, path: Path | None) -> SqliteWriteGate:
        gate = cls.for_file(path)
        engine.sqlite_write_gate = gate  # type: ignore[attr-defined]
        event.listen(engine, "before_execute", _note_autobegin)
        event.listen(engine, "begin", _on_begin)
        event.listen(engine, "commit", _on_end)
        event.listen(engine, "rollback", _on_end)
        event.listen(engine, "before_cursor_execute", gate._before_cursor_execute)
        event.listen(engine, "checkin", gate._on_checkin)
        event.listen(engine, "invalidate", gate._on_invalidate)
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: Any) -> None:
            try:
                commit(dbapi_connection)
            finally:
                gate.release(dbapi_connection)

        def do_rollback(dbapi_connection: Any) -> None:
            try:
                rollback(dbapi_connection)
            finally:
                gate.release(dbapi_connection)

        # Released after the COMMIT/ROLLBACK itself (the `commit`/`rollback` events run before it).
        dialect.do_commit = do_commit  # type: ignore[method-assign]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign]
        return gate

    # ----------------------------------------------------------------- the lock
    def acquire(self, dbapi_connection: Any) -> None:
        raw = _raw(dbapi_connection)
        if self._holder is raw:
            return
        if self._holder_thread == threading.get_ident():
            raise sqlite3.OperationalError(
                f"database is locked: this thread already has a write transaction open on {self.name} "
                "on another connection and would wait for itself; finish it before writing elsewhere"
            )
        if not self._lock.acquire(blocking=False):
            self.waits += 1
            if not self._lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
                raise sqlite3.OperationalError(
                    f"database is locked: another write transaction of this process held {self.name} for "
                    f"more than {SQLITE_BUSY_TIMEOUT_MS / 1000:g} s"
                )
        self._holder = raw
        self._holder_thread = threading.get_ident()

    def release(self, dbapi_connection: Any) -> None:
        raw = _raw(dbapi_connection)
        if raw is not None and self._holder is raw:
            self._holder = None
            self._holder_thread = None
            self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.locked()

    # ----------------------------------------------------------------- events
    def _before_cursor_execute(self, conn: sa.Connection, cursor: Any, statement: str, *_args: Any) -> None:
        state = conn.info.get(_TXN)
        if state is None:
            return
        if state == "explicit" or (state == "lazy" and _is_write(statement)):
            self.acquire(cursor.connection)
            try:
                if not cursor.connection.in_transaction:
                    cursor.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.release(cursor.connection)
                raise
            conn.info[_TXN] = "write"

    def _on_checkin(self, dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection is not None:
            self.release(dbapi_connection)

    def _on_invalidate(self, dbapi_connection: Any, _record: Any, _exc: Any) -> None:
        if dbapi_connection is not None:
            self.release(dbapi_connection)


def _raw(dbapi_connection: Any) -> Any:
    """The driver's connection behind a pool proxy (or the connection itself)."""
    return getattr(dbapi_connection, "dbapi_connection", dbapi_connection)


def _note_autobegin(conn: sa.Connection, *_args: Any) -> None:
    if not conn.in_transaction():
        conn.info[_AUTOBEGIN] = True


def _on_begin(conn: sa.Connection) -> None:
    # The BEGIN itself waits for the transaction's first statement (explicit) or write (lazy).
    conn.info[_TXN] = "lazy" if conn.info.pop(_AUTOBEGIN, False) else "explicit"


def _on_end(conn: sa.Connection) -> None:
    conn.info.pop(_TXN, None)


@event.listens_for(Session, "after_begin")
def _orm_transactions_begin_lazily(_session: Session, _transaction: Any, connection: sa.Connection) -> None:
    # A Session opens its connection's transaction explicitly even to read: whether it writes is told by
    # its first statement (a query, or the INSERT/UPDATE of a flush).
    if connection.info.get(_TXN) == "explicit":
        connection.info[_TXN] = "lazy"


def check_db(engine: Engine) -> str | None:
    """None when the database answers a trivial query, else the error text (for the health check)."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return str(exc).splitlines()[0]
    return None
