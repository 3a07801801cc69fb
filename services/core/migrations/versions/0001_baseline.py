"""Baseline: every table of the service (`services.core.db`) and the latency tables (`latency_lut.sql_table`).

Written from the models by autogenerate on an empty database; later changes go in new revisions.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "devices",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("runtime", sa.String(length=100), nullable=False),
        sa.Column("hardware", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "lut_accuracy",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("device", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("space", sa.String(length=100), nullable=False),
        sa.Column("space_options", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_id", sa.String(length=64), nullable=False),
        sa.Column("n_blocks", sa.Integer(), nullable=False),
        sa.Column("params", sa.BigInteger(), nullable=False),
        sa.Column("block_sum_ms", sa.Double(), nullable=True),
        sa.Column("predicted_ms", sa.Double(), nullable=True),
        sa.Column("measured_ms", sa.Double(), nullable=False),
        sa.Column("samples_ms", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('validation', 'calibration')", name="ck_lut_accuracy_role"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "run_id", "config_id", name="uq_lut_accuracy_run_config"),
    )
    op.create_index("ix_lut_accuracy_device_space", "lut_accuracy", ["device", "space"], unique=False)

    op.create_table(
        "lut_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("device", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("kind", sa.String(length=200), nullable=False),
        sa.Column("space", sa.String(length=100), nullable=False),
        sa.Column("samples_ms", sa.JSON(), nullable=False),
        sa.Column("median_ms", sa.Double(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=True),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("outlier", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "run_id", "key", name="uq_lut_samples_run_key"),
    )
    op.create_index("ix_lut_samples_device_key", "lut_samples", ["device", "key"], unique=False)

    op.create_table(
        "searches",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("trials_done", sa.Integer(), nullable=False),
        sa.Column("trials_failed", sa.Integer(), nullable=False),
        sa.Column("budget_trials", sa.Integer(), nullable=False),
        sa.Column("front_size", sa.Integer(), nullable=False),
        sa.Column("hypervolume", sa.Double(), nullable=True),
        sa.Column("elapsed_s", sa.Double(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claims", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="ck_searches_status"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_searches_status_created", "searches", ["status", "created_at"], unique=False)

    op.create_table(
        "trials",
        sa.Column("search_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("feasible", sa.Boolean(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("on_front", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("search_id", "number"),
    )
    op.create_index("ix_trials_search_config", "trials", ["search_id", "config_id"], unique=False)
    op.create_index("ix_trials_search_front", "trials", ["search_id", "on_front", "number"], unique=False)

    op.create_table(
        "lut_entries",
        sa.Column("device", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("kind", sa.String(length=200), nullable=False),
        sa.Column("median_ms", sa.Double(), nullable=False),
        sa.Column("p10_ms", sa.Double(), nullable=False),
        sa.Column("p90_ms", sa.Double(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device", "key"),
    )
    op.create_index("ix_lut_entries_device", "lut_entries", ["device"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_lut_entries_device", table_name="lut_entries")

    op.drop_table("lut_entries")
    op.drop_index("ix_trials_search_front", table_name="trials")
    op.drop_index("ix_trials_search_config", table_name="trials")

    op.drop_table("trials")
    op.drop_index("ix_searches_status_created", table_name="searches")

    op.drop_table("searches")
    op.drop_index("ix_lut_samples_device_key", table_name="lut_samples")

    op.drop_table("lut_samples")
    op.drop_index("ix_lut_accuracy_device_space", table_name="lut_accuracy")

    op.drop_table("lut_accuracy")
    op.drop_table("devices")
    op.drop_table("api_keys")
