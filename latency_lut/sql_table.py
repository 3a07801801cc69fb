"""`SqlLatencyTable`: the `LatencyTable` contract on SQLAlchemy 2 (SQLite and PostgreSQL).

The table lives on its own `metadata` so the service can include it in its migrations and tests can
create it alone.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from latency_lut._table import LatencyEntry, LatencyTable

metadata = sa.MetaData()

lut_entries = sa.Table(
    "lut_entries",
    metadata,
    sa.Column("device", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("kind", sa.String(200), nullable=False, default=""),
    sa.Column("median_ms", sa.Double, nullable=False),
    sa.Column("p10_ms", sa.Double, nullable=False),
    sa.Column("p90_ms", sa.Double, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("provenance", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_lut_entries_device", "device"),
)

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_VALUE_COLUMNS = ("kind", "median_ms", "p10_ms", "p90_ms", "count", "provenance", "updated_at")

# Rows per executemany call, and keys per `IN (...)`: both stay far below SQLite's and PostgreSQL's
# bound-parameter limits (32766 and 65535).
_WRITE_CHUNK = 1000
_READ_CHUNK = 500


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _entry(row: sa.RowMapping) -> LatencyEntry:
    return LatencyEntry(
        device=row["device"],
        key=row["key"],
        median_ms=row["median_ms"],
        p10_ms=row["p10_ms"],
        p90_ms=row["p90_ms"],
        count=row["count"],
        kind=row["kind"],
        provenance=dict(row["provenance"] or {}),
    )


def upsert_entries(conn: Connection, entries: Iterable[LatencyEntry]) -> int:
    """Insert or replace entries on `conn` (inside the caller's transaction); returns how many rows
    were written (a repeated (device, key) counts once: the last one wins, as in a sequence of puts)."""
    now = datetime.now(UTC)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        # One statement may not touch a row twice (PostgreSQL refuses it).
        rows[(entry.device, entry.key)] = {
            "device": entry.device,
            "key": entry.key,
            "kind": entry.kind,
            "median_ms": float(entry.median_ms),
            "p10_ms": float(entry.p10_ms),
            "p90_ms": float(entry.p90_ms),
            "count": int(entry.count),
            "provenance": dict(entry.provenance),
            "updated_at": now,
        }
    if not rows:
        return 0
    stmt = _INSERTS[conn.dialect.name](lut_entries)
    stmt = stmt.on_conflict_do_update(
        index_elements=[lut_entries.c.device, lut_entries.c.key],
        set_={column: stmt.excluded[column] for column in _VALUE_COLUMNS},
    )
    for chunk in _chunks(list(rows.values()), _WRITE_CHUNK):
        conn.execute(stmt, list(chunk))
    return len(rows)


class SqlLatencyTable(LatencyTable):
    """A `LatencyTable` in the `lut_entries` table of a SQLAlchemy engine; creates it when missing.

    `put_many` is one transaction of `INSERT ... ON CONFLICT DO UPDATE` (SQLite and PostgreSQL, the
    two databases the service runs on). `kind` is stored as the entry gives it, so entries read back
    unchanged (the contract) even where it is empty; files and queries by kind derive it from the key
    then (`LatencyEntry.to_row`). The engine's pool makes calls thread-safe; an in-memory
    SQLite engine must use `StaticPool` so that all threads see one database.
    """

    def __init__(self, engine: Engine):
        if engine.dialect.name not in _INSERTS:
            raise ValueError(
                f"SqlLatencyTable supports the databases {sorted(_INSERTS)}; got {engine.dialect.name!r}"
            )
        self.engine = engine
        # SQLite allows one writer at a time and answers a second with "database is locked" once its
        # busy timeout passes; serialising this process's writes keeps that away from our own threads.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self._create_tables()

    def _create_tables(self) -> None:
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two processes starting at once would both see no table and both CREATE it; the
                # transaction-scoped advisory lock makes the second wait and then find it.
                lock_id = zlib.crc32(b"latency_lut.lut_entries")
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_id)))
            metadata.create_all(conn)

    # ----------------------------------------------------------------- writes
    def put_many(self, entries: Iterable[LatencyEntry]) -> int:
        entries = list(entries)
        if not entries:
            return 0
        with self.writing() as conn:
            upsert_entries(conn, entries)
        return len(entries)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Connection]:
        """A connection in a transaction that commits on success, holding this process's SQLite write
        lock: callers that write `lut_entries` together with their own tables (the service's upload
        of raw samples) use it so that their writes and `put_many`'s never race for SQLite's lock."""
        lock = self._write_lock if self._write_lock is not None else contextlib.nullcontext()
        with lock, self.engine.begin() as conn:
            yield conn

    # ----------------------------------------------------------------- reads
    def get_many(self, device: str, keys: Iterable[str]) -> dict[str, LatencyEntry]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, LatencyEntry] = {}
        if not wanted:
            return found
        with self.engine.connect() as conn:
            for chunk in _chunks(wanted, _READ_CHUNK):
                query = sa.select(lut_entries).where(
                    lut_entries.c.device == device, lut_entries.c.key.in_(chunk)
                )
                for row in conn.execute(query).mappings():
                    found[row["key"]] = _entry(row)
        return found

    def entries(self, device: str) -> list[LatencyEntry]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(lut_entries).where(lut_entries.c.device == device)).mappings()
            # Sorted here, not by ORDER BY: database collations may order strings differently from
            # Python, and the contract's order must not depend on the database.
            return sorted((_entry(row) for row in rows), key=lambda entry: entry.key)

    def keys(self, device: str) -> set[str]:
        with self.engine.connect() as conn:
            query = sa.select(lut_entries.c.key).where(lut_entries.c.device == device)
            return set(conn.execute(query).scalars())

    def snapshot(self, device: str) -> dict[str, float]:
        with self.engine.connect() as conn:
            query = sa.select(lut_entries.c.key, lut_entries.c.median_ms).where(
                lut_entries.c.device == device
            )
            return {key: median for key, median in conn.execute(query)}

    def devices(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(sa.select(lut_entries.c.device).distinct()).scalars())

    def delete(self, device: str, keys: Iterable[str] | None = None) -> int:
        """Remove a device's entries (all of them, or those among `keys`); returns how many went."""
        with self.writing() as conn:
            if keys is None:
                return conn.execute(lut_entries.delete().where(lut_entries.c.device == device)).rowcount
            removed = 0
            for chunk in _chunks(list(dict.fromkeys(keys)), _READ_CHUNK):
                removed += conn.execute(
                    lut_entries.delete().where(lut_entries.c.device == device, lut_entries.c.key.in_(chunk))
                ).rowcount
            return removed
