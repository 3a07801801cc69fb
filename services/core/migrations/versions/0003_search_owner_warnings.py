"""searches.owner (who may cancel a search and read it without `searches:read-all`; existing rows are
back-filled with "legacy", which only admins and `searches:read-all` keys reach), searches.warnings
(what a succeeded search did not achieve) and api_keys.team (the team a key submits searches for).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.core.migrations import translated_schema

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # An ALTER names its table as written: the schema a connection translates to is passed explicitly.
    schema = translated_schema(op.get_bind())
    # The server default back-fills every existing row in the same statement (SQLite and PostgreSQL).
    op.add_column(
        "searches",
        sa.Column("owner", sa.String(200), nullable=False, server_default="legacy"),
        schema=schema,
    )
    op.add_column("searches", sa.Column("warnings", sa.JSON(), nullable=True), schema=schema)
    op.create_index("ix_searches_owner_created", "searches", ["owner", "created_at"], schema=schema)
    op.add_column("api_keys", sa.Column("team", sa.String(200), nullable=True), schema=schema)


def downgrade() -> None:
    schema = translated_schema(op.get_bind())
    op.drop_column("api_keys", "team", schema=schema)
    op.drop_index("ix_searches_owner_created", table_name="searches", schema=schema)
    op.drop_column("searches", "warnings", schema=schema)
    op.drop_column("searches", "owner", schema=schema)
