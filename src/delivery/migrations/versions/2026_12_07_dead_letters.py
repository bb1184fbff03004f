"""dead letters: the registration jobs that could not succeed, kept for operators to send back

Revision ID: 2026_12_07_dead_letters
Revises: 2026_12_01_package_changes
Create Date: 2026-12-07

A registration job that keeps failing (a body this worker cannot read, a type deleted, an insert the
database refuses) stops after `DEAD_LETTER_AFTER` deliveries: its body is kept here, its status becomes
`failed`, and an operator sends it back to the registration queue once the cause is fixed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from delivery.db import UTCDateTime

revision: str = "2026_12_07_dead_letters"
down_revision: str | None = "2026_12_01_package_changes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("registration_id", sa.String(length=64), nullable=True),
        sa.Column("session_id", sa.BigInteger(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("dead_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        sa.UniqueConstraint("registration_id", name=op.f("uq_dead_letters_registration_id")),
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dead_letters_dead_at"), ["dead_at"], unique=False)


def downgrade() -> None:
    op.drop_table("dead_letters")
