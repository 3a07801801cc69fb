"""searches.phase: what a running search is doing (measuring its latency table before the first trial,
or searching) with the table's progress, for every API process to read.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.core.migrations import translated_schema

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = translated_schema(op.get_bind())
    op.add_column("searches", sa.Column("phase", sa.JSON(), nullable=True), schema=schema)


def downgrade() -> None:
    schema = translated_schema(op.get_bind())
    op.drop_column("searches", "phase", schema=schema)
