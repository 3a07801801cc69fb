"""Alembic migrations of the service database: the service's tables (`services.core.db`) and the latency
tables (`latency_lut.sql_table`), on SQLite and PostgreSQL.

The scripts ship inside the package (`env.py`, `versions/`), so an installed service migrates without
an `alembic.ini`: `init_db` (every start of the API, the CLI's database commands) and `nas db upgrade`
call `upgrade` here. A database created before migrations existed (by `metadata.create_all`, with no
`alembic_version` table) is adopted: stamped at head when its tables match the models, refused with
the list of differences when they do not.

Writing a migration after changing a model (the test `tests/services/test_migrations.py` fails until
one exists)::

    NAS_DATABASE_URL=sqlite:///./var/migrate.db nas db upgrade
    .venv/bin/alembic -c services/migrations/alembic.ini revision --autogenerate -m "what changed"

then read the generated file in `services/migrations/versions/` (SQLite ALTERs go through batch mode,
`render_as_batch` is on) and run `nas db upgrade` on both databases.
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
VERSION_TABLE = "alembic_version"
# Two processes migrating one PostgreSQL database at once: the second waits for the first, then finds
# the database at head.
_PG_LOCK_ID = zlib.crc32(b"services.init_db")


class MigrationError(RuntimeError):
    """The database cannot be brought to the models' schema automatically; the message says why."""


@dataclass(frozen=True)
class UpgradeReport:
    """What `upgrade` did: the revision before (None: no migration history) and after, and whether an
    unversioned database made by `create_all` was adopted (stamped) on the way."""

    before: str | None
    after: str | None
    adopted: bool = False

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.adopted


def target_metadata() -> list[sa.MetaData]:
    """Every table the migrations manage: the service's and the latency tables."""
    from latency_lut.sql_table import metadata as lut_metadata
    from services.core.db import Base

    return [Base.metadata, lut_metadata]


def managed_tables() -> set[str]:
    return {name for metadata in target_metadata() for name in metadata.tables}


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Autogenerate and comparisons look at the service's tables only: a shared database (other
    applications, test tables) is none of their business."""
    return type_ != "table" or name in managed_tables() or name == VERSION_TABLE


def alembic_config(
    *,
    url: str | None = None,
    connection: Connection | None = None,
    extra_versions: Sequence[Path] = (),
) -> Config:
    """An Alembic `Config` for the packaged scripts, without any ini file: on `connection` (used as it
    is, inside its transaction) or on `url`. `extra_versions` adds folders of revisions (tests)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    locations = [VERSIONS_DIR, *map(Path, extra_versions)]
    config.set_main_option("version_locations", os.pathsep.join(str(p) for p in locations))
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    if connection is not None:
        config.attributes["version_table_schema"] = translated_schema(connection)
    return config


@functools.lru_cache(maxsize=8)
def _script(extra_versions: tuple[Path, ...] = ()) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(extra_versions=extra_versions))


def head_revision(extra_versions: Sequence[Path] = ()) -> str:
    """The newest revision of the packaged scripts (plus `extra_versions`)."""
    head = _script(tuple(extra_versions)).get_current_head()
    if head is None:
        raise MigrationError(f"no migration scripts found in {VERSIONS_DIR}")
    return head


def translated_schema(bind: Connection | Engine) -> str | None:
    """The schema unqualified tables go to on `bind` (an engine or connection with a
    `schema_translate_map`, e.g. a test's private PostgreSQL schema), None for the default."""
    translate = bind.get_execution_options().get("schema_translate_map") or {}
    return translate.get(None)


def current_revision(conn: Connection) -> str | None:
    """The database's revision on `conn`; None when it has no migration history."""
    schema = translated_schema(conn)
    if not sa.inspect(conn).has_table(VERSION_TABLE, schema=schema):
        return None
    context = MigrationContext.configure(conn, opts={"version_table_schema": schema})
    return context.get_current_revision()


def schema_differences(conn: Connection) -> list[Any]:
    """Alembic's comparison of the database on `conn` with the models: tables, columns, types,
    nullability, server defaults, indexes, unique and foreign keys (not CHECK constraints, which
    Alembic does not compare). An empty list when the schema is exactly what the models describe."""
    context = MigrationContext.configure(
        conn,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            "include_name": include_name,
            "target_metadata": target_metadata(),
        },
    )
    return list(compare_metadata(context, target_metadata()))


def describe_difference(diff: Any) -> str:
    """One line per difference of `schema_differences` (a tuple, or a list of tuples for a column)."""
    if isinstance(diff, list):
        return "; ".join(describe_difference(d) for d in diff)
    kind, *rest = diff
    names = []
    for item in rest:
        if isinstance(item, sa.Table):
            names.append(f"table {item.name}")
        elif isinstance(item, (sa.Index, sa.Constraint)):
            table = getattr(item, "table", None)
            names.append(f"{type(item).__name__} {item.name} on {getattr(table, 'name', '?')}")
        elif isinstance(item, sa.Column):
            names.append(f"column {item.table.name}.{item.name}")
        elif item is not None and not isinstance(item, dict):
            names.append(str(item))
    return f"{kind}: {', '.join(names)}"


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction for migrating: on PostgreSQL holding the migration advisory
    lock; on SQLite with foreign keys off meanwhile (batch ALTERs copy and drop tables, and a DROP of
    `searches` with foreign keys on would cascade to every trial), checked before the commit."""
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        raw = conn.connection.driver_connection if sqlite else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")  # outside a transaction: inside one it is a no-op
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_ID)))
                yield conn
                if raw is not None:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise MigrationError(
                            f"the migration left rows whose foreign keys point nowhere: {broken[:10]}; "
                            "nothing was changed"
                        )
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")


def _adopt_unversioned(conn: Connection, config: Config) -> bool:
    """A database without migration history whose service tables were made by `create_all`: stamp it
    at head when every table it has matches the models, creating what is only additive (tables it
    lacks, as in a database of `SqlLatencyTable` alone, and indexes); refuse with the differences
    otherwise. False when the
    database has none of the tables (a new database: the migrations create them)."""
    schema = translated_schema(conn)
    existing = set(sa.inspect(conn).get_table_names(schema=schema)) & managed_tables()
    if not existing:
        return False
    missing = managed_tables() - existing
    problems, indexes = [], []
    for diff in schema_differences(conn):
        kind = diff[0] if isinstance(diff, tuple) else None
        if kind == "add_table" and diff[1].name in missing:
            continue
        if kind == "add_index":
            # A missing index (one added to the models after the table was made) is created here.
            if diff[1].table.name not in missing:
                indexes.append(diff[1])
            continue
        problems.append(describe_difference(diff))
    if problems:
        raise MigrationError(
            f"the database has the service's tables ({', '.join(sorted(existing))}) but no migration "
            "history (it was created before migrations, by create_all), and they differ from this "
            "version's models:\n  " + "\n  ".join(problems) + "\nBack it up, then make its tables match "
            "(or start from an empty database) and run `nas db stamp head`."
        )
    for metadata in target_metadata():
        tables = [t for name, t in metadata.tables.items() if name in missing]
        if tables:
            metadata.create_all(conn, tables=tables)
    for index in indexes:
        index.create(conn)
    command.stamp(config, "head")
    return True


def init_db(engine: Engine) -> None:
    """Bring the database to the newest schema (idempotent; safe from several processes at once): what
    every start of the server and the CLI's database commands do. A database created by `create_all`
    before migrations existed is adopted when its tables match the models, and refused with the list
    of differences (`MigrationError`) when they do not."""
    upgrade(engine)


def upgrade(engine: Engine, revision: str = "head", *, extra_versions: Sequence[Path] = ()) -> UpgradeReport:
    """Bring the database of `engine` to `revision` (default: the newest), in one transaction.

    Idempotent and safe to run from several processes at once (PostgreSQL: an advisory lock; SQLite:
    the write lock). A database made by `create_all` before migrations is adopted (see
    `_adopt_unversioned`)."""
    extra = tuple(Path(p) for p in extra_versions)
    target = head_revision(extra) if revision == "head" else revision
    with _migration_connection(engine) as conn:
        before = current_revision(conn)
        if before == target:
            return UpgradeReport(before, before)
        config = alembic_config(connection=conn, extra_versions=extra)
        adopted = before is None and _adopt_unversioned(conn, config)
        command.upgrade(config, revision)
        return UpgradeReport(before, current_revision(conn), adopted)


def stamp(engine: Engine, revision: str = "head") -> str | None:
    """Record `revision` as the database's without running anything (for a database brought in line
    by hand); returns the revision recorded."""
    with _migration_connection(engine) as conn:
        command.stamp(alembic_config(connection=conn), revision, purge=True)
        return current_revision(conn)


def current(engine: Engine) -> str | None:
    """The database's revision (None: no migration history)."""
    with engine.connect() as conn:
        return current_revision(conn)
