"""operators and the audit trail: named operators' keys (hashes only) and a row per operator action

Revision ID: 2026_12_08_operators_and_audit
Revises: 2026_12_07_dead_letters
Create Date: 2026-12-08

`operators` holds each named operator's key as its SHA-256, looked up by that hash on every operator request
(`delivery operators add | list | revoke`); `ADMIN_TOKEN` still acts as the operator `admin`.
`audit_entries` records who did what, on which object, with what outcome, under which request id, when.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.db import UTCDateTime

revision: str = "2026_12_08_operators_and_audit"
down_revision: str | None = "2026_12_07_dead_letters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operators")),
        sa.UniqueConstraint("name", name=op.f("uq_operators_name")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_operators_key_hash")),
    )
    op.create_table(
        "audit_entries",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("object", sa.String(length=255), nullable=True),
        sa.Column("outcome", sa.String(length=1000), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entries")),
    )
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.create_index("ix_audit_entries_at_id", ["at", "id"], unique=False)
        batch_op.create_index("ix_audit_entries_operator_at_id", ["operator", "at", "id"], unique=False)


def downgrade() -> None:
    op.drop_table("audit_entries")
    op.drop_table("operators")
