"""lut_accuracy.repeat_samples_ms: a second end-to-end measurement of each validation subnet, so the
accuracy report shows the measurement's own repeatability beside every predictor's accuracy.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.core.migrations import translated_schema

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # An ALTER names its table as written: the schema a connection translates to is passed explicitly.
    schema = translated_schema(op.get_bind())
    op.add_column("lut_accuracy", sa.Column("repeat_samples_ms", sa.JSON(), nullable=True), schema=schema)


def downgrade() -> None:
    op.drop_column("lut_accuracy", "repeat_samples_ms", schema=translated_schema(op.get_bind()))
