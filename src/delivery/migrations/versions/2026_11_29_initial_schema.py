"""initial schema

Revision ID: 2026_11_29_initial
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.db import ExactDecimal, UTCDateTime

revision: str = "2026_11_29_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    package_types = op.create_table(
        "package_types",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_package_types")),
        sa.UniqueConstraint("name", name=op.f("uq_package_types_name")),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_sessions_token_hash")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "daily_cost_totals",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("type_id", sa.Integer(), nullable=False),
        sa.Column("packages", sa.BigInteger(), nullable=False),
        sa.Column("total_cost_rub", ExactDecimal(precision=24, scale=2), nullable=False),
        sa.ForeignKeyConstraint(
            ["type_id"],
            ["package_types.id"],
            name=op.f("fk_daily_cost_totals_type_id_package_types"),
        ),
        sa.PrimaryKeyConstraint("day", "type_id", name=op.f("pk_daily_cost_totals")),
    )
    op.create_table(
        "packages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("registration_id", sa.Uuid(), nullable=False),
        sa.Column(
            "session_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("type_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("weight_kg", ExactDecimal(precision=10, scale=3), nullable=False),
        sa.Column("content_value_usd", ExactDecimal(precision=12, scale=2), nullable=False),
        sa.Column("delivery_cost_rub", ExactDecimal(precision=18, scale=2), nullable=True),
        sa.Column("usd_rub_rate", ExactDecimal(precision=18, scale=8), nullable=True),
        sa.Column("rate_date", sa.Date(), nullable=True),
        sa.Column(
            "has_cost",
            sa.Boolean(),
            sa.Computed("delivery_cost_rub IS NOT NULL", persisted=True),
            nullable=True,
        ),
        sa.Column("transport_company_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_packages_session_id_sessions"),
        ),
        sa.ForeignKeyConstraint(
            ["type_id"],
            ["package_types.id"],
            name=op.f("fk_packages_type_id_package_types"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_packages")),
        sa.UniqueConstraint("registration_id", name=op.f("uq_packages_registration_id")),
    )
    with op.batch_alter_table("packages", schema=None) as batch_op:
        batch_op.create_index("ix_packages_has_cost_id", ["has_cost", "id"], unique=False)
        batch_op.create_index("ix_packages_session_id", ["session_id", "id"], unique=False)
        batch_op.create_index(
            "ix_packages_session_type_has_cost_id", ["session_id", "type_id", "has_cost", "id"], unique=False
        )
        batch_op.create_index(
            "ix_packages_session_has_cost_id",
            ["session_id", "has_cost", "id"],
            unique=False,
        )
        batch_op.create_index("ix_packages_session_type_id", ["session_id", "type_id", "id"], unique=False)

    op.create_table(
        "cost_calculations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "package_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("type_id", sa.Integer(), nullable=False),
        sa.Column("delivery_cost_rub", ExactDecimal(precision=18, scale=2), nullable=False),
        sa.Column("usd_rub_rate", ExactDecimal(precision=18, scale=8), nullable=False),
        sa.Column("rate_date", sa.Date(), nullable=False),
        sa.Column("calculated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["package_id"],
            ["packages.id"],
            name=op.f("fk_cost_calculations_package_id_packages"),
        ),
        sa.ForeignKeyConstraint(
            ["type_id"],
            ["package_types.id"],
            name=op.f("fk_cost_calculations_type_id_package_types"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cost_calculations")),
        sa.UniqueConstraint("package_id", name=op.f("uq_cost_calculations_package_id")),
    )
    with op.batch_alter_table("cost_calculations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_cost_calculations_calculated_at"),
            ["calculated_at"],
            unique=False,
        )

    op.bulk_insert(
        package_types,
        [
            {"id": 1, "name": "clothes"},
            {"id": 2, "name": "electronics"},
            {"id": 3, "name": "misc"},
        ],
    )


def downgrade() -> None:
    # Dropping a table drops its indexes; MariaDB refuses to drop an index that backs a foreign key first.
    for table in ("cost_calculations", "daily_cost_totals", "packages", "sessions", "package_types"):
        op.drop_table(table)
