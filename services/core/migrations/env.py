"""Alembic's environment for the service database; run by `services.core.migrations` (and `nas db ...`),
never imported by the service itself.

Online with the connection the caller passes in `config.attributes["connection"]` (its transaction is
the migration's), else with an engine on the configured URL (`NAS_DATABASE_URL` when none is set).
"""

from __future__ import annotations

from typing import Any

from alembic import context

from services.core.db import UTCDateTime, make_engine
from services.core.migrations import include_name, target_metadata
from services.settings import get_settings

config = context.config


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # The service's own column type is stored as a timezone-aware DATETIME; scripts spell it in plain
    # SQLAlchemy, so they never import the service's models (whose later shape may differ).
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata(),
        include_name=include_name,
        compare_type=True,
        compare_server_default=True,
        # SQLite cannot ALTER most things: batch mode copies the table instead (on PostgreSQL the
        # batch is plain ALTERs).
        render_as_batch=True,
        render_item=render_item,
        version_table_schema=config.attributes.get("version_table_schema"),
        **kwargs,
    )


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
